"""Jaga's HTTP API (FastAPI) and, under ``api.core``, the service pieces shared with the worker."""
