"""Where the SDK finds the service and its key: arguments, then ``JAGA_URL`` / ``JAGA_API_KEY``, then the file
``jaga login`` writes (``JAGA_CONFIG``, default ``~/.config/jaga/config.json``, readable by its owner only)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs

DEFAULT_URL = "http://127.0.0.1:8000"


def config_path() -> Path:
    return Path(os.environ.get("JAGA_CONFIG") or platformdirs.user_config_path("jaga") / "config.json")


def load_file() -> dict[str, str]:
    try:
        data = json.loads(config_path().read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}


def save_file(*, url: str, api_key: str) -> Path:
    """Write the login atomically, created with mode 0600 (it holds a secret)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"url": url, "api_key": api_key}, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@dataclass(frozen=True)
class Connection:
    url: str
    api_key: str | None


def resolve(url: str | None = None, api_key: str | None = None) -> Connection:
    saved = load_file()
    return Connection(
        url=(url or os.environ.get("JAGA_URL") or saved.get("url") or DEFAULT_URL).rstrip("/"),
        api_key=api_key or os.environ.get("JAGA_API_KEY") or saved.get("api_key"),
    )
