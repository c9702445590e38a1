"""Jaga's worker: a Celery task that takes a job id and runs the job with the SSL core."""
