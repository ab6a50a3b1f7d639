"""Background jobs: batches, benchmarks, comparisons and pulls, queued in the database and run by any replica or worker."""
