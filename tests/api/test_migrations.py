"""Migrations that rewrite rows: what models made before lineage existed look like after 0005."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import sqlalchemy as sa

from migrations import upgrade


def test_models_made_before_lineage_get_their_one_job_and_their_source(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'jaga.db'}"
    upgrade(url, "0004")
    engine = sa.create_engine(url)
    meta = sa.MetaData()
    meta.reflect(engine)
    now = datetime.now(UTC)
    job = dict(tenant_id="ten_1", status="succeeded", phase="done", progress=1.0, epoch=0, step=0, metrics={})
    job.update(attempt=1, max_attempts=3, created_at=now, updated_at=now)
    model = dict(tenant_id="ten_1", dataset_id="ds_1", backbone="resnet18", stem="small", image_size=32)
    model.update(embedding_dim=512, config={}, metrics={}, created_at=now)
    with engine.begin() as conn:
        conn.execute(meta.tables["tenants"].insert().values(id="ten_1", name="t", created_at=now))
        conn.execute(meta.tables["jobs"].insert().values(id="job_p", kind="pretrain", spec={"kind": "pretrain"}, **job))
        spec = {"kind": "evaluate", "protocol": "linear"}
        conn.execute(meta.tables["jobs"].insert().values(id="job_e", kind="evaluate", spec=spec, **job))
        conn.execute(meta.tables["models"].insert().values(id="mdl_p", job_id="job_p", method="byol", **model))
        conn.execute(
            meta.tables["models"]
            .insert()
            .values(id="mdl_c", job_id="job_e", method="byol", type="classifier", source_model_id="mdl_p", **model)
        )
    upgrade(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, parent_model_id, lineage, channels FROM models ORDER BY id")).all()
    got = {r[0]: (r[1], json.loads(r[2]), r[3]) for r in rows}
    assert got["mdl_p"] == (
        None,
        [{"job_id": "job_p", "kind": "pretrain", "dataset_id": "ds_1", "method": "byol"}],
        None,
    )
    assert got["mdl_c"] == (
        "mdl_p",
        [{"job_id": "job_e", "kind": "linear", "dataset_id": "ds_1", "method": "linear"}],
        None,
    )
