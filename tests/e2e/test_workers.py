"""`jaga serve --workers N`: N API processes on one port beside one training worker, all stopped together."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.servers import HEADERS, Server, pid_alive

pytestmark = pytest.mark.e2e


def _children(pid: int) -> dict[int, str]:
    """The live child processes of ``pid``, with their command lines."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")
def test_two_api_processes_share_the_port_beside_one_training_worker(tmp_path: Path):
    server = Server(tmp_path / "data", tmp_path / "serve.log", args=("--workers", "2"))
    try:
        children = _children(server.proc.pid)
        workers = [pid for pid, cmd in children.items() if "celery" in cmd]
        api = [pid for pid, cmd in children.items() if "multiprocessing" in cmd and "resource_tracker" not in cmd]
        assert len(workers) == 1, children
        assert len(api) == 2, children
        with httpx.Client(base_url=server.url, headers=HEADERS, timeout=30) as c:
            # The bootstrap key, made once before the processes started, is valid in each of them.
            for _ in range(20):
                with httpx.Client(base_url=server.url, headers=HEADERS, timeout=30) as fresh:  # a new connection
                    assert fresh.get("/v1/jobs").status_code == 200
            assert c.get("/readyz").status_code == 200
    finally:
        code = server.stop()
    assert code == 0, server.log.read_text()[-3000:]
    assert not any(pid_alive(pid) for pid in [*workers, *api])
