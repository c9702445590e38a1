"""Index: embed a dataset with a trained model and build a kNN index over it."""

from __future__ import annotations

import numpy as np

from api.core.ids import new_id
from api.core.knn_index import KnnIndex, non_finite_rows
from api.core.models import VectorIndex
from api.core.specs import IndexSpec, spec_from_json
from ssl_core.data import ImageArray, NpyWriter, read_rows
from ssl_core.device import resolve_device
from ssl_core.encoder import Embedder, load_encoder
from worker.context import JobContext, JobFailed, Outcome

#: Images embedded per chunk, read from the dataset's file a chunk at a time (memory: one chunk of pixels).
CHUNK = 2048


def run_index(ctx: JobContext) -> Outcome:
    spec = spec_from_json(ctx.job.spec)
    assert isinstance(spec, IndexSpec)
    ctx.owned_model(spec.model_id)  # fails the job clearly when it was deleted
    data = ctx.load_dataset(spec.dataset_id)
    device = resolve_device(ctx.settings.device)
    embedder = Embedder(*load_encoder(ctx.store.model_path(spec.model_id), device), device)
    index_id = new_id("index")
    index_dir = ctx.store.index_dir(index_id)
    ctx.update(phase="embedding")
    # The embeddings go to a file beside the index, not memory: the job holds the index and one chunk.
    try:
        with NpyWriter(index_dir / "embeddings.npy", len(data), (embedder.info.embedding_dim,), np.float32) as out:
            for start in range(0, len(data), CHUNK):
                ctx.raise_if_stopped()
                out.write(embedder.embed_arrays(read_rows(data.images, start, start + CHUNK)))
                ctx.update(force=False, progress=round(0.9 * min(1.0, (start + CHUNK) / len(data)), 4))
            embeddings = out.finish()
        ctx.update(phase="indexing", progress=0.95)
        index = _build(ctx, spec, data, embeddings)
        del embeddings  # unmapped before its file goes
        index.save(index_dir)
    except BaseException:
        ctx.store.remove_tree(index_dir)
        raise
    finally:
        (index_dir / "embeddings.npy").unlink(missing_ok=True)
    build = index.info.as_dict()
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


def _build(ctx: JobContext, spec: IndexSpec, data: ImageArray, embeddings: np.ndarray) -> KnnIndex:
    labels: list[str | None] = (
        [data.classes[v] if v >= 0 else None for v in data.labels.tolist()]
        if data.labels is not None
        else [None] * len(data)
    )
    bad = non_finite_rows(embeddings)
    if len(bad):
        raise JobFailed(
            "non_finite_embeddings",
            f"model {spec.model_id} gave non-finite embeddings for {len(bad)} "
            f"of {len(embeddings)} images (first: {data.filenames[bad[0]]!r})",
        )
    threshold = spec.ann_threshold or ctx.settings.index_ann_threshold
    return KnnIndex.build(embeddings, labels, data.filenames, index_type=spec.index_type, ann_threshold=threshold)
