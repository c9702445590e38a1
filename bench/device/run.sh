#!/usr/bin/env bash
# On the lent GPU machine, from the repository root, with bench/.gpu-carry carried along (bench/device/prepare.sh):
# Jaga installed beside the machine's PyTorch (checked to stay), `pytest -m gpu tests/gpu` (the CUDA path and the
# embedded service on the GPU), then bench/gpu.py. Results go to $OUT.
set -uo pipefail
out=${OUT:-/tmp/jaga-gpu}
carry=bench/.gpu-carry
mkdir -p "$out"
# The machine's own environment (its python3 is a venv's: a venv made from it would not see its torch).
py=${PYTHON:-python3}
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    $py -c 'import sys, torch, torchvision, timm, numpy; print(sys.version.split()[0], torch.__version__,
torch.version.cuda, torchvision.__version__, timm.__version__, numpy.__version__)'
} 2>&1 | tee "$out/machine.txt"

# As a user with their own PyTorch would install Jaga: into that environment, its needs resolved offline from what
# the machine holds and the carried wheels. Should that fail, the wheels go in unresolved so that the tests run.
$py -m pip list --format=freeze > /tmp/before.txt
if $py -m pip install --no-index --find-links "$carry/wheels" --no-build-isolation . > "$out/install.txt" 2>&1; then
    echo "pip install .: resolved offline"
else
    echo "pip install . FAILED to resolve (install.txt); installing the carried wheels without resolving"
    tail -5 "$out/install.txt"
    $py -m pip install -q --no-index --no-deps "$carry"/wheels/*.whl \
        && $py -m pip install -q --no-deps --no-build-isolation .
fi
$py -m pip list --format=freeze > /tmp/after.txt
{
    echo "packages pip changed (< before, > after):"
    diff /tmp/before.txt /tmp/after.txt | grep '^[<>]'
    if diff <(grep -iE '^(torch|torchvision|triton|nvidia-[^=]*)==' /tmp/before.txt) \
        <(grep -iE '^(torch|torchvision|triton|nvidia-[^=]*)==' /tmp/after.txt) > /dev/null; then
        echo "PyTorch kept: $(grep -iE '^torch==' /tmp/after.txt), $($py -c 'import torch; print(torch.__file__)')"
    else
        echo "PyTorch CHANGED by installing Jaga"
    fi
} 2>&1 | tee "$out/torch-kept.txt" | grep -v '^[<>]'
$py -m pip install -q --no-index --no-deps "$carry"/lightly/*.whl

# --confcutdir: tests/conftest.py would want PostgreSQL and Redis; the gpu tests need neither.
timeout "${TEST_SECONDS:-200}" $py -m pytest -q -p no:cacheprovider --confcutdir=tests/gpu -m gpu tests/gpu \
    2>&1 | tee "$out/pytest.txt" | tail -15

fashion=/tmp/fashion-mnist
mkdir -p "$fashion"
$py - "$carry/fashion-mnist" "$fashion" <<'PY'
import gzip, lzma, pathlib, sys
for f in pathlib.Path(sys.argv[1]).glob("*.xz"):
    (pathlib.Path(sys.argv[2]) / f"{f.stem}.gz").write_bytes(gzip.compress(lzma.decompress(f.read_bytes()), 1))
PY
JAGA_FASHION_MNIST=$fashion timeout "${BENCH_SECONDS:-330}" $py bench/gpu.py --out "$out/gpu.json" \
    --quality-epochs "${QUALITY_EPOCHS:-10}" "$@" 2> "$out/gpu.log"
echo "bench/gpu.py: exit $?"
tail -5 "$out/gpu.log"
