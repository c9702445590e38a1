"""Jaga's Python SDK and command line: ``from jaga.client import Client`` (see ``jaga.client``)."""

from jaga.client import AsyncClient, Client
from jaga.errors import JagaError, JobFailedError

__all__ = ["AsyncClient", "Client", "JagaError", "JobFailedError"]
