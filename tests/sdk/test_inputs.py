"""The SDK's request bodies: a folder zipped while it is read, and images from paths, bytes, PIL or arrays."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaga.config import resolve, save_file
from jaga.inputs import IterReader, as_list, folder_files, image_bytes, zip_chunks
from tests.helpers import png_bytes


def _folder(root: Path) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    files = {f"{c}/{i}.png": png_bytes(rng.integers(0, 256, (9, 9), dtype=np.uint8)) for c in "ab" for i in range(3)}
    files["labels.csv"] = b"path,label\n"
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / ".DS_Store").write_bytes(b"junk")
    (root / ".git").mkdir()
    (root / ".git" / "x.png").write_bytes(b"junk")
    return files


def test_zip_stream_holds_the_folder_with_relative_paths_and_skips_hidden(tmp_path: Path):
    files = _folder(tmp_path)
    archive = b"".join(zip_chunks(tmp_path, chunk_size=100))
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        assert zf.testzip() is None
        assert {i.filename: zf.read(i) for i in zf.infolist()} == files


def test_zip_stream_is_produced_in_chunks_not_at_once(tmp_path: Path):
    big = np.random.default_rng(1).integers(0, 256, 3_000_000, dtype=np.uint8).tobytes()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "big.bin").write_bytes(big)
    chunks = list(zip_chunks(tmp_path, chunk_size=1 << 16))
    assert max(len(c) for c in chunks) <= (1 << 16) + 1024  # one file chunk plus a header at most
    assert zipfile.ZipFile(io.BytesIO(b"".join(chunks))).read("a/big.bin") == big


def test_iter_reader_reads_any_sizes():
    reader = IterReader(iter([b"abc", b"", b"defgh", b"i"]))
    assert reader.read(2) == b"ab"
    assert reader.read(4) == b"cdef"
    assert reader.read() == b"ghi"
    assert reader.read(5) == b""


def test_folder_files_in_a_stable_order_without_hidden_ones(tmp_path: Path):
    _folder(tmp_path)
    names = [p.relative_to(tmp_path).as_posix() for p in folder_files(tmp_path)]
    assert names == ["labels.csv", *(f"{c}/{i}.png" for c in "ab" for i in range(3))]


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.full((4, 5), 7, np.uint8), np.full((4, 5), 7, np.uint8)),
        (np.full((4, 5, 1), 7, np.uint8), np.full((4, 5), 7, np.uint8)),
        (np.full((4, 5, 3), 0.5, np.float32), np.full((4, 5, 3), 128, np.uint8)),
        (np.full((4, 5), 2.0), np.full((4, 5), 255, np.uint8)),  # clipped to [0, 1]
    ],
)
def test_arrays_are_sent_as_lossless_png(array: np.ndarray, expected: np.ndarray):
    name, data = image_bytes(array)
    assert name.endswith(".png")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), expected)


def test_paths_bytes_and_pil_images(tmp_path: Path):
    raw = png_bytes(np.zeros((3, 3), np.uint8))
    (tmp_path / "q.png").write_bytes(raw)
    assert image_bytes(tmp_path / "q.png") == ("q.png", raw)
    assert image_bytes(str(tmp_path / "q.png")) == ("q.png", raw)
    assert image_bytes(raw)[1] == raw
    pil = Image.new("RGB", (3, 2), (1, 2, 3))
    assert np.asarray(Image.open(io.BytesIO(image_bytes(pil)[1]))).tolist() == np.asarray(pil).tolist()


@pytest.mark.parametrize("bad", [np.zeros((2, 2, 2), np.uint8), np.zeros((2, 2), np.int64), 3.5])
def test_what_is_not_an_image_is_refused(bad: object):
    with pytest.raises(TypeError):
        image_bytes(bad)


def test_one_image_or_many():
    array = np.zeros((2, 2), np.uint8)
    assert len(as_list(array)) == 1
    assert len(as_list("a.png")) == 1
    assert len(as_list(b"x")) == 1
    assert len(as_list([array, array])) == 2
    assert len(as_list(p for p in ["a", "b", "c"])) == 3


def test_connection_arguments_then_environment_then_login_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("JAGA_CONFIG", str(tmp_path / "cfg" / "config.json"))
    monkeypatch.delenv("JAGA_URL", raising=False)
    monkeypatch.delenv("JAGA_API_KEY", raising=False)
    assert resolve().url == "http://127.0.0.1:8000"
    assert resolve().api_key is None
    path = save_file(url="http://saved:1", api_key="k-saved")
    assert path.stat().st_mode & 0o777 == 0o600
    assert (resolve().url, resolve().api_key) == ("http://saved:1", "k-saved")
    monkeypatch.setenv("JAGA_URL", "http://env:2/")
    monkeypatch.setenv("JAGA_API_KEY", "k-env")
    assert (resolve().url, resolve().api_key) == ("http://env:2", "k-env")
    assert (resolve("http://arg:3", "k-arg").url, resolve("http://arg:3", "k-arg").api_key) == ("http://arg:3", "k-arg")
