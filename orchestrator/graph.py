"""The graph of a validated recipe: nodes, edges from ``inputs``, layers, ancestors, cycles."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from .api import ComponentSpec
from .recipe.schema import Resources


@dataclass(frozen=True)
class Ref:
    """``node.output`` as written in a recipe's inputs."""

    node: str
    output: str

    def __str__(self) -> str:
        return f"{self.node}.{self.output}"


@dataclass
class Node:
    name: str
    kind: str
    spec: ComponentSpec
    params: BaseModel
    inputs: dict[str, list[Ref]]
    resources: Resources
    description: str = ""
    sweep: Any = None  # a validated sweep spec, or None

    @property
    def upstream(self) -> set[str]:
        return {ref.node for refs in self.inputs.values() for ref in refs}

    @property
    def is_training(self) -> bool:
        return self.spec.runs_as == "train"


@dataclass
class Graph:
    nodes: dict[str, Node] = field(default_factory=dict)

    def downstream(self, name: str) -> set[str]:
        return {n.name for n in self.nodes.values() if name in n.upstream}

    def descendants(self, name: str) -> set[str]:
        out: set[str] = set()
        stack = [name]
        while stack:
            for child in self.downstream(stack.pop()):
                if child not in out:
                    out.add(child)
                    stack.append(child)
        return out

    def ancestors(self, name: str) -> set[str]:
        out: set[str] = set()
        stack = [name]
        while stack:
            for parent in self.nodes[stack.pop()].upstream:
                if parent not in out and parent in self.nodes:
                    out.add(parent)
                    stack.append(parent)
        return out

    def layers(self) -> list[list[str]]:
        """Topological layers: every node's inputs are in earlier layers. Assumes no cycle."""
        remaining = dict(self.nodes)
        done: set[str] = set()
        layers: list[list[str]] = []
        while remaining:
            layer = sorted(n for n, node in remaining.items() if node.upstream <= done)
            if not layer:  # pragma: no cover - validation rejects cycles first
                raise ValueError(f"cycle among {sorted(remaining)}")
            layers.append(layer)
            done.update(layer)
            for n in layer:
                del remaining[n]
        return layers

    def order(self) -> list[str]:
        return [n for layer in self.layers() for n in layer]


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary loop found by DFS, each as [a, b, ..., a] (node -> its upstream nodes)."""
    cycles: list[list[str]] = []
    seen_sets: set[frozenset[str]] = set()
    state: dict[str, int] = {}  # 0/absent = new, 1 = on stack, 2 = done
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                loop = stack[stack.index(m):]
                key = frozenset(loop)
                if key not in seen_sets:
                    seen_sets.add(key)
                    # Print in data-flow direction: producer -> consumer.
                    flow = list(reversed(loop))
                    cycles.append(flow + [flow[0]])
            elif state.get(m) is None and m in edges:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(edges):
        if state.get(n) is None:
            visit(n)
    return cycles
