"""Request and response bodies of the /gateway API."""
