"""A real 2-node local Ray cluster (cluster/local_cluster.sh): spread training, and the three faults.

orch runs as a separate process here (as a user runs it against a cluster); the toy components
are importable on every node because the cluster is started with the repo on PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "cluster" / "local_cluster.sh"

RECIPE = """
name: faults
seed: 4
components:
  src: {kind: toy_source, params: {path: w.txt}}
  up: {kind: toy_map, inputs: {corpus: src.corpus}}
  fit:
    kind: toy_train
    inputs: {corpus: up.corpus}
    params: {steps: STEPS, step_sleep_s: 0.5, checkpoint_every: 2, marker_dir: MARKS}
    resources: {workers: 2, cpus_per_worker: 1, placement: spread, max_failures: 3}
"""


STEPS = 24  # 12 s of training at 0.5 s a step: the faults land well before the end


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("cluster")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "ORCH_CLUSTER_STATE": str(state), "ORCH_CLUSTER_PORT": str(port),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
    # Hold the dashboard's default port the way another Ray on the host would: the script must pick another.
    blocker = socket.socket()
    try:
        blocker.bind(("127.0.0.1", 8265))
        blocker.listen()
    except OSError:
        pass  # already taken by something else: the same situation
    proc = subprocess.run(["bash", str(SCRIPT), "start", "--workers", "1", "--cpus", "2", "--memory-gb", "4"],
                          env=env, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)
        blocker.close()
        pytest.fail(f"local cluster did not start (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    blocker.close()
    dashboard = (state / "dashboard").read_text().strip()
    assert dashboard != "http://127.0.0.1:8265" and dashboard in proc.stdout, proc.stdout
    try:
        yield {"address": f"127.0.0.1:{port}", "env": env, "dashboard": dashboard}
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)


def orch_cmd(*args: str) -> list[str]:
    code = "import tests.toy_components; from orchestrator.cli import app; app()"
    return [sys.executable, "-c", code, *args]


def run_orch(cluster, cwd: Path, *args: str, timeout: int = 300) -> tuple[int, str, float]:
    start = time.time()
    proc = subprocess.run(orch_cmd("run", *args, "--address", cluster["address"]), cwd=cwd, env=cluster["env"],
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr, time.time() - start


def write(tmp_path: Path, steps: int) -> tuple[Path, Path]:
    marks = tmp_path / "marks"
    (tmp_path / "w.txt").write_text("a\nb\nc\n")
    path = tmp_path / "faults.yaml"
    path.write_text(RECIPE.replace("STEPS", str(steps)).replace("MARKS", str(marks)))
    return path, marks


def train_entry(tmp_path: Path) -> Path | None:
    root = tmp_path / "runs" / "cache" / "toy_train"
    entries = list(root.iterdir()) if root.exists() else []
    return entries[0] if entries else None


def wait_for_checkpoint(tmp_path: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        entry = train_entry(tmp_path)
        # A checkpoint counts once Ray Train's controller has recorded it in its snapshot (what a restore reads).
        if entry is not None and list((entry / "work" / "ray").glob("*/checkpoint_manager_snapshot.json")):
            return
        time.sleep(0.3)
    raise AssertionError("no checkpoint appeared")


def starts(marks: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in marks.glob("start-*"))


def summary(tmp_path: Path) -> dict:
    return json.loads((train_entry(tmp_path) / "metrics.json").read_text())


def test_two_worker_training_spreads_over_both_nodes(cluster, tmp_path):
    path, marks = write(tmp_path, steps=STEPS)
    code, out, wall = run_orch(cluster, tmp_path, str(path))
    assert code == 0, out
    nodes = {p.name.split("-", 2)[2] for p in marks.glob("node-rank*")}
    assert len(nodes) == 2, f"workers ran on {nodes}"
    assert summary(tmp_path)["world_size"] == 2
    # The first job on a fresh cluster pays for starting worker processes; the faults below run on a warm
    # cluster, so the baseline they are compared with is a second, uncached run (another seed).
    code, out, warm = run_orch(cluster, tmp_path, str(path), "--set", "seed=5")
    assert code == 0 and "fit (toy_train): done" in out, out
    print(f"\nundisturbed 2-node run: {wall:.1f}s cold cluster, {warm:.1f}s warm")


def test_killed_training_worker_resumes_from_checkpoint(cluster, tmp_path):
    path, marks = write(tmp_path, steps=STEPS)
    proc = subprocess.Popen(orch_cmd("run", str(path), "--address", cluster["address"]), cwd=tmp_path,
                            env=cluster["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    start = time.time()
    wait_for_checkpoint(tmp_path)
    # The rank-0 worker of THIS run wrote its pid into its start marker (other Ray jobs may share the host).
    pids = [int(p.name.split("-")[-1]) for p in marks.glob("start-*")]
    assert pids, "no Ray Train worker process found"
    os.kill(pids[0], signal.SIGKILL)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    s = starts(marks)
    assert s[0] == 0 and max(s) > 0, f"expected a restart from a checkpoint, got starts {s}"
    assert summary(tmp_path)["resumed_from"] > 0
    print(f"\nworker killed: {time.time() - start:.1f}s, restarted from step {max(s)}")


def test_killed_driver_then_rerun_resumes(cluster, tmp_path):
    path, marks = write(tmp_path, steps=STEPS)
    proc = subprocess.Popen(orch_cmd("run", str(path), "--address", cluster["address"]), cwd=tmp_path,
                            env=cluster["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    start = time.time()
    wait_for_checkpoint(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (train_entry(tmp_path) / "manifest.json").exists()
    time.sleep(3)  # Ray cleans up the dead driver's tasks and actors
    code, out, _ = run_orch(cluster, tmp_path, str(path))
    assert code == 0, out
    assert "src (toy_source): cached" in out and "up (toy_map): cached" in out, out
    assert summary(tmp_path)["resumed_from"] > 0, summary(tmp_path)
    print(f"\ndriver killed + rerun: {time.time() - start:.1f}s")


def test_ray_job_submit_runs_the_recipe_on_the_cluster(cluster, tmp_path):
    """`ray job submit -- orch run ...`: the driver itself runs inside the cluster, as a Ray Job."""
    path, marks = write(tmp_path, steps=4)
    python, flag, code = orch_cmd()
    entry = f'{python} {flag} "{code}" run {path}'
    env = {**cluster["env"], "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(["ray", "job", "submit", "--address", cluster["dashboard"], "--",
                           "bash", "-c", f"cd {tmp_path} && {entry}"],
                          env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "succeeded" in out, out
    assert "fit (toy_train)" in out, out  # the orch run output streamed back through the job's logs
    assert summary(tmp_path)["world_size"] == 2
    # The job's driver connected to this cluster rather than starting a Ray of its own.
    assert len({p.name.split("-", 2)[2] for p in marks.glob("node-rank*")}) == 2


def test_stopped_worker_node_then_run_finishes(cluster, tmp_path):
    path, marks = write(tmp_path, steps=STEPS)
    proc = subprocess.Popen(orch_cmd("run", str(path), "--address", cluster["address"]), cwd=tmp_path,
                            env=cluster["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    start = time.time()
    wait_for_checkpoint(tmp_path)
    subprocess.run(["bash", str(SCRIPT), "stop-node", "1"], env=cluster["env"], check=True, capture_output=True)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert summary(tmp_path)["resumed_from"] > 0
    print(f"\nworker node stopped: {time.time() - start:.1f}s")
