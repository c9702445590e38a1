#!/usr/bin/env bash
# Here, before a GPU run: fill bench/.gpu-carry (git-ignored) with what the lent GPU machine lacks and cannot
# download (it has Python 3.12, PyTorch, torchvision, timm, numpy, pytest and more, no network): cp312 wheels of the
# packages installing Jaga needs beyond the machine's own (bench/device/wheels.py) and of lightly 1.6.0, and
# Fashion-MNIST's four IDX files, recompressed with xz to fit the device tool's 64 MiB. Then hand `bench/.gpu-carry`
# to the device tool as a carried path and run bench/device/run.sh there.
set -euo pipefail
cd "$(dirname "$0")/../.."
carry=bench/.gpu-carry
python=${PYTHON:-.venv/bin/python}
fashion=${JAGA_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
rm -rf "$carry" && mkdir -p "$carry/wheels" "$carry/lightly" "$carry/fashion-mnist"
download() {  # cp312 manylinux or pure-Python wheels, without their dependencies
    local dest=$1 && shift
    "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dest" "$@" 2>&1 | grep -v '^WARNING' || true
}
mapfile -t needed < <("$python" bench/device/wheels.py)
download "$carry/wheels" "${needed[@]}"
# bench/lightly_methods.py imports lightly and what the machine holds already (lightning-utilities, tqdm, PyYAML)
download "$carry/lightly" lightly==1.6.0
for f in "$fashion"/*-ubyte.gz; do
    gzip -dc "$f" | xz -9 -T2 > "$carry/fashion-mnist/$(basename "$f" .gz).xz"
done
test "$(ls "$carry/wheels" | wc -l)" -eq "${#needed[@]}" || { echo "some wheels are missing" >&2; exit 1; }
# The device tool sends the tracked files and the carried paths, 64 MiB at most.
total=$(( $(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1) + $(du -sb "$carry" | cut -f1) ))
echo "bench/.gpu-carry: $(du -sh "$carry" | cut -f1); with the working tree $(( total / 1048576 )) MiB of 64"
test "$total" -lt $(( 63 * 1048576 ))
