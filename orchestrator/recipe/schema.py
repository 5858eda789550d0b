"""Pydantic models of the recipe's own structure (the params of each node belong to its component)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]*$"


class Resources(BaseModel):
    """What one node asks of the cluster.

    Task components use ``cpus``/``gpus``; training components run ``workers`` processes, each with
    ``cpus_per_worker``/``gpus_per_worker``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpus: float = Field(1, ge=0, description="CPUs for a task component.")
    gpus: float = Field(0, ge=0, description="GPUs for a task component (fractions allowed).")
    workers: int = Field(1, ge=1, description="Training components: number of Ray Train workers (one process each; DDP).")
    cpus_per_worker: float = Field(1, ge=0, description="Training components: CPUs per worker.")
    gpus_per_worker: float = Field(0, ge=0, description="Training components: GPUs per worker (0 = CPU training).")
    memory_gb: float | None = Field(None, gt=0, description="Memory to reserve per task or worker, in GiB (a Ray scheduling hint).")
    max_failures: int = Field(2, ge=0, description="Training components: worker-group restarts from the last checkpoint before the node fails.")
    placement: Literal["pack", "spread"] = Field("pack", description="Training components: pack workers on few nodes, or spread them over nodes.")

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0 or self.gpus > 0


class NodeSpec(BaseModel):
    """One node of the graph: a component kind, its inputs, params and resources."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(description="Component kind (see `orch components`).")
    description: str = Field("", description="Free text shown by `orch plan`.")
    inputs: dict[str, str | list[str]] = Field(default_factory=dict,
                                               description="input name -> 'node.output' (or a list of them for many-valued inputs).")
    params: dict[str, Any] = Field(default_factory=dict, description="The component's parameters.")
    resources: Resources = Field(default_factory=Resources)
    sweep: dict[str, Any] | None = Field(None, description="A Ray Tune sweep over this node's params.")


class RecipeSpec(BaseModel):
    """The top level of a recipe file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Recipe name; runs are stored under <storage>/<name>/.")
    description: str = Field("", description="Free text.")
    seed: int = Field(0, ge=0, description="Seed given to every component (enters every cache key).")
    storage: str = Field("runs/", description="Run store root: a local path (relative to the working directory) or a URI.")
    components: dict[str, NodeSpec] = Field(description="The graph's nodes by name.")
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                                description="Named sets of overrides: dotted path -> value; chosen with --profile.")

    @model_validator(mode="after")
    def _check_names(self) -> "RecipeSpec":
        import re

        bad = [n for n in self.components if not re.match(NAME_PATTERN, n)]
        if bad:
            raise ValueError(f"node names must match {NAME_PATTERN}: {', '.join(bad)}")
        if not self.components:
            raise ValueError("a recipe needs at least one component")
        return self
