"""Decoded datasets on disk, resizing for training, and matching channels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ssl_core.data import (
    ImageArray,
    NpyWriter,
    fit_for_training,
    match_channels,
    read_rows,
    resize_array,
    resize_to_file,
    staging_dir,
    to_float,
)


def _array(n: int = 5, c: int = 3, labels: bool = True) -> ImageArray:
    images = np.random.default_rng(0).integers(0, 256, (n, c, 6, 7), dtype=np.uint8)
    return ImageArray(
        images,
        np.array([0, 1, -1, 1, 0][:n]) if labels else None,
        [f"f{i}.png" for i in range(n)],
        ["cat", "dog"] if labels else [],
    )


@pytest.mark.parametrize(
    ("images", "labels", "filenames", "message"),
    [
        (np.zeros((2, 2, 4, 4), np.uint8), None, ["a", "b"], "C in"),  # two channels
        (np.zeros((2, 3, 4, 4), np.float32), None, ["a", "b"], "uint8"),
        (np.zeros((3, 4, 4), np.uint8), None, ["a", "b", "c"], "uint8"),  # not 4-D
        (np.zeros((2, 1, 4, 4), np.uint8), np.array([0, 1, 2]), ["a", "b"], "labels"),
        (np.zeros((2, 1, 4, 4), np.uint8), None, ["a"], "file names"),
    ],
)
def test_image_array_validates(
    images: np.ndarray, labels: np.ndarray | None, filenames: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ImageArray(images, labels, filenames, [])


@pytest.mark.parametrize("labels", [True, False])
@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip(labels: bool, mmap: bool, tmp_path: Path) -> None:
    data = _array(labels=labels)
    data.save(tmp_path / "ds")
    loaded = ImageArray.load(tmp_path / "ds", mmap=mmap)
    np.testing.assert_array_equal(loaded.images, data.images)
    assert isinstance(loaded.images, np.memmap) == mmap
    assert loaded.filenames == data.filenames
    assert loaded.classes == data.classes
    if labels:
        assert loaded.labels is not None
        assert loaded.labels.dtype == np.int64
        np.testing.assert_array_equal(loaded.labels, data.labels)
        assert loaded.labelled.tolist() == [0, 1, 3, 4]
    else:
        assert loaded.labels is None
        assert loaded.labelled.tolist() == []
    assert not (tmp_path / "ds.tmp").exists()


def test_save_replaces_an_earlier_save(tmp_path: Path) -> None:
    _array(labels=True).save(tmp_path / "ds")
    _array(n=3, labels=False).save(tmp_path / "ds")
    loaded = ImageArray.load(tmp_path / "ds")
    assert len(loaded) == 3
    assert loaded.labels is None


def test_save_ignores_a_left_over_temporary_directory(tmp_path: Path) -> None:
    stale = tmp_path / "ds.tmp"
    stale.mkdir()
    np.save(stale / "labels.npy", np.array([1, 1, 1]))
    _array(n=3, labels=False).save(tmp_path / "ds")
    assert ImageArray.load(tmp_path / "ds").labels is None


@pytest.mark.parametrize("size", [(6, 7), (3, 3), (12, 10)])
def test_resize_array_matches_antialiased_bilinear(size: tuple[int, int]) -> None:
    images = _array().images
    got = resize_array(images, size, chunk=2)
    assert got.shape == (5, 3, *size)
    assert got.dtype == np.uint8
    if size == (6, 7):
        assert got is images  # nothing to do
        return
    want = (
        F.interpolate(torch.from_numpy(images).float(), size=size, mode="bilinear", antialias=True, align_corners=False)
        .round()
        .clamp(0, 255)
        .to(torch.uint8)
        .numpy()
    )
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("stored", "image_size", "expected"),
    [
        ((28, 28), 32, (28, 28)),  # small images are left alone
        ((64, 64), 32, (64, 64)),  # exactly twice the training size
        ((96, 48), 32, (64, 32)),  # the long side is shrunk to twice the training size
        ((30, 90), 16, (11, 32)),
    ],
)
def test_fit_for_training(stored: tuple[int, int], image_size: int, expected: tuple[int, int]) -> None:
    images = np.zeros((2, 1, *stored), dtype=np.uint8)
    assert fit_for_training(images, image_size).shape == (2, 1, *expected)


def _antialiased(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    x = torch.from_numpy(np.array(images)).float()
    y = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8).numpy()


def test_fit_for_training_shrinks_into_a_mapped_file_chunk_by_chunk(tmp_path: Path) -> None:
    images = np.random.default_rng(4).integers(0, 256, (7, 3, 40, 20), dtype=np.uint8)
    got = fit_for_training(images, 8, scratch=tmp_path / "fitted.npy")
    assert isinstance(got, np.memmap)
    np.testing.assert_array_equal(got, _antialiased(images, (16, 8)))
    # Chunks of 3 rows (one row is 2400 bytes): the chunk seams must not show.
    chunked = resize_to_file(images, (16, 8), tmp_path / "chunked.npy", chunk_bytes=3 * 2400)
    np.testing.assert_array_equal(chunked, _antialiased(images, (16, 8)))
    anonymous = fit_for_training(images, 8)
    np.testing.assert_array_equal(anonymous, _antialiased(images, (16, 8)))
    assert not Path(str(anonymous.filename)).exists()  # unlinked: its space goes with the array


def _header(path: Path) -> tuple[tuple[int, ...], int]:
    with open(path, "rb") as f:
        assert np.lib.format.read_magic(f) == (1, 0)
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        assert not fortran
        assert dtype == np.uint8
        return shape, f.tell()


@pytest.mark.parametrize("written", [0, 1, 3, 12])
def test_npy_writer_fixes_the_header_to_the_rows_written(tmp_path: Path, written: int) -> None:
    rows = np.random.default_rng(5).integers(0, 256, (written, 3, 2, 5), dtype=np.uint8)
    path = tmp_path / "a.npy"
    with NpyWriter(path, 12, (3, 2, 5)) as writer:
        for row in rows:
            writer.write(row[None])
        got = writer.finish()
    np.testing.assert_array_equal(got, rows)
    shape, offset = _header(path)
    assert shape == (written, 3, 2, 5)
    assert offset % 64 == 0
    assert path.stat().st_size == offset + rows.nbytes  # cut to the rows written
    np.testing.assert_array_equal(np.load(path), rows)
    if written:
        np.testing.assert_array_equal(np.load(path, mmap_mode="r"), rows)


def test_npy_writer_header_length_does_not_depend_on_the_row_count(tmp_path: Path) -> None:
    offsets = set()
    for n in (1, 99_999, 10**19):
        writer = NpyWriter(tmp_path / "h.npy", n, (3, 64, 64))
        offsets.add(writer.offset)
        writer.abort()
    assert len(offsets) == 1


def test_npy_writer_refuses_wrong_rows_and_removes_its_file_on_error(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    for rows, message in [
        (np.zeros((1, 1, 2, 3), np.uint8), "rows must be"),
        (np.zeros((4, 1, 2, 2), np.uint8), "5 rows written to an array of 4"),
    ]:
        with NpyWriter(path, 4, (1, 2, 2)) as writer:
            writer.write(np.zeros((1, 1, 2, 2), np.uint8))
            with pytest.raises(ValueError, match=message):
                writer.write(rows)
            assert writer.count == 1
            raise_inside = pytest.raises(RuntimeError)
            with raise_inside, writer:
                raise RuntimeError("the ingest stops here")
        assert not path.exists()


def test_read_rows_reads_a_mapped_file_like_a_slice(tmp_path: Path) -> None:
    images = np.random.default_rng(6).integers(0, 256, (9, 1, 3, 4), dtype=np.uint8)
    np.save(tmp_path / "a.npy", images)
    mapped = np.load(tmp_path / "a.npy", mmap_mode="r")
    for start, stop in [(0, 9), (2, 5), (7, 20), (9, 12), (4, 4)]:
        got = read_rows(mapped, start, stop)
        assert not isinstance(got, np.memmap)
        assert got.flags.writeable
        np.testing.assert_array_equal(got, images[start:stop])
        np.testing.assert_array_equal(read_rows(images, start, stop), images[start:stop])
        np.testing.assert_array_equal(read_rows(mapped[1:], start, stop), images[1:][start:stop])


def test_save_keeps_images_already_decoded_into_the_staging_directory(tmp_path: Path) -> None:
    target = tmp_path / "ds"
    staging = staging_dir(target, "w1")
    assert staging == tmp_path / "ds.tmp-w1"
    staging.mkdir()
    rows = np.random.default_rng(7).integers(0, 256, (4, 3, 5, 6), dtype=np.uint8)
    with NpyWriter(staging / "images.npy", 4, (3, 5, 6)) as writer:
        writer.write(rows)
        images = writer.finish()
    inode = (staging / "images.npy").stat().st_ino
    ImageArray(images, np.array([0, 1, 0, -1]), list("abcd"), ["x", "y"]).save(target, staging)
    assert (target / "images.npy").stat().st_ino == inode  # renamed with its directory, not rewritten
    assert not staging.exists()
    loaded = ImageArray.load(target)
    np.testing.assert_array_equal(loaded.images, rows)
    assert loaded.labels is not None
    assert loaded.labels.tolist() == [0, 1, 0, -1]


def test_save_copies_a_mapped_array_from_elsewhere(tmp_path: Path) -> None:
    _array().save(tmp_path / "a")
    loaded = ImageArray.load(tmp_path / "a")
    loaded.save(tmp_path / "b")
    np.testing.assert_array_equal(ImageArray.load(tmp_path / "b").images, _array().images)
    np.testing.assert_array_equal(ImageArray.load(tmp_path / "a").images, _array().images)


def test_to_float(cpu: torch.device) -> None:
    batch = np.array([[[[0, 51, 255]]]], dtype=np.uint8)
    out = to_float(batch, cpu)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[[[0.0, 0.2, 1.0]]]]))


def test_match_channels_replicates_grey_and_takes_rgb_luma() -> None:
    grey = np.array([[[[0, 128], [255, 7]]]], dtype=np.uint8)
    assert np.array_equal(match_channels(grey, 3), np.repeat(grey, 3, axis=1))
    assert match_channels(grey, 1) is grey
    rgb = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 5), dtype=np.uint8)
    # PIL's convert("L") is the reference: L = R * 299/1000 + G * 587/1000 + B * 114/1000.
    for image, luma in zip(rgb, match_channels(rgb, 1), strict=True):
        expected = np.asarray(Image.fromarray(image.transpose(1, 2, 0)).convert("L"))
        assert np.abs(luma[0].astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize("channels", [None, 1, 3])
def test_take_rows_gathers_a_split_into_a_mapped_file_chunk_by_chunk(channels: int | None, tmp_path: Path) -> None:
    import ssl_core.data as data

    images = np.random.default_rng(0).integers(0, 256, (50, 3, 4, 5), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r")
    idx = np.array([0, 1, 6, 7, 20, 34, 35, 49])
    taken = data.take_rows(mapped, idx, channels, chunk_bytes=7 * 3 * 4 * 5)  # chunks of 7 rows
    expected = images[idx] if channels is None else data.match_channels(images[idx], channels)
    assert isinstance(taken, np.memmap)
    np.testing.assert_array_equal(taken, expected)
    assert data.take_rows(mapped, np.array([], dtype=np.int64)).shape == (0, 3, 4, 5)
    with pytest.raises(ValueError, match="ascending"):
        data.take_rows(mapped, np.array([3, 2]))
