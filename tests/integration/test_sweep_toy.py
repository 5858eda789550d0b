"""A swept training node on local Ray: ASHA stops weak trials, the best trial's outputs flow on."""

from __future__ import annotations

import json
import re

import pytest

pytestmark = pytest.mark.usefixtures("ray_local", "toy_registry")

RECIPE = """
name: sweep
seed: 2
components:
  src: {kind: toy_source, params: {path: w.txt}}
  fit:
    kind: toy_train
    inputs: {corpus: src.corpus}
    params: {steps: 8, checkpoint_every: 1, lr: 0.1}
    resources: {workers: 1}
    sweep:
      metric: loss
      mode: min
      num_samples: 1
      max_concurrent_trials: 2
      scheduler: {kind: asha, grace_period: 2, reduction_factor: 2, max_t: 8}
      search_space:
        lr: {grid: [0.001, 0.003, 0.2, 0.4]}
  use:
    kind: toy_map
    inputs: {corpus: src.corpus}
"""


def test_asha_sweep_picks_the_best_and_stops_some(orch, write_recipe, tmp_path):
    path = write_recipe(RECIPE, files={"w.txt": "a\nb\nc\nd\n"})
    code, out = orch("run", path)
    assert code == 0, out
    entry = next((tmp_path / "runs" / "cache" / "toy_train").iterdir())
    sweep = json.loads((entry / "sweep.json").read_text())
    trials = sweep["trials"]
    assert len(trials) == 4
    assert any(t["stopped_early"] for t in trials), trials
    finished = [t for t in trials if t["finished"]]
    assert sweep["best"]["metric"] == min(t["metric"] for t in finished)
    assert sweep["best"]["params"]["lr"] in (0.2, 0.4)
    # The node's output is the best trial's output.
    best_dir = entry / "trials" / sweep["best"]["trial"]
    assert (entry / "outputs" / "model" / "text_label.jsonl").read_text() == \
        (best_dir / "outputs" / "model" / "text_label.jsonl").read_text()
    assert (entry / "tensorboard" / "hparams").is_dir()
    code, out = orch("show", "sweep", "fit")
    assert "sweep/best_trial" in out and "stopped early" in out, out
    code, out = orch("tensorboard", "--dry-run")
    assert "fit/trial_" in out and "hparams" not in out.split("--logdir_spec")[0], out
