"""Exact (flat) vs approximate (IVF, HNSW) search at 10 k, 100 k and 1 M vectors of dimension 512.

Data: a synthetic mixture of Gaussian clusters on the unit sphere, shaped like learned embeddings (real ones may
differ): one unit centre per ~500 points (2,000 at 1 M), drawn uniformly; cluster sizes log-normal (a few large,
many small); a shared mean direction of norm 0.5 (random pairs have cosine ~0.15: learned embeddings are not
centred); per-point noise with a power-law spectrum in a random basis (axis i scaled by (i+1)^-0.5, so most of
the spread lies in a few dozen directions) whose norm is a per-cluster spread of 0.5 to 0.9 (a point's cosine to
its centre ~0.7 to 0.8); each point is then L2-normalised. Queries are fresh draws of the same mixture, never in
the index: a validation set on which the search parameter (nprobe / efSearch) is chosen, the smallest reaching
recall@10 >= 0.99, and a separate test set on which recall and speed are reported. Recall@10 is against exact
search (faiss.knn).

    flock /tmp/jaga-heavy.lock python bench/search.py --sizes 10000 100000 1000000

Writes bench/results/search-<date>.json with the machine line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import RESULTS_DIR, machine

from api.core.knn_index import KnnIndex, _ladder, _set_search_param, recall_at

DIM = 512
K = 10
GOAL_RECALL = 0.99
GOAL_SPEEDUP = 10.0


class Mixture:
    """The generator: fixed centres, weights and spreads; ``draw`` samples points of it."""

    def __init__(self, clusters: int, dim: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.dim = dim
        centres = rng.standard_normal((clusters, dim)).astype(np.float32)
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        mean = rng.standard_normal(dim).astype(np.float32)
        self.mean = 0.5 * mean / np.linalg.norm(mean)
        weights = rng.lognormal(0.0, 1.0, clusters)
        self.weights = weights / weights.sum()
        self.spread = rng.uniform(0.5, 0.9, clusters).astype(np.float32)
        scale = (np.arange(dim) + 1.0) ** -0.5
        self.scale = (scale / np.linalg.norm(scale)).astype(np.float32)  # E|noise|² = spread²
        self.rotation = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)

    def draw(self, n: int, seed: int, chunk: int = 50_000) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((n, self.dim), dtype=np.float32)
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            which = rng.choice(len(self.centres), size=m, p=self.weights)
            noise = (rng.standard_normal((m, self.dim), dtype=np.float32) * self.scale) @ self.rotation
            x = self.centres[which] + self.mean + self.spread[which, None] * noise
            out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out


def rss_mib() -> float:
    found = re.search(r"^VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(found.group(1)) / 1024 if found else float("nan")


def machine_record() -> dict[str, Any]:
    flags = Path("/proc/cpuinfo").read_text()
    wanted = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx2")
    present = {f for f in re.findall(r"[a-z0-9_]+", flags.split("flags", 1)[1].split("\n", 1)[0])}
    return {
        **machine(),
        "faiss": faiss.__version__,
        "faiss_threads": faiss.omp_get_max_threads(),
        "flags": [f for f in wanted if f in present],
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }


def timed_search(index: faiss.Index, queries: np.ndarray, single: int) -> dict[str, float]:
    """Queries/s of one batched call over all ``queries`` and of ``single`` calls of one query each."""
    started = time.perf_counter()
    index.search(queries, K)
    batch = len(queries) / (time.perf_counter() - started)
    started = time.perf_counter()
    for q in queries[:single]:
        index.search(q[None], K)
    one = single / (time.perf_counter() - started)
    return {"batch_qps": round(batch, 1), "single_qps": round(one, 1)}


def sweep(index: faiss.Index, kind: str, val: np.ndarray, val_exact: np.ndarray) -> tuple[int, list[dict[str, Any]]]:
    """Recall on the validation set along the parameter's ladder; the cheapest value reaching the goal."""
    curve, chosen = [], None
    for value in _ladder(kind, index):
        _set_search_param(index, kind, value)
        started = time.perf_counter()
        found = index.search(val, K)[1]
        qps = len(val) / (time.perf_counter() - started)
        recall = recall_at(found, val_exact)
        curve.append({"value": value, "val_recall_at_10": round(recall, 4), "val_batch_qps": round(qps, 1)})
        if recall >= GOAL_RECALL:
            chosen = value
            break
    return (chosen if chosen is not None else curve[-1]["value"]), curve


