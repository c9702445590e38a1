"""SSL methods, one per file, registered by name in ``METHODS``: importing every module but ``base`` here
registers them, so adding a method is adding a file."""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

from ssl_core.registry import Registry

if TYPE_CHECKING:
    from ssl_core.methods.base import SSLMethod

METHODS: Registry[type[SSLMethod]] = Registry("method")

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base" and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
