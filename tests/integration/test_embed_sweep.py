"""A 4-trial ASHA sweep on the real embedder (recipes/embed_sweep.yaml): weak trials stop early, the best
trial is the one with the best reported metric, and the evaluation downstream used that trial's model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("ray_local")

REPO = Path(__file__).resolve().parents[2]


def test_asha_sweep_on_the_embedder(orch, tmp_path):
    started = time.time()
    code, out = orch("run", REPO / "recipes" / "embed_sweep.yaml", "--storage", tmp_path / "runs")
    assert code == 0, out
    wall = time.time() - started
    entry = next((tmp_path / "runs" / "cache" / "embed_finetune").iterdir())
    sweep = json.loads((entry / "sweep.json").read_text())
    trials = sweep["trials"]
    assert len(trials) == 4
    stopped = [t for t in trials if t["stopped_early"]]
    assert stopped, trials
    reported = [t for t in trials if t["metric"] is not None]
    assert sweep["best"]["metric"] == max(t["metric"] for t in reported if t["finished"])
    print(f"\nsweep wall {wall:.0f}s; trials: " + "; ".join(
        f"lr={t['params']['lr']:g} ndcg@10={t['metric']:.3f} iters={t['iterations']}"
        f"{' stopped' if t['stopped_early'] else ''}" for t in trials))
    # The node's model is the best trial's model, and the evaluation read exactly that folder's model.
    best_model = entry / "trials" / sweep["best"]["trial"] / "outputs" / "model" / "model.safetensors"
    assert (entry / "outputs" / "model" / "model.safetensors").read_bytes() == best_model.read_bytes()
    ev = next((tmp_path / "runs" / "cache" / "evaluate").iterdir())
    report = json.loads((ev / "outputs" / "report" / "report.json").read_text())
    tuned = next(r for r in report["retrieval"] if r["system"] == "embedder")
    base = next(r for r in report["retrieval"] if r["system"] == "minilm (base)")
    assert tuned["ndcg@10"] > base["ndcg@10"]
    assert "stopped early" in out  # the sweep table in the run summary
