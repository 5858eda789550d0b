"""`orch` as a user runs it: a real process, a local Ray started and stopped for the run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

RECIPE = f"""
name: cli
seed: 5
components:
  prep:
    kind: data_prep
    params:
      source: {REPO / 'recipes' / 'data' / 'cmrc2018_sample.json'}
      format: squad
      split: {{by: passage, dev: 0.1, test: 0.3}}
"""


def orch(*args: str, cwd: Path) -> tuple[int, str, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr, time.time() - start


def test_cold_then_cached_run_in_a_fresh_process(tmp_path):
    recipe = tmp_path / "cli.yaml"
    recipe.write_text(RECIPE)
    code, out, _ = orch("run", str(recipe), cwd=tmp_path)
    assert code == 0, out
    assert "prep (data_prep): done" in out
    code, out, wall = orch("run", str(recipe), cwd=tmp_path)
    assert code == 0, out
    assert "everything cached; Ray not started" in out
    assert wall < 3.0, f"a fully cached run took {wall:.2f}s"
    # `--set storage=PATH` moves the run store.
    code, out, _ = orch("run", str(recipe), "--set", f"storage={tmp_path / 'elsewhere'}", cwd=tmp_path)
    assert code == 0, out
    assert (tmp_path / "elsewhere" / "cli").is_dir() and "1 to run" in out


def test_invalid_recipe_exits_2_and_runs_nothing(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(RECIPE.replace("format: squad", "format: squid").replace("dev: 0.1", "dev: 0.9"))
    code, out, _ = orch("run", str(recipe), cwd=tmp_path)
    assert code == 2, out
    assert "components.prep.params.format" in out and "nothing was run" in out
    assert not (tmp_path / "runs").exists()
