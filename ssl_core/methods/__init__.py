"""SSL methods, one per file, registered by name in ``METHODS``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ssl_core.registry import Registry

if TYPE_CHECKING:
    from ssl_core.methods.base import SSLMethod

METHODS: Registry[type[SSLMethod]] = Registry("method")

# Importing a method module registers it.
from ssl_core.methods import simclr  # noqa: E402,F401
