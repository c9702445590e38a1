"""Rows and files for API tests, made with the project's own code (no mocks)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from api.core.artifacts import ArtifactStore
from api.core.auth import get_or_create_tenant
from api.core.ids import new_id
from api.core.knn_index import KnnIndex
from api.core.models import Dataset, Job, Model, VectorIndex, utcnow
from ssl_core.backbones import build_backbone
from ssl_core.data import ImageArray
from ssl_core.encoder import Embedder, EncoderInfo, save_encoder
from tests.helpers import png_bytes


def tenant_id(factory: sessionmaker[Session], name: str = "acme") -> str:
    with factory() as s:
        t = get_or_create_tenant(s, name)
        s.commit()
        return t.id


def ready_dataset(
    factory: sessionmaker[Session], store: ArtifactStore, tenant: str, n: int = 12, size: int = 12, **fields: Any
) -> Dataset:
    rng = np.random.default_rng(0)
    data = ImageArray(
        rng.integers(0, 256, (n, 1, size, size), dtype=np.uint8),
        np.arange(n, dtype=np.int64) % 2,
        [f"img{i}.png" for i in range(n)],
        ["a", "b"],
    )
    values: dict[str, Any] = dict(
        id=new_id("dataset"),
        tenant_id=tenant,
        name="ready",
        status="ready",
        source_format="zip",
        num_images=n,
        image_shape=[1, size, size],
        classes=[{"name": "a", "count": n // 2}, {"name": "b", "count": n - n // 2}],
        num_labelled=n,
    )
    ds = Dataset(**{**values, **fields})  # fields may describe the row differently from the stored images
    data.save(store.dataset_dir(ds.id))
    with factory() as s:
        s.add(ds)
        s.commit()
    return ds


def trained_model(
    factory: sessionmaker[Session],
    store: ArtifactStore,
    tenant: str,
    dataset_id: str,
    size: int = 12,
    nan_weights: bool = False,
    backbone_name: str = "resnet18",
    channels: int = 1,
) -> Model:
    """A model whose encoder is a freshly initialised ``backbone_name`` (at image size 16) saved with the real
    encoder format; ``nan_weights`` puts a NaN in its last convolution, as a broken training run would."""
    import torch

    torch.manual_seed(0)
    backbone = build_backbone(backbone_name, "standard", 16)
    if nan_weights:
        with torch.no_grad():
            backbone.net.layer4[1].conv2.weight[0, 0, 1, 1] = float("nan")
    return _saved_model(
        factory, store, tenant, dataset_id, size, backbone, backbone_name=backbone_name, channels=channels
    )


def trained_classifier(
    factory: sessionmaker[Session],
    store: ArtifactStore,
    tenant: str,
    dataset_id: str,
    classes: tuple[str, ...] = ("ant", "bee", "cat"),
    size: int = 12,
    nan_head: bool = False,
    source_model_id: str | None = None,
) -> Model:
    """A classifier model: a freshly initialised backbone and linear head saved with the real file format, whose
    head weights are seeded (``nan_head``: a NaN in them, as a diverged fine-tuning run would leave)."""
    import torch

    torch.manual_seed(0)
    backbone = build_backbone("resnet18", "standard")
    head = torch.nn.Linear(backbone.dim, len(classes))
    if nan_head:
        with torch.no_grad():
            head.weight[0, 0] = float("nan")
    return _saved_model(factory, store, tenant, dataset_id, size, backbone, head, list(classes), source_model_id)


def _saved_model(
    factory: sessionmaker[Session],
    store: ArtifactStore,
    tenant: str,
    dataset_id: str,
    size: int,
    backbone: Any,
    head: Any = None,
    classes: list[str] | None = None,
    source_model_id: str | None = None,
    backbone_name: str = "resnet18",
    channels: int = 1,
) -> Model:
    """Save a SimCLR-looking model's file (a classifier's with ``head``) and commit its row."""
    patch_size = getattr(backbone, "patch_size", None)
    info = EncoderInfo("simclr", backbone_name, "standard", 16, channels, (size, size), backbone.dim, patch_size)
    model = model_row(
        factory,
        tenant,
        dataset_id,
        backbone=backbone_name,
        channels=channels,
        image_size=16,
        embedding_dim=backbone.dim,
        type="encoder" if head is None else "classifier",
        classes=classes,
        source_model_id=source_model_id,
    )
    save_encoder(store.model_path(model.id), backbone, info, {}, head=head, classes=classes)
    return model


def model_row(factory: sessionmaker[Session], tenant: str, dataset_id: str, **fields: Any) -> Model:
    """A model row without a file, for code that reads only the row (submission checks, the leaderboard)."""
    values: dict[str, Any] = dict(
        id=new_id("model"),
        tenant_id=tenant,
        job_id=new_id("job"),
        dataset_id=dataset_id,
        method="simclr",
        backbone="resnet18",
        stem="standard",
        image_size=32,
        embedding_dim=512,
    )
    model = Model(**{**values, **fields})
    with factory() as s:
        s.add(model)
        s.commit()
    return model


def evaluate_job(
    factory: sessionmaker[Session],
    tenant: str,
    dataset_id: str,
    *,
    protocol: str,
    subset_id: str,
    top1: float,
    top5: float | None = None,
    source_model_id: str | None = None,
    model_id: str | None = None,
    strategy: str | None = None,
    label_fraction: float | None = None,
    status: str = "succeeded",
    created_at: datetime | None = None,
) -> Job:
    """An evaluate job row as the worker leaves it, with a result of the worker's shape."""
    settings: dict[str, Any] = {
        "protocol": protocol,
        "test_fraction": 0.2,
        "label_fraction": label_fraction,
        "labels_per_class": None,
        "val_fraction": 0.1,
        "seed": 0,
        "splits": {"subset_id": subset_id, "train": 8, "val": 1, "test": 3, "test_source": "stratified 0.2"},
        "test_dataset_id": None,
    }
    if strategy is not None:
        settings["strategy"] = strategy
    result: dict[str, Any] = {
        "protocol": settings,
        "subset_id": subset_id,
        "source_model_id": source_model_id,
        "classes": ["a", "b"],
        "top1": top1,
        "per_class_accuracy": {"a": top1, "b": top1},
        "confusion_matrix": [[1, 0], [0, 1]],
        "num_test_images": 3,
        "wall_seconds": 1.0,
        "model_id": model_id,
    }
    if top5 is not None:
        result["top5"] = top5
    spec = {"kind": "evaluate", "protocol": protocol, "dataset_id": dataset_id}
    if source_model_id is not None:
        spec["model_id"] = source_model_id
    job = Job(
        id=new_id("job"),
        tenant_id=tenant,
        kind="evaluate",
        spec=spec,
        dataset_id=dataset_id,
        status=status,
        phase=status,
        result=result if status == "succeeded" else None,
        created_at=created_at or utcnow(),
    )
    with factory() as s:
        s.add(job)
        s.commit()
    return job


