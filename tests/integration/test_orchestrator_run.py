"""The orchestrator end to end on a local Ray: caching, partial re-runs, failures, resume, CLI views."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("ray_local", "toy_registry")

RECIPE = """
name: toy
seed: 1
components:
  src:
    kind: toy_source
    params: {path: words.txt}
  up:
    kind: toy_map
    inputs: {corpus: src.corpus}
    params: {suffix: "!", marker_dir: MARKS}
  side:
    kind: toy_map
    inputs: {corpus: src.corpus}
    params: {suffix: "?", marker_dir: MARKS}
  fit:
    kind: toy_train
    inputs: {corpus: up.corpus}
    params: {steps: 4}
    resources: {workers: 2}
"""


@pytest.fixture
def recipe(write_recipe, tmp_path):
    marks = tmp_path / "marks"
    return write_recipe(RECIPE.replace("MARKS", str(marks)), files={"words.txt": "alpha\nbeta\ngamma\n"}), marks


def runs_of(marks: Path, node: str) -> int:
    return len(list(marks.glob(f"{node}-*"))) if marks.exists() else 0


def test_run_then_cached_then_partial_rerun(orch, recipe, tmp_path):
    path, marks = recipe
    code, out = orch("run", path)
    assert code == 0, out
    assert "ok in" in out
    entry = next((tmp_path / "runs" / "cache" / "toy_train").iterdir())
    assert json.loads((entry / "metrics.json").read_text())["world_size"] == 2
    assert (entry / "manifest.json").exists() and (entry / "outputs" / "model" / "text_label.jsonl").exists()
    assert runs_of(marks, "up") == 1 and runs_of(marks, "side") == 1

    # Second run: everything cached, nothing executed, Ray not needed.
    start = time.time()
    code, out = orch("run", path)
    assert code == 0, out
    assert "everything cached; Ray not started" in out
    assert time.time() - start < 3
    assert runs_of(marks, "up") == 1

    # Change one param: only that node and its descendants re-run, and plan says why.
    code, out = orch("plan", path, "--set", "components.up.params.suffix=!!")
    assert code == 0, out
    assert re.search(r"cached\s+src", out) and re.search(r"cached\s+side", out)
    assert re.search(r"to run\s+up .*params changed: suffix \"!\" -> \"!!\"", out), out
    assert re.search(r"to run\s+fit .*input changed \(up\)", out), out
    code, out = orch("run", path, "--set", "components.up.params.suffix=!!")
    assert code == 0, out
    assert runs_of(marks, "up") == 2 and runs_of(marks, "side") == 1
    assert len(list((tmp_path / "runs" / "cache" / "toy_train").iterdir())) == 2

    # The CLI views of the store.
    code, out = orch("ls")
    assert code == 0 and out.count("toy/") == 3, out
    code, out = orch("status")
    assert code == 0 and re.search(r"fit\s+toy_train\s+done", out), out
    code, out = orch("show", "toy", "fit")
    assert code == 0 and "output model (text_label)" in out and '"world_size": 2' in out, out
    code, out = orch("tensorboard", "--dry-run")
    assert code == 0 and "--logdir_spec" in out and "fit:" in out, out


def test_failure_skips_descendants_and_resumes(orch, recipe, tmp_path):
    path, marks = recipe
    code, out = orch("run", path, "--set", "components.up.params.fail=true")
    assert code == 1, out
    assert re.search(r"up\s+toy_map\s+failed", out), out
    assert re.search(r"fit\s+toy_train\s+skipped\s+upstream up did not finish", out), out
    assert re.search(r"side\s+toy_map\s+done", out), out  # the other branch finished
    assert "toy_map up was asked to fail" in out
    log = re.search(r"log: (\S+log\.txt)", out).group(1)
    assert "RuntimeError: toy_map up was asked to fail" in Path(log).read_text()
    assert "orch run" in out and "fail=true" in out  # the resume command repeats the overrides
    status = json.loads(next((tmp_path / "runs" / "toy").glob("*/status.json")).read_text())
    assert status["state"] == "failed" and status["nodes"]["fit"]["state"] == "skipped"

    code, out = orch("run", path)
    assert code == 0, out
    assert runs_of(marks, "side") == 1  # reused, not re-run
    assert re.search(r"side\s+toy_map\s+cached", out), out


def test_failed_training_rank_is_named_in_log_and_terminal(orch, recipe, tmp_path):
    """When one rank dies, its own error (not its peers' "connection closed") reaches the user."""
    path, _ = recipe
    code, out = orch("run", path, "--set", "components.fit.params.fail_rank=1",
                     "--set", "components.fit.resources.max_failures=0")
    assert code == 1, out
    assert "toy_train rank 1 was asked to fail" in out, out
    log = Path(re.search(r"log: (\S+toy_train\S+log\.txt)", out).group(1)).read_text()
    assert re.search(r"rank 1\] FAILED\n(.*\n)*ValueError: toy_train rank 1 was asked to fail", log), log


def test_half_written_entry_is_never_reused(orch, recipe, tmp_path):
    path, marks = recipe
    assert orch("run", path, "--only", "up")[0] == 0
    entry = next((tmp_path / "runs" / "cache" / "toy_map").iterdir())
    (entry / "manifest.json").unlink()  # as if the process died before finishing
    code, out = orch("plan", path)
    assert re.search(r"to run\s+up .*not in the cache", out), out
    assert re.search(r"skip|to run\s+side", out)
    code, out = orch("run", path, "--only", "up")
    assert code == 0 and runs_of(marks, "up") == 2, out
    assert re.search(r"side\s+toy_map\s+not selected", out), out


def test_independent_branches_run_in_parallel(orch, write_recipe, tmp_path):
    text = """
    name: par
    components:
      src: {kind: toy_source, params: {path: w.txt}}
      a: {kind: toy_map, inputs: {corpus: src.corpus}, params: {sleep_s: 4, suffix: a}}
      b: {kind: toy_map, inputs: {corpus: src.corpus}, params: {sleep_s: 4, suffix: b}}
      c: {kind: toy_map, inputs: {corpus: src.corpus}, params: {sleep_s: 4, suffix: c}}
    """
    path = write_recipe(text, files={"w.txt": "x\n"})
    code, out = orch("run", path)
    assert code == 0, out
    status = json.loads(next((tmp_path / "runs" / "par").glob("*/status.json")).read_text())["nodes"]
    starts = [status[n]["started"] for n in "abc"]
    ends = [status[n]["ended"] for n in "abc"]
    assert max(starts) < min(ends), "the three branches should overlap in time"
    assert max(ends) - min(starts) < 10


def test_force_reruns_node_and_descendants(orch, recipe, tmp_path):
    path, marks = recipe
    assert orch("run", path, "--only", "up")[0] == 0
    code, out = orch("plan", path, "--force", "src", "--only", "up")
    assert re.search(r"to run\s+src .*forced", out) and re.search(r"to run\s+up .*forced", out), out
    code, out = orch("run", path, "--force", "up", "--only", "up")
    assert code == 0 and runs_of(marks, "up") == 2, out


def test_unknown_node_in_only_is_an_error(orch, recipe):
    path, _ = recipe
    code, out = orch("run", path, "--only", "fitt")
    assert code == 2 and "no node named 'fitt'; did you mean 'fit'?" in out
