"""Fault injection shared by the integration tests: SIGKILL a Ray Train worker once a checkpoint exists."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path


def start_worker_killer(cache: Path, *, rank: int = 1, world: int = 2, timeout: float = 300,
                        poll: float = 0.3) -> tuple[threading.Thread, dict]:
    """Watch ``cache`` (``runs/cache/<kind>``) and SIGKILL worker ``rank`` of the first entry's Ray Train
    job as soon as Ray Train has recorded a checkpoint (what a restore reads). The pid comes from the
    worker's own "worker r/w pid N" log line. Returns the thread and a dict that gets ``pid`` and ``at``."""
    killed: dict = {}

    def killer() -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            entries = list(cache.iterdir()) if cache.exists() else []
            log = entries[0] / "log.txt" if entries else None
            ckpts = list((entries[0] / "work" / "ray").glob("*/checkpoint_manager_snapshot.json")) if entries else []
            if log and log.exists() and ckpts:
                pids = re.findall(rf"worker {rank}/{world} pid (\d+)", log.read_text())
                if pids:
                    os.kill(int(pids[-1]), signal.SIGKILL)
                    killed["pid"], killed["at"] = int(pids[-1]), time.time()
                    return
            time.sleep(poll)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    return thread, killed


def run_with_a_killed_worker(orch, recipe: Path, cache: Path, **killer) -> tuple[str, Path, str, dict, float]:
    """`orch run recipe` while ``start_worker_killer`` watches ``cache``; asserts the run still succeeded and a
    worker was killed. Returns (output, the entry folder, its log, the kill record, the start time)."""
    thread, killed = start_worker_killer(cache, **killer)
    started = time.time()
    code, out = orch("run", recipe)
    thread.join(timeout=5)
    assert code == 0, out
    assert killed, "the test never found a checkpoint and a worker to kill"
    entry = next(cache.iterdir())
    return out, entry, (entry / "log.txt").read_text(), killed, started
