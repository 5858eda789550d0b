"""The plan of a run: cache keys in topological order, and for each node cached / to run / why."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .cache import KeyParts, explain_change, key_parts
from .recipe.validate import Recipe
from .store import Store


@dataclass
class PlannedNode:
    name: str
    kind: str
    key: str
    parts: KeyParts
    action: str  # "cached" | "run" | "skip" (not selected by --only)
    reason: str
    layer: int
    estimate: dict[str, Any] = field(default_factory=dict)
    fresh: bool = False  # --force: start from scratch (checkpoints dropped) instead of resuming

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "key": self.key, "action": self.action,
                "reason": self.reason, "layer": self.layer, "estimate": self.estimate}


@dataclass
class Plan:
    recipe: Recipe
    nodes: dict[str, PlannedNode]
    layers: list[list[str]]

    @property
    def to_run(self) -> list[str]:
        return [n for layer in self.layers for n in layer if self.nodes[n].action == "run"]

    def to_json(self) -> dict[str, Any]:
        return {"recipe": self.recipe.name, "layers": self.layers,
                "nodes": {n: p.to_json() for n, p in self.nodes.items()}}


def make_plan(recipe: Recipe, store: Store, force: list[str] | None = None, only: list[str] | None = None) -> Plan:
    graph = recipe.graph
    for name in (force or []) + (only or []):
        if name not in graph.nodes:
            from .recipe.errors import did_you_mean

            raise KeyError(f"no node named '{name}'{did_you_mean(name, graph.nodes)}")
    forced: set[str] = set()
    for name in force or []:
        forced |= {name} | graph.descendants(name)
    selected: set[str] | None = None
    if only:
        selected = set()
        for name in only:
            selected |= {name} | graph.ancestors(name)

    index = store.read_index(recipe.name)
    layers = graph.layers()
    planned: dict[str, PlannedNode] = {}
    for depth, layer in enumerate(layers):
        for name in layer:
            node = graph.nodes[name]
            input_keys = {inp: [f"{planned[r.node].key}:{r.output}" for r in refs] for inp, refs in node.inputs.items()}
            parts = key_parts(node, recipe.seed, input_keys, recipe.recipe_dir)
            key = parts.key
            upstream_changed = sorted({r.node for refs in node.inputs.values() for r in refs
                                       if planned[r.node].action == "run"
                                       or planned[r.node].reason.startswith(("new", "params", "input", "file", "version"))})
            if selected is not None and name not in selected:
                action, reason = "skip", "not selected by --only"
            elif name in forced:
                action, reason = "run", "forced (--force)"
            elif store.is_complete(node.kind, key):
                action, reason = "cached", "cached"
            else:
                old = index.get(name, {}).get("parts")
                action = "run"
                reason = explain_change(old, parts, [u for u in upstream_changed if planned[u].action == "run"])
                if old is not None and index.get(name, {}).get("key") == key:
                    reason = "not in the cache (removed, or the last attempt did not finish)"
            if action == "run" and selected is None:
                # A node downstream of a skipped one cannot run; only --only creates skips.
                pass
            estimate = {}
            if node.spec.estimate is not None:
                try:
                    estimate = _call_estimate(node.spec.estimate, node.params, node.resources, recipe.recipe_dir)
                except Exception as exc:  # an estimate must never break planning
                    estimate = {"error": str(exc)}
            planned[name] = PlannedNode(name, node.kind, key, parts, action, reason, depth, estimate,
                                        fresh=action == "run" and name in forced)
    return Plan(recipe, planned, layers)


def _call_estimate(fn, params, resources, recipe_dir) -> dict[str, Any]:
    """estimate(params, resources[, recipe_dir]): the third argument lets it read model folders relative to the recipe."""
    import inspect

    try:
        takes_dir = len(inspect.signature(fn).parameters) >= 3
    except (TypeError, ValueError):
        takes_dir = False
    return (fn(params, resources, recipe_dir) if takes_dir else fn(params, resources)) or {}
