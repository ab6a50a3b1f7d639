"""Helpers the tests share: free ports, real servers started as subprocesses."""
