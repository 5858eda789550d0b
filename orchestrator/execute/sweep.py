"""A swept training node: a Ray Tune search whose trials are Ray Train jobs (Ray 2.60, Train V2).

Each trial is a function that builds and fits the node's TorchTrainer with ``TuneReportCallback``
(``Tuner(trainer)`` is not supported by Train V2). Trial drivers hold 0.01 CPU (their Ray
Train workers hold the real resources). Every trial writes into its own folder ``trials/<trial>/`` of the node's cache entry
(outputs, log, metrics, TensorBoard); the best completed trial's outputs are copied to the node's
``outputs/`` and flow downstream. An interrupted sweep is restored with ``Tuner.restore`` when the
node runs again.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..recipe.search_space import SweepSpec, set_dotted, to_tune_space
from ..store import write_json_atomic
from .job import NodeJob, append_failure, finish, localize, push_log
from .train import build_trainer, remote_storage

TUNE_RUN_NAME = "sweep"


def make_scheduler(sweep: SweepSpec):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler, PopulationBasedTraining

    s = sweep.scheduler
    if s.kind == "asha":
        return ASHAScheduler(time_attr="training_iteration", grace_period=s.grace_period,
                             reduction_factor=s.reduction_factor, max_t=s.max_t, brackets=s.brackets)
    if s.kind == "hyperband":
        return HyperBandScheduler(time_attr="training_iteration", max_t=s.max_t, reduction_factor=s.reduction_factor)
    if s.kind == "pbt":
        return PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=s.perturbation_interval,
                                       quantile_fraction=s.quantile_fraction,
                                       hyperparam_mutations={"params": to_tune_space(_mutable(sweep.search_space))})
    return FIFOScheduler()


def _mutable(space: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in space.items() if "grid" not in v}


def make_search_alg(sweep: SweepSpec, seed: int):
    if sweep.search_alg == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch
        except ImportError as exc:  # pragma: no cover - optional extra
            raise RuntimeError("search_alg: optuna needs `pip install optuna` (or orch[optuna])") from exc
        return OptunaSearch(seed=seed)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=seed)


def trial_params(base: dict[str, Any], sampled: dict[str, Any]) -> dict[str, Any]:
    params = dict(base)
    for dotted, value in sampled.items():
        params = set_dotted(params, dotted, value)
    return params


def run_sweep_job(job: NodeJob, sweep_json: dict[str, Any]) -> dict[str, Any]:
    """Body of the CPU-less Ray task that drives a swept training node."""
    import ray
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    os.environ.update(job.env)
    sweep = SweepSpec.model_validate(sweep_json)
    started = time.time()
    job, store = localize(job)
    job = replace(job, home_node=ray.get_runtime_context().get_node_id())
    if store.remote is not None:
        store.prepare_entry(job.kind, job.key, local_only=True)
    entry = Path(job.entry_dir)
    tune_root, fs = remote_storage(job, store, "work", "tune")  # on a remote store: the remote, with its filesystem
    ctx = job.context()

    def trial(config: dict[str, Any]) -> None:
        name = tune.get_context().get_trial_name()
        sampled = dict(config.get("params", {}))  # dotted names -> values
        tjob = replace(job, params=trial_params(job.params, sampled), entry_dir=str(entry / "trials" / name),
                       node=f"{job.node}/{name}")
        here, tstore = localize(tjob)
        Path(here.entry_dir).mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(here.entry_dir) / "trial.json", {"trial": name, "params": sampled})
        if tstore.remote is not None and here.entry_dir != tjob.entry_dir:  # another machine than the sweep's
            tstore.push(Path(here.entry_dir) / "trial.json")
        trainer = build_trainer(tjob, f"{tune_root}/train", name, callbacks=[TuneReportCallback()],
                                storage_filesystem=fs)
        trainer.fit()

    # Tune refuses an empty resource request; a hundredth of a CPU keeps trial drivers from holding
    # the CPUs their Ray Train workers need.
    trainable = tune.with_resources(trial, {"CPU": 0.01})
    path = f"{tune_root}/{TUNE_RUN_NAME}"
    resumed = tune.Tuner.can_restore(path, storage_filesystem=fs)
    if resumed:
        ctx.log("restoring the interrupted sweep")
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=fs)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"params": to_tune_space(sweep.search_space)},
            tune_config=tune.TuneConfig(
                metric=sweep.metric, mode=sweep.mode, num_samples=sweep.num_samples,
                max_concurrent_trials=sweep.max_concurrent_trials, scheduler=make_scheduler(sweep),
                search_alg=make_search_alg(sweep, job.seed), trial_name_creator=lambda t: f"trial_{t.trial_id}",
                trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
            ),
            run_config=tune.RunConfig(name=TUNE_RUN_NAME, storage_path=str(tune_root), storage_filesystem=fs,
                                      verbose=0),
        )
    ctx.log(f"sweep: {sweep.num_samples} sample(s), scheduler {sweep.scheduler.kind}, metric {sweep.metric} ({sweep.mode})")
    try:
        grid = tuner.fit()
        store.pull_missing(entry)  # trials that ran on other machines
        table = summarize(grid, sweep, entry)
        best = choose_best(table, sweep)
        if best is None:
            raise RuntimeError(f"no trial finished with outputs and a '{sweep.metric}' value; see trials/*/log.txt")
        _adopt(entry, entry / "trials" / best["trial"])
        write_hparams(entry, table, sweep)
        write_json_atomic(entry / "sweep.json", {"metric": sweep.metric, "mode": sweep.mode, "best": best, "trials": table})
        ctx.set_summary({"sweep/best_trial": best["trial"], "sweep/best_metric": best["metric"],
                         "sweep/best_params": best["params"], "sweep/trials": len(table),
                         "sweep/stopped_early": sum(1 for t in table if t["stopped_early"])})
        ctx.log(format_table(table, sweep))
        ctx.log(f"best: {best['trial']} {sweep.metric}={best['metric']:.4f} params {best['params']}")
    except BaseException as exc:
        append_failure(job, exc)
        push_log(job, store)
        raise
    return finish(job, started, {"resumed": resumed, "best_trial": best["trial"]})


def summarize(grid, sweep: SweepSpec, entry: Path) -> list[dict[str, Any]]:
    rows = []
    longest = max((r.metrics or {}).get("training_iteration", 0) for r in grid) if len(grid) else 0
    for r in grid:
        metrics = r.metrics or {}
        name = Path(r.path).name if r.path else metrics.get("trial_id", "?")
        trial_dir = entry / "trials" / name
        info = json.loads((trial_dir / "trial.json").read_text()) if (trial_dir / "trial.json").exists() else {}
        finished = (trial_dir / "outputs").is_dir() and any((trial_dir / "outputs").iterdir())
        value = metrics.get(sweep.metric)
        iters = int(metrics.get("training_iteration", 0))
        rows.append({
            "trial": name, "params": info.get("params", {}), "metric": None if value is None else float(value),
            "iterations": iters, "finished": finished,
            "stopped_early": (not finished) and r.error is None and iters < longest,
            "error": str(r.error).splitlines()[0] if r.error else None,
        })
    return sorted(rows, key=lambda t: t["trial"])


def choose_best(table: list[dict[str, Any]], sweep: SweepSpec) -> dict[str, Any] | None:
    done = [t for t in table if t["finished"] and t["metric"] is not None and not math.isnan(t["metric"])]
    if not done:
        return None
    return (max if sweep.mode == "max" else min)(done, key=lambda t: t["metric"])


def _adopt(entry: Path, trial_dir: Path) -> None:
    """The best trial's outputs and summary become the node's."""
    out = entry / "outputs"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(trial_dir / "outputs", out)
    src = trial_dir / "metrics.json"
    if src.exists():
        current = json.loads((entry / "metrics.json").read_text()) if (entry / "metrics.json").exists() else {}
        current.update(json.loads(src.read_text()))
        (entry / "metrics.json").write_text(json.dumps(current, indent=2, ensure_ascii=False))


def write_hparams(entry: Path, table: list[dict[str, Any]], sweep: SweepSpec) -> None:
    """TensorBoard's HParams dashboard: each trial's params against its final metric."""
    from torch.utils.tensorboard import SummaryWriter

    for t in table:
        if t["metric"] is None:
            continue
        hp = {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v)) for k, v in t["params"].items()}
        with SummaryWriter(log_dir=str(entry / "tensorboard" / "hparams" / t["trial"])) as w:
            w.add_hparams(hp, {f"hparam/{sweep.metric}": t["metric"], "hparam/iterations": t["iterations"]},
                          run_name=".")


def format_table(table: list[dict[str, Any]], sweep: SweepSpec) -> str:
    lines = [f"{'trial':<18} {sweep.metric:>14} {'iters':>5}  {'state':<14} params"]
    for t in table:
        state = "finished" if t["finished"] else ("stopped early" if t["stopped_early"] else ("error" if t["error"] else "-"))
        metric = "-" if t["metric"] is None else f"{t['metric']:.4f}"
        lines.append(f"{t['trial']:<18} {metric:>14} {t['iterations']:>5}  {state:<14} {json.dumps(t['params'], ensure_ascii=False)}")
    return "\n".join(lines)
