"""Fail when installing Jaga would replace the PyTorch already in the environment.

Usage: python .ci/torch_kept.py REPORT.json, where the report is pip's for ``pip install --dry-run --report``.
"""

from __future__ import annotations

import json
import sys

TORCH_PACKAGES = ("torch", "torchvision", "triton", "nvidia-")


def main(report_path: str) -> None:
    with open(report_path) as f:
        report = json.load(f)
    names = [item["metadata"]["name"].lower() for item in report.get("install", [])]
    replaced = [n for n in names if n.startswith(TORCH_PACKAGES)]
    if replaced:
        sys.exit(f"installing Jaga would replace or add PyTorch packages: {', '.join(replaced)}")
    print(f"PyTorch kept: pip would install only {', '.join(names) or 'nothing'}")


if __name__ == "__main__":
    main(sys.argv[1])