def built_index(
    factory: sessionmaker[Session],
    store: ArtifactStore,
    tenant: str,
    model: Model,
    dataset_id: str,
    index_type: Literal["flat", "hnsw", "ivf"] = "flat",
) -> VectorIndex:
    import torch

    from ssl_core.encoder import load_encoder

    data = ImageArray.load(store.dataset_dir(dataset_id))
    embedder = Embedder(*load_encoder(store.model_path(model.id), torch.device("cpu")), torch.device("cpu"))
    vectors = embedder.embed_arrays(data.images)
    labels = [data.classes[v] for v in data.labels.tolist()] if data.labels is not None else [None] * len(data)
    index = KnnIndex.build(vectors, labels, data.filenames, index_type=index_type)
    row = VectorIndex(
        id=new_id("index"),
        tenant_id=tenant,
        job_id=new_id("job"),
        model_id=model.id,
        dataset_id=dataset_id,
        index_type=index.info.type,
        num_items=len(index),
        dim=index.dim,
        build=index.info.as_dict(),
    )
    index.save(store.index_dir(row.id))
    with factory() as s:
        s.add(row)
        s.commit()
    return row


def random_png(seed: int = 0, size: int = 20, colour: bool = False) -> bytes:
    shape = (size, size, 3) if colour else (size, size)
    return png_bytes(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))
