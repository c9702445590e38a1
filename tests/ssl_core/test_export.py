"""Export modules: what a tile-trained encoder's export computes, the metadata, and atomic writes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime
import pytest
import torch

from ssl_core.backbones import build_backbone
from ssl_core.encoder import EncoderInfo
from ssl_core.evaluate import PatchGrid, embed_images
from ssl_core.export import export_metadata, export_module, save_onnx, save_torchscript, write_atomically


def _tile_encoder() -> tuple[torch.nn.Module, EncoderInfo]:
    """A jigsaw-like encoder: a ResNet-18 embedding an image as the mean of a 3x3 grid of tiles' features, images
    stored at 30 px and evaluated at 24 (so the module downsamples with antialiasing)."""
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", "small").eval()
    grid = PatchGrid(grid=3, tile=7, tile_input=8)
    return backbone, EncoderInfo("jigsaw", "resnet18", "small", 24, 1, (30, 30), backbone.dim, None, grid)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_a_tile_trained_encoder_exports_its_tile_grid_embedding(tmp_path, fmt):
    backbone, info = _tile_encoder()
    images = np.random.default_rng(1).integers(0, 256, (3, 1, 30, 30), dtype=np.uint8)
    expected = embed_images(backbone, images, info.image_size, torch.device("cpu"), patches=info.patch_grid).numpy()
    meta = export_metadata(info, model_id="mdl_x", format=fmt, target="embedding", classes=None)
    assert meta["patch_grid"] == {"grid": 3, "tile": 7, "tile_input": 8}
    assert meta["preprocessing"]["resize"]["size"] == [24, 24]
    path = tmp_path / f"m.{fmt}"
    x = images.astype(np.float32) / 255
    if fmt == "onnx":
        save_onnx(path, export_module(backbone, info, "embedding"), info, meta)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = session.run(None, {"images": x})[0]
        assert json.loads(session.get_modelmeta().custom_metadata_map["jaga"]) == meta
    else:
        save_torchscript(path, export_module(backbone, info, "embedding"), info, meta)
        out = torch.jit.load(str(path))(torch.from_numpy(x)).detach().numpy()
    assert np.abs(out - expected).max() <= 1e-4


#: Two ONNX exports, each asked for from a thread that has exited before the next, as the API's threadpool does.
EXPORTS_FROM_EXITED_THREADS = """
import sys, threading
from pathlib import Path
from ssl_core.backbones import build_backbone
from ssl_core.encoder import EncoderInfo
from ssl_core.export import export_metadata, export_module, save_onnx

backbone = build_backbone("resnet18", "small").eval()
info = EncoderInfo("simclr", "resnet18", "small", 16, 1, (16, 16), backbone.dim)
meta = export_metadata(info, model_id="mdl_x", format="onnx", target="embedding", classes=None)
out = Path(sys.argv[1])
module = export_module(backbone, info, "embedding")
for i in range(2):
    t = threading.Thread(target=save_onnx, args=(out / f"{i}.onnx", module, info, meta))
    t.start()
    t.join()
print(sorted(p.name for p in out.iterdir()))
"""


def test_onnx_exports_asked_for_from_threads_that_exit_keep_the_process_alive(tmp_path):
    """torch 2.11 without a usable CUDA device segfaulted at the second such export (``_ONNX_EXPORT_THREAD``);
    in a subprocess, so a crash fails this test instead of ending the run."""
    run = subprocess.run(
        [sys.executable, "-c", EXPORTS_FROM_EXITED_THREADS, str(tmp_path)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "['0.onnx', '1.onnx']"


def test_export_metadata_says_what_is_inside_the_file():
    _, info = _tile_encoder()
    weights = export_metadata(info, model_id="mdl_x", format="safetensors", target="classifier", classes=["a", "b"])
    assert weights["preprocessing_in_module"] is False
    assert weights["output"] == {"name": "probabilities", "shape": ["batch", 2], "softmax": True}
    assert weights["preprocessing"]["l2_normalize"] is False
    assert weights["input"]["shape"] == ["batch", 1, 30, 30]
    assert weights["preprocessing"]["repeat_to_3_channels"] is True
    json.dumps(weights)  # one JSON document


def test_a_failed_write_leaves_neither_the_file_nor_its_temporary(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"old")

    def fail(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, fail)
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]
    assert path.read_bytes() == b"old"
    write_atomically(path, lambda tmp: tmp.write_bytes(b"new"))
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]
