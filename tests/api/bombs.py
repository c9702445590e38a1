"""Hostile archives, built without ever holding their inflated bytes: zip and tar.gz bombs of zeros, zips whose
entries overlap, and npz arrays whose headers lie about their shape."""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
import zlib
from functools import cache

import numpy as np

MIB = 1 << 20


@cache
def _deflated_mib() -> tuple[bytes, bytes]:
    """One MiB of zeros as a raw deflate block ending on a full flush (so it can be repeated: the flush resets
    the compressor's state), and the empty final block."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(MIB)) + c.flush(zlib.Z_FULL_FLUSH)
    return block, c.flush()


def deflate_zeros(prefix: bytes, mib: int, suffix: bytes = b"") -> bytes:
    """A raw deflate stream of ``prefix``, ``mib`` MiB of zeros, then ``suffix``: about 1 KiB per MiB."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    block, _ = _deflated_mib()
    d = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = d.compress(suffix) + d.flush()
    return head + block * mib + tail


@cache
def crc32_zeros(mib: int, start: int = 0) -> int:
    zeros, crc = bytes(MIB), start
    for _ in range(mib):
        crc = zlib.crc32(zeros, crc)
    return crc


def zip_of(entries: list[tuple[str, int | bytes]], *, share_data: bool = False) -> bytes:
    """A zip of deflated entries, each ``(name, MiB of zeros)`` or ``(name, bytes)``, with true sizes and CRCs;
    ``share_data``: every entry's directory record points at the first entry's data (overlapping entries)."""
    out, central, offsets = io.BytesIO(), io.BytesIO(), []
    for name, content in entries:
        if isinstance(content, bytes):
            c = zlib.compressobj(9, zlib.DEFLATED, -15)
            data, size, crc = c.compress(content) + c.flush(), len(content), zlib.crc32(content)
        else:
            data, size, crc = deflate_zeros(b"", content), content * MIB, crc32_zeros(content)
        offsets.append(out.tell())
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(data), size, len(name), 0))
        out.write(name.encode() + data)
        offset = offsets[0] if share_data else offsets[-1]
        record = (0x02014B50, 20, 20, 0, 8, 0, 0, crc, len(data), size, len(name), 0, 0, 0, 0, 0, offset)
        central.write(struct.pack("<IHHHHHHIIIHHHHHII", *record) + name.encode())
    directory = central.getvalue()
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(directory), out.tell(), 0)
    return out.getvalue() + directory + end


def tar_gz_of(entries: list[tuple[str, int]]) -> bytes:
    """A tar.gz of ``(name, MiB of zeros)`` members, with a true gzip trailer."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    body, crc, size = b"", 0, 0
    for name, mib in entries:
        info = tarfile.TarInfo(name)
        info.size = mib * MIB
        header = info.tobuf(format=tarfile.USTAR_FORMAT)
        block, _ = _deflated_mib()
        body += c.compress(header) + c.flush(zlib.Z_FULL_FLUSH) + block * mib
        crc = crc32_zeros(mib, zlib.crc32(header, crc))
        size += len(header) + info.size
    end = bytes(2 * tarfile.BLOCKSIZE)  # the end-of-archive marker
    body += c.compress(end) + c.flush()
    crc, size = zlib.crc32(end, crc), size + len(end)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + body + struct.pack("<II", crc, size & 0xFFFFFFFF)


def npy_bytes(shape: tuple[int, ...], data: bytes, *, fortran_order: bool = False, descr: str = "|u1") -> bytes:
    """An ``.npy`` file whose header declares ``shape`` (true or not) followed by ``data``."""
    buf = io.BytesIO()
    header = {"descr": descr, "fortran_order": fortran_order, "shape": shape}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + data


def npz_of(arrays: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in arrays.items():
            zf.writestr(f"{name}.npy", data)
    return buf.getvalue()
