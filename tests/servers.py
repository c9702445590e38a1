"""`jaga serve` as a child process for end-to-end and fault-injection tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

KEY = "e2e-bootstrap-key-0123456789abcdef"
HEADERS = {"Authorization": f"Bearer {KEY}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


class Server:
    """`jaga serve` on ``data_dir`` (SQLite, filesystem broker, one supervised worker), ready when started."""

    def __init__(
        self, data_dir: Path, log: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        full = {k: v for k, v in os.environ.items() if not k.startswith("JAGA_")}
        full.update(JAGA_DATA_DIR=str(data_dir), JAGA_BOOTSTRAP_KEY=KEY, JAGA_REAPER_INTERVAL_SECONDS="2")
        full.update(env or {})
        self.log = log
        jaga = Path(sys.executable).with_name("jaga")
        output = open(log, "ab")  # noqa: SIM115 - the server writes to it until it stops
        self.proc = subprocess.Popen(
            [str(jaga), "serve", "--port", str(self.port), *args], env=full, stdout=output, stderr=subprocess.STDOUT
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            time.sleep(0.3)
        raise AssertionError(f"server did not become ready:\n{self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGINT) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
