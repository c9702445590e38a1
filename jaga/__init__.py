"""Jaga's Python SDK and command line: ``from jaga.client import Client`` (see ``jaga.client``)."""

from api.core.webhooks import WebhookVerificationError
from api.core.webhooks import verify as verify_webhook
from jaga.client import AsyncClient, Client
from jaga.errors import JagaError, JobFailedError

__all__ = ["AsyncClient", "Client", "JagaError", "JobFailedError", "WebhookVerificationError", "verify_webhook"]
