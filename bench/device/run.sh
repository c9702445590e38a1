#!/usr/bin/env bash
# On the lent GPU machine, from the repository root, with bench/.gpu-carry carried along (bench/device/prepare.sh):
# the machine's PyTorch (printed), `pytest -m gpu tests/gpu`, then bench/gpu.py. Results go to $OUT.
set -uo pipefail
out=${OUT:-/tmp/jaga-gpu}
carry=bench/.gpu-carry
mkdir -p "$out"
python3 -m venv --system-site-packages /tmp/jaga-venv  # the machine's torch stays; the carried wheels go on top
py=/tmp/jaga-venv/bin/python
$py -m pip install -q --no-index --no-deps "$carry"/wheels/*.whl 2>&1 | tail -3
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    $py -c 'import sys, torch, torchvision, timm, numpy; print(sys.version.split()[0], torch.__version__,
torch.version.cuda, torchvision.__version__, timm.__version__, numpy.__version__)'
} 2>&1 | tee "$out/machine.txt"
# Offline, pip cannot resolve the service's dependencies; what it would do with this PyTorch follows from the ranges:
# an installed release inside them is kept (nothing else Jaga needs asks for another torch).
$py - <<'PY' 2>&1 | tee "$out/torch-kept.txt"
import tomllib
from importlib.metadata import version
from packaging.requirements import Requirement
deps = [Requirement(d) for d in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]]
for req in (d for d in deps if d.name in ("torch", "torchvision")):
    have = version(req.name)
    print(f"{req.name} {have}: {'kept' if req.specifier.contains(have, prereleases=True) else 'WOULD BE REPLACED'} ({req})")
PY
# tests/conftest.py needs the service's packages; the gpu tests need only their own conftest.
timeout "${TEST_SECONDS:-150}" $py -m pytest -q -p no:cacheprovider --confcutdir=tests/gpu -m gpu tests/gpu \
    2>&1 | tee "$out/pytest.txt" | tail -15
JAGA_FASHION_MNIST=$carry/fashion-mnist timeout "${BENCH_SECONDS:-380}" $py bench/gpu.py --out "$out/gpu.json" \
    --quality-epochs "${QUALITY_EPOCHS:-10}" "$@" 2> "$out/gpu.log"
echo "bench/gpu.py: exit $?"
tail -5 "$out/gpu.log"
