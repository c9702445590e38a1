"""Index: embed a dataset with a trained model and build a kNN index over it."""

from __future__ import annotations

import numpy as np

from api.core.ids import new_id
from api.core.models import Model, VectorIndex
from api.core.specs import IndexSpec, spec_from_json
from ssl_core.data import read_rows
from ssl_core.device import resolve_device
from ssl_core.encoder import Embedder, load_encoder
from ssl_core.knn_index import KnnIndex
from worker.context import JobContext, JobFailed, Outcome

#: Images embedded per chunk, read from the dataset's file a chunk at a time (memory: one chunk of pixels).
CHUNK = 2048


def run_index(ctx: JobContext) -> Outcome:
    spec = spec_from_json(ctx.job.spec)
    assert isinstance(spec, IndexSpec)
    model = ctx.with_session(lambda s: s.get(Model, spec.model_id))
    if model is None or model.tenant_id != ctx.tenant_id:
        raise JobFailed("model_missing", f"model {spec.model_id} no longer exists")
    data = ctx.load_dataset(spec.dataset_id)
    device = resolve_device(ctx.settings.device)
    embedder = Embedder(*load_encoder(ctx.store.model_path(spec.model_id), device), device)
    ctx.update(phase="embedding")
    embeddings = np.empty((len(data), embedder.info.embedding_dim), np.float32)  # filled in place: no concat
    for start in range(0, len(data), CHUNK):
        ctx.raise_if_stopped()
        embeddings[start : start + CHUNK] = embedder.embed_arrays(read_rows(data.images, start, start + CHUNK))
        ctx.update(force=False, progress=round(0.9 * min(1.0, (start + CHUNK) / len(data)), 4))
    ctx.update(phase="indexing", progress=0.95)
    labels: list[str | None] = (
        [data.classes[v] if v >= 0 else None for v in data.labels.tolist()]
        if data.labels is not None
        else [None] * len(data)
    )
    bad = np.flatnonzero(~np.isfinite(embeddings).all(axis=1))
    if len(bad):
        raise JobFailed(
            "non_finite_embeddings",
            f"model {spec.model_id} gave non-finite embeddings for {len(bad)} "
            f"of {len(embeddings)} images (first: {data.filenames[bad[0]]!r})",
        )
    threshold = spec.ann_threshold or ctx.settings.index_ann_threshold
    index = KnnIndex.build(embeddings, labels, data.filenames, index_type=spec.index_type, ann_threshold=threshold)
    build = index.info.as_dict()
    index_id = new_id("index")
    index_dir = ctx.store.index_dir(index_id)
    index.save(index_dir)
    row = VectorIndex(
        id=index_id,
        tenant_id=ctx.tenant_id,
        job_id=ctx.job_id,
        model_id=spec.model_id,
        dataset_id=spec.dataset_id,
        index_type=index.info.type,
        num_items=len(index),
        dim=index.dim,
        build=build,
    )
    result = {"index_id": index_id, "num_items": len(index), "dim": index.dim, "index_type": index.info.type}
    return Outcome(result={**result, "build": build}, rows=[row], artifacts=[index_dir])
