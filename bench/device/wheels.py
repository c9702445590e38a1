"""Print ``name==version`` for each package to carry to the lent GPU machine so that `pip install .` resolves there
offline: the closure of Jaga's requirements (markers read for CPython 3.12 on x86-64 Linux), versions as installed
here, not followed into the machine's own ML packages. Run by bench/device/prepare.sh with the project's
interpreter."""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, distribution

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# The lent machine's image holds these (the device tool's KINDS.md) with what they need, torch's CUDA libraries
# among them: they must stay the machine's own. Everything else Jaga needs travels, also where the image may hold
# it (FastAPI's anyio, Celery's click), since its version there may not satisfy Jaga's needs (Celery pins
# python-dateutil exactly); pip keeps an installed version that does.
MACHINE_ROOTS = frozenset({"numpy", "onnx", "onnxscript", "pillow", "safetensors", "timm", "torch", "torchvision"})
TARGET = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}


def closure(root: str) -> dict[str, str]:
    """Every distribution ``root`` needs on the target outside ``MACHINE_ROOTS``, by canonical name, with the
    version installed here."""
    found: dict[str, str] = {}
    todo = [(root, frozenset[str]())]
    while todo:
        name, extras = todo.pop()
        dist = distribution(name)
        found[canonicalize_name(name)] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            wanted = req.marker is None or any(
                req.marker.evaluate({**TARGET, "extra": extra}) for extra in ("", *extras)
            )
            name = canonicalize_name(req.name)
            if wanted and name not in found and name not in MACHINE_ROOTS:
                todo.append((req.name, frozenset(req.extras)))
    return found


def main() -> int:
    try:
        needed = closure("jaga")
    except PackageNotFoundError as exc:
        print(f"{exc} is not installed here: run `make install` first", file=sys.stderr)
        return 1
    for name, version in sorted(needed.items()):
        if name != "jaga":
            print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
