"""One handler per job kind: ``handler(ctx) -> Outcome``; raise ``JobFailed`` for a user-facing failure."""

from __future__ import annotations

from collections.abc import Callable

from worker.context import JobContext, Outcome
from worker.kinds.distill import run_distill
from worker.kinds.embed import run_embed
from worker.kinds.evaluate import run_evaluate
from worker.kinds.index import run_index
from worker.kinds.ingest import run_ingest
from worker.kinds.pretrain import run_pretrain

HANDLERS: dict[str, Callable[[JobContext], Outcome]] = {
    "ingest": run_ingest,
    "pretrain": run_pretrain,
    "distill": run_distill,
    "index": run_index,
    "evaluate": run_evaluate,
    "embed": run_embed,
}
