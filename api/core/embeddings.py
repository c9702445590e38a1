"""The files of an embed job, shared by the worker that writes them and the API that serves them: a structured
``.npy`` array (``np.load(path, allow_pickle=False)``) with fields ``item`` (int64: the image's position in the
dataset), ``label`` (str: its class name, '' when unlabelled), ``filename`` (str) and ``embedding`` (float32, D,
L2-normalised), and the same rows as Parquet (columns item, label, filename, embedding: a fixed-size list of
float32), converted from the array on its first download (needs ``pyarrow``: the ``parquet`` extra)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from api.core.artifacts import ArtifactStore

#: What ``GET /v1/jobs/{id}/embeddings?format=`` serves.
FORMATS = ("npy", "parquet")
#: The extra that installs what the Parquet download needs.
PARQUET_EXTRA = "parquet"
#: Rows converted to Parquet at a time (one row group each).
PARQUET_ROWS = 65536


def embeddings_dtype(dim: int, label_chars: int, filename_chars: int) -> np.dtype:
    """One row of the array, its strings as wide as the longest class name and file name (at least 1)."""
    return np.dtype(
        [
            ("item", "<i8"),
            ("label", f"<U{max(1, label_chars)}"),
            ("filename", f"<U{max(1, filename_chars)}"),
            ("embedding", "<f4", (dim,)),
        ]
    )


def npy_path(store: ArtifactStore, job_id: str) -> Path:
    return store.embeddings_dir(job_id) / "embeddings.npy"


def parquet_path(store: ArtifactStore, job_id: str) -> Path:
    return store.embeddings_dir(job_id) / "embeddings.parquet"


def write_parquet(source: Path, path: Path) -> None:
    """The rows of the ``.npy`` array at ``source`` as a Parquet file at ``path`` (not atomic: write a temporary
    file and rename it). Raises ``ImportError`` without pyarrow."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = np.load(source, mmap_mode="r", allow_pickle=False)
    dim = int(rows.dtype["embedding"].shape[0])
    schema = pa.schema(
        [
            ("item", pa.int64()),
            ("label", pa.string()),
            ("filename", pa.string()),
            ("embedding", pa.list_(pa.float32(), dim)),
        ]
    )
    with pq.ParquetWriter(str(path), schema) as writer:
        for start in range(0, len(rows), PARQUET_ROWS):
            chunk = np.array(rows[start : start + PARQUET_ROWS])
            flat = pa.array(np.ascontiguousarray(chunk["embedding"]).reshape(-1), pa.float32())
            table = pa.table(
                [
                    pa.array(chunk["item"], pa.int64()),
                    pa.array(chunk["label"].tolist(), pa.string()),
                    pa.array(chunk["filename"].tolist(), pa.string()),
                    pa.FixedSizeListArray.from_arrays(flat, dim),
                ],
                schema=schema,
            )
            writer.write_table(table)
