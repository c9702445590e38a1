"""Embed: every image of a dataset embedded by a trained model, as ``POST /v1/models/{id}/embeddings`` embeds one
(the same ``Embedder`` and evaluation transform), written to a structured ``.npy`` file that
``GET /v1/jobs/{id}/embeddings`` serves (and converts to Parquet)."""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from api.core.embeddings import FORMATS, embeddings_dtype, npy_path
from api.core.images import fit_image, stored_to_pil
from api.core.knn_index import non_finite_rows
from api.core.specs import EmbedSpec, spec_from_json
from ssl_core.data import NpyWriter, read_rows
from ssl_core.device import resolve_device
from ssl_core.encoder import Embedder, load_encoder
from worker.context import JobContext, JobFailed, Outcome


def run_embed(ctx: JobContext) -> Outcome:
    spec = spec_from_json(ctx.job.spec)
    assert isinstance(spec, EmbedSpec)
    ctx.owned_model(spec.model_id)  # fails the job clearly when it was deleted
    data = ctx.load_dataset(spec.dataset_id)
    device = resolve_device(ctx.settings.device)
    embedder = Embedder(*load_encoder(ctx.store.model_path(spec.model_id), device), device)
    channels, n = embedder.info.channels, len(data)
    if data.images.shape[1] != channels:
        raise JobFailed(
            "channels_mismatch",
            f"dataset {spec.dataset_id} has {data.images.shape[1]}-channel images; "
            f"model {spec.model_id} takes {channels}",
        )
    labels = np.array(
        [""] * n if data.labels is None else [data.classes[v] if v >= 0 else "" for v in data.labels.tolist()],
        dtype=str,
    )
    filenames = np.array(data.filenames, dtype=str)
    dim = embedder.info.embedding_dim
    dtype = embeddings_dtype(
        dim, max((len(c) for c in data.classes), default=0), max(map(len, data.filenames), default=0)
    )
    final = npy_path(ctx.store, ctx.job_id)
    out_dir, tmp = final.parent, final.with_suffix(".tmp")
    ctx.update(phase="embedding", progress=0.0)
    started = time.perf_counter()
    try:
        with NpyWriter(tmp, n, (), dtype) as out:
            for start in range(0, n, spec.batch_size):
                ctx.raise_if_stopped()
                stop = min(n, start + spec.batch_size)
                images = _fitted(embedder, read_rows(data.images, start, stop))
                with torch.inference_mode():
                    vectors = embedder.embed_arrays(images, batch_size=spec.batch_size)
                bad = non_finite_rows(vectors)
                if len(bad):
                    raise JobFailed(
                        "non_finite_embeddings",
                        f"model {spec.model_id} gave a non-finite embedding for image {start + int(bad[0])} "
                        f"({data.filenames[start + int(bad[0])]!r})",
                    )
                rows = np.empty(stop - start, dtype)
                rows["item"] = np.arange(start, stop)
                rows["label"] = labels[start:stop]
                rows["filename"] = filenames[start:stop]
                rows["embedding"] = vectors
                out.write(rows)
                ctx.update(force=False, progress=round(stop / n, 4))
            out.finish()  # the header gets the rows written; the mapped array it returns is dropped
        seconds = time.perf_counter() - started
        os.replace(tmp, final)  # a reader sees the whole file or none
    except BaseException:
        ctx.store.remove_tree(out_dir)
        raise
    result = {
        "num_items": n,
        "dim": dim,
        "model_id": spec.model_id,
        "dataset_id": spec.dataset_id,
        "formats": list(FORMATS),
        "images_per_second": round(n / seconds, 1) if seconds > 0 else None,
        "seconds": round(seconds, 3),
    }
    return Outcome(result=result, artifacts=[out_dir])


def _fitted(embedder: Embedder, images: np.ndarray) -> np.ndarray:
    """Stored images fitted to the model's stored size as the embeddings endpoint fits an uploaded image (a dataset
    stored at another size than the model's training data); unchanged at the same size."""
    if images.shape[2:] == tuple(embedder.info.stored_size):
        return images
    info = embedder.info
    return np.stack([fit_image(stored_to_pil(im), info.channels, info.stored_size) for im in images])