def run_size(n: int, kinds: list[str], per_cluster: int, queries: int, single: int, seed: int) -> dict[str, Any]:
    print(f"== {n} vectors", flush=True)
    mixture = Mixture(max(20, n // per_cluster), DIM, seed)
    base = mixture.draw(n, seed)
    val = mixture.draw(queries, seed + 1)
    test = mixture.draw(queries, seed + 2)
    started = time.perf_counter()
    val_exact = faiss.knn(val, base, K, metric=faiss.METRIC_INNER_PRODUCT)[1]
    test_scores, test_exact = faiss.knn(test, base, K, metric=faiss.METRIC_INNER_PRODUCT)
    print(f"ground truth {time.perf_counter() - started:.1f}s", flush=True)
    out: dict[str, Any] = {
        "n": n,
        "dim": DIM,
        "clusters": len(mixture.centres),
        "queries": queries,
        "test_top1_cosine_mean": round(float(test_scores[:, 0].mean()), 3),
        "test_top10_cosine_mean": round(float(test_scores[:, -1].mean()), 3),
        "indexes": {},
    }
    labels: list[str | None] = [None] * n
    names = [""] * n
    for kind in ["flat", *kinds]:
        gc.collect()
        before = rss_mib()
        started = time.perf_counter()
        built = KnnIndex.build(base, labels, names, index_type=kind, seed=seed)  # type: ignore[arg-type]
        build_s = time.perf_counter() - started
        record: dict[str, Any] = {
            "build_seconds": round(build_s, 2),
            "rss_delta_mib": round(rss_mib() - before, 1),
            "built_info": built.info.as_dict(),
        }
        if kind != "flat":
            value, curve = sweep(built.index, kind, val, val_exact)
            _set_search_param(built.index, kind, value)
            record["chosen_on_validation"] = value
            record["validation_curve"] = curve
        found = built.index.search(test, K)[1]
        record["test_recall_at_10"] = round(recall_at(found, test_exact), 4)
        record.update(timed_search(built.index, test, single))
        print(kind, json.dumps({k: v for k, v in record.items() if k != "validation_curve"}), flush=True)
        out["indexes"][kind] = record
        del built
    flat = out["indexes"]["flat"]
    for kind in kinds:
        rec = out["indexes"][kind]
        rec["batch_speedup"] = round(rec["batch_qps"] / flat["batch_qps"], 1)
        rec["single_speedup"] = round(rec["single_qps"] / flat["single_qps"], 1)
        rec["goal_met"] = bool(
            rec["test_recall_at_10"] >= GOAL_RECALL and min(rec["batch_speedup"], rec["single_speedup"]) >= GOAL_SPEEDUP
        )
    return out


def table(result: dict[str, Any]) -> str:
    """The results as a Markdown table: one row per size and index kind."""
    rows = [
        "| vectors | index | parameters | build s (tuning s) | memory MiB | test recall@10 | batch q/s | single q/s "
        "| speed-up batch / single | goal |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size in result["sizes"]:
        for kind, rec in size["indexes"].items():
            info = rec["built_info"]
            params = dict(info["params"])
            if "chosen_on_validation" in rec:
                params["nprobe" if kind == "ivf" else "efSearch"] = rec["chosen_on_validation"]
            speedup = f"{rec['batch_speedup']}× / {rec['single_speedup']}×" if kind != "flat" else "1×"
            goal = "—" if kind == "flat" else ("met" if rec["goal_met"] else "not met")
            rows.append(
                f"| {size['n']:,} | {kind} | {', '.join(f'{k}={v}' for k, v in params.items()) or 'exact'} "
                f"| {rec['build_seconds']:.1f} ({info.get('tuning_seconds') or 0:.1f}) | {rec['rss_delta_mib']:.0f} "
                f"| {rec['test_recall_at_10']:.4f} | {rec['batch_qps']:,.0f} | {rec['single_qps']:,.0f} | {speedup} "
                f"| {goal} |"
            )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--kinds", nargs="+", default=["ivf"], choices=["ivf", "hnsw"])
    parser.add_argument("--hnsw-max", type=int, default=100_000, help="skip HNSW past this size (slow to build)")
    parser.add_argument("--per-cluster", type=int, default=500, help="points per cluster, on average")
    parser.add_argument("--queries", type=int, default=1000, help="validation and test queries, each")
    parser.add_argument("--single", type=int, default=100, help="queries timed one at a time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--table", type=Path, default=None, help="print a results file as Markdown and stop")
    args = parser.parse_args()
    if args.table is not None:
        print(table(json.loads(args.table.read_text())))
        return
    result: dict[str, Any] = {
        "benchmark": "search",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_record(),
        "generator": {"per_cluster": args.per_cluster, "dim": DIM, "spread": [0.5, 0.9], "spectrum": "(i+1)^-0.5"},
        "goal": {"recall_at_10": GOAL_RECALL, "speedup": GOAL_SPEEDUP},
        "command": " ".join(sys.argv),
        "sizes": [],
    }
    for n in args.sizes:
        kinds = [k for k in args.kinds if k != "hnsw" or n <= args.hnsw_max]
        result["sizes"].append(run_size(n, kinds, args.per_cluster, args.queries, args.single, args.seed))
        result["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        out = args.out or RESULTS_DIR / f"search-{dt.date.today().isoformat()}.json"
        out.write_text(json.dumps(result, indent=1) + "\n")  # after every size: a long run keeps its progress
    print(f"wrote {out}")
    print(table(result))


if __name__ == "__main__":
    main()
