#!/usr/bin/env bash
# Here, before a GPU run: fill bench/.gpu-carry (git-ignored) with what the lent GPU machine lacks and cannot
# download (it has Python 3.12, PyTorch, torchvision, timm and numpy, no network): wheels for lightly 1.6.0 and
# pytest, and Fashion-MNIST's four IDX files. Then hand `bench/.gpu-carry` to the device tool as a carried path and
# run bench/device/run.sh there.
set -euo pipefail
cd "$(dirname "$0")/../.."
carry=bench/.gpu-carry
python=${PYTHON:-.venv/bin/python}
fashion=${JAGA_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
rm -rf "$carry" && mkdir -p "$carry/wheels" "$carry/fashion-mnist"
# Pure-Python or cp312 manylinux wheels, without their dependencies: torch, torchvision, timm and numpy are the
# machine's own and must stay so.
wheels=(
    lightly==1.6.0 lightning-utilities tqdm PyYAML packaging typing_extensions  # what bench/lightly_methods.py imports
    pillow pytest pluggy iniconfig pygments
)
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    -d "$carry/wheels" "${wheels[@]}"
cp "$fashion"/*-ubyte.gz "$carry/fashion-mnist/"
du -sh "$carry"
