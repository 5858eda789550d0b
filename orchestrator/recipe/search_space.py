"""The `sweep:` block of a training node: validation, sampling checks, and conversion to Ray Tune.

Every sampled configuration must be valid params for the component: the space's extremes and
every choice/grid value are validated here, at file:line, before anything runs.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import did_you_mean

DISTRIBUTIONS = ("loguniform", "uniform", "quniform", "randint", "choice", "grid")


class Scheduler(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["fifo", "asha", "hyperband", "pbt"] = Field("fifo", description="Trial scheduler.")
    grace_period: int = Field(1, ge=1, description="asha: reports a trial always gets before it may be stopped.")
    reduction_factor: float = Field(2, gt=1, description="asha/hyperband: keep 1/reduction_factor of trials per rung.")
    max_t: int = Field(100, ge=1, description="asha/hyperband: the most reports a trial may make.")
    brackets: int = Field(1, ge=1, description="asha: number of brackets.")
    perturbation_interval: int = Field(2, ge=1, description="pbt: reports between exploit/explore steps.")
    quantile_fraction: float = Field(0.25, gt=0, lt=0.5, description="pbt: bottom fraction that copies the top.")


class SweepSpec(BaseModel):
    """A Ray Tune search over a training node's params; the best trial's outputs become the node's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(description="Reported metric to optimise, e.g. dev/ndcg@10.")
    mode: Literal["max", "min"] = Field("max", description="Maximise or minimise the metric.")
    num_samples: int = Field(4, ge=1, description="Trials to sample (each grid point is repeated num_samples times).")
    max_concurrent_trials: int | None = Field(None, ge=1, description="Trials running at once (default: as resources allow).")
    scheduler: Scheduler = Field(default_factory=Scheduler)
    search_alg: Literal["random", "grid", "optuna"] = Field("random", description="random (incl. grid axes) or optuna TPE (needs optuna).")
    search_space: dict[str, Any] = Field(description="param (dotted for nested) -> {loguniform: [a, b]} | {uniform: [a, b]} | "
                                                     "{randint: [a, b]} | {choice: [..]} | {grid: [..]}")

    @field_validator("search_space")
    @classmethod
    def _check_space(cls, space: dict[str, Any]) -> dict[str, Any]:
        if not space:
            raise ValueError("search_space needs at least one parameter")
        for name, dist in space.items():
            _check_distribution(name, dist)
        return space

    @model_validator(mode="after")
    def _check_pbt(self) -> "SweepSpec":
        if self.scheduler.kind == "pbt" and any(next(iter(d)) == "grid" for d in self.search_space.values()):
            raise ValueError("pbt mutates params during training; use choice/uniform, not grid")
        return self


def _check_distribution(name: str, dist: Any) -> None:
    if not isinstance(dist, dict) or len(dist) != 1:
        raise ValueError(f"'{name}': a distribution is one of {{{', '.join(DISTRIBUTIONS)}: [...]}}")
    (kind, args), = dist.items()
    if kind not in DISTRIBUTIONS:
        raise ValueError(f"'{name}': unknown distribution '{kind}'{did_you_mean(kind, DISTRIBUTIONS)}")
    if kind in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            raise ValueError(f"'{name}': {kind} takes a non-empty list of values")
        return
    if not isinstance(args, list) or len(args) not in (2, 3) or not all(isinstance(a, (int, float)) for a in args):
        raise ValueError(f"'{name}': {kind} takes [low, high]" + (" [, q]" if kind == "quniform" else ""))
    low, high = args[0], args[1]
    if not low < high:
        raise ValueError(f"'{name}': {kind} needs low < high, got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise ValueError(f"'{name}': loguniform needs low > 0, got {low}")
    if kind == "randint" and not (float(low).is_integer() and float(high).is_integer()):
        raise ValueError(f"'{name}': randint takes integer bounds")


def probe_values(dist: dict[str, Any]) -> list[Any]:
    """Values that together cover the space's edges: bounds for ranges, every value for lists."""
    (kind, args), = dist.items()
    if kind in ("choice", "grid"):
        return list(args)
    if kind == "randint":  # Tune's randint excludes the upper bound
        return [int(args[0]), int(args[1]) - 1]
    return [args[0], args[1], math.sqrt(args[0] * args[1]) if kind == "loguniform" else (args[0] + args[1]) / 2]


def set_dotted(params: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    out = dict(params)
    parts = dotted.split(".")
    node = out
    for part in parts[:-1]:
        node[part] = dict(node.get(part) or {})
        node = node[part]
    node[parts[-1]] = value
    return out


def validate_sweep(loaded, comp, node_spec, base: tuple, diags: list) -> SweepSpec | None:
    """Validate the sweep block, then every probe configuration against the component's params."""
    path = base + ("sweep",)
    if comp.runs_as != "train":
        diags.append(loaded.diagnostic(path, f"'{comp.kind}' is not a training component; only training nodes can be swept",
                                       prefer="key"))
        return None
    try:
        sweep = SweepSpec.model_validate(node_spec.sweep)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                from .fields import fields_at

                msg = f"unknown key '{loc[-1]}'{did_you_mean(str(loc[-1]), fields_at(SweepSpec, loc[:-1]) or set())}"
                diags.append(loaded.diagnostic(path + loc, msg, prefer="key"))
            else:
                diags.append(loaded.diagnostic(path + loc, msg))
        return None
    # Each parameter's probe values, one at a time, must make valid params.
    bad = False
    for name, dist in sweep.search_space.items():
        for value in probe_values(dist):
            trial = set_dotted(node_spec.params, name, value)
            try:
                comp.params.model_validate(trial)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                if first["type"] == "extra_forbidden":
                    msg = f"'{name}' is not a parameter of '{comp.kind}'{did_you_mean(name.split('.')[-1], comp.params.model_fields)}"
                else:
                    msg = f"value {value!r} for '{name}' gives invalid params: {where}: {first['msg']}"
                diags.append(loaded.diagnostic(path + ("search_space", name), msg, prefer="key"))
                bad = True
                break
    # Grid axes combine: check the full grid when it is small.
    grid_axes = {n: d["grid"] for n, d in sweep.search_space.items() if "grid" in d}
    if not bad and grid_axes and math.prod(len(v) for v in grid_axes.values()) <= 256:
        for combo in itertools.product(*grid_axes.values()):
            trial = dict(node_spec.params)
            for n, v in zip(grid_axes, combo):
                trial = set_dotted(trial, n, v)
            try:
                comp.params.model_validate(trial)
            except ValidationError as exc:
                diags.append(loaded.diagnostic(path + ("search_space",),
                                               f"grid point {dict(zip(grid_axes, combo))} gives invalid params: {exc.errors()[0]['msg']}",
                                               prefer="key"))
                bad = True
                break
    return None if bad else sweep


def to_tune_space(space: dict[str, Any]) -> dict[str, Any]:
    """{param: {loguniform: [a, b]}} -> {param: tune.loguniform(a, b)} (imports Ray Tune)."""
    from ray import tune

    out: dict[str, Any] = {}
    for name, dist in space.items():
        (kind, args), = dist.items()
        if kind == "loguniform":
            out[name] = tune.loguniform(args[0], args[1])
        elif kind == "uniform":
            out[name] = tune.uniform(args[0], args[1])
        elif kind == "quniform":
            out[name] = tune.quniform(args[0], args[1], args[2] if len(args) > 2 else 1)
        elif kind == "randint":
            out[name] = tune.randint(int(args[0]), int(args[1]))
        elif kind == "choice":
            out[name] = tune.choice(args)
        elif kind == "grid":
            out[name] = tune.grid_search(args)
    return out


