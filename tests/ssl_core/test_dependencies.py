"""ssl_core needs only PyTorch, torchvision, timm and NumPy (#23): every module imports, a method trains and bad
parameters are refused in a process where the service's packages cannot be imported, and no module of ssl_core
imports anything else, even lazily."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import ssl_core

ROOT = Path(ssl_core.__file__).resolve().parents[1]
#: What ssl_core may import: the standard library aside.
ALLOWED = {"torch", "torchvision", "timm", "numpy", "ssl_core"}
#: Packages an export format needs, imported by ``ssl_core.export`` only when that format is asked for:
#: safetensors comes with timm, and torch's ONNX exporter needs onnx anyway.
ALLOWED_LAZILY = {"safetensors", "onnx"}
#: The service's packages: refused to every importer in the child process. Pillow is refused to ssl_core only, as
#: torchvision imports it.
REFUSED = [
    "pydantic",
    "pydantic_core",
    "faiss",
    "fastapi",
    "starlette",
    "sqlalchemy",
    "alembic",
    "psycopg",
    "celery",
    "kombu",
    "redis",
    "httpx",
    "api",
    "worker",
    "jaga",
]

CHILD = """
import builtins
import importlib
import importlib.abc
import pkgutil
import sys

REFUSED = set({refused!r})
ALLOWED = set({allowed!r}) | set(sys.stdlib_module_names)
already = sorted(n for n in sys.modules if n.partition(".")[0] in REFUSED)
assert not already, f"imported before the check: {{already}}"


class Refuse(importlib.abc.MetaPathFinder):
    # The service's packages are missing, as where only ssl_core's dependencies are installed.
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in REFUSED:
            raise ModuleNotFoundError(f"{{name}} is refused here", name=name)
        return None


def checked_import(name, globals=None, locals=None, fromlist=(), level=0, *, _import=builtins.__import__):
    # Anything but ALLOWED is missing for ssl_core, already imported or not, while torch and friends import what
    # they need (torchvision imports PIL, for one).
    by = (globals or {{}}).get("__name__", "")
    if level == 0 and by.partition(".")[0] == "ssl_core" and name.partition(".")[0] not in ALLOWED:
        raise ModuleNotFoundError(f"{{by}} imports {{name}}, which is refused here", name=name)
    return _import(name, globals, locals, fromlist, level)


sys.meta_path.insert(0, Refuse())
builtins.__import__ = checked_import

import ssl_core

assert ssl_core.__file__.startswith({root!r}), ssl_core.__file__
for module in pkgutil.walk_packages(ssl_core.__path__, "ssl_core."):
    importlib.import_module(module.name)

import numpy as np
import torch

from ssl_core.config import TrainConfig
from ssl_core.methods.simclr import SimCLRParams
from ssl_core.train import Trainer, build_method

try:
    SimCLRParams(temperature=-1)
except ValueError as exc:
    assert "temperature" in str(exc), exc
else:
    raise AssertionError("SimCLRParams(temperature=-1) was accepted")

torch.set_num_threads(1)
cfg = TrainConfig(stem="standard", image_size=16, batch_size=8, epochs=1, precision="float32", seed=0)
images = np.random.default_rng(0).integers(0, 256, (16, 3, 16, 16), dtype=np.uint8)
method = build_method(cfg, {{"hidden_dim": 32, "projection_dim": 16}})
result = Trainer(method, images, cfg, torch.device("cpu")).run()
assert result.steps == 2 and np.isfinite(result.final_loss), result
refused = sorted(n for n in sys.modules if n.partition(".")[0] in REFUSED)
assert not refused, refused
print("ok")
"""


def test_ssl_core_runs_without_the_service_packages() -> None:
    script = CHILD.format(refused=REFUSED, allowed=sorted(ALLOWED), root=str(ROOT))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.stdout.strip().endswith("ok")


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(top-level package, whether the import is inside a function) of every absolute import in ``path``."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((alias.name.partition(".")[0], lazy) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module.partition(".")[0], lazy))
            visit(child, lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef))

    visit(ast.parse(path.read_text()), False)
    return found


def test_ssl_core_imports_nothing_else() -> None:
    unexpected = []
    for path in sorted((ROOT / "ssl_core").rglob("*.py")):
        for name, lazy in _imports(path):
            allowed = ALLOWED | (ALLOWED_LAZILY if lazy else set())
            if name not in allowed and name not in sys.stdlib_module_names:
                unexpected.append(f"{path.relative_to(ROOT)} imports {name}" + (" (in a function)" if lazy else ""))
    assert not unexpected, unexpected
