"""Validate a loaded recipe into a graph, collecting every problem before reporting any."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..api import LOCAL_FILE, ComponentSpec
from ..graph import Graph, Node, Ref, find_cycles
from .errors import Diagnostic, RecipeError, did_you_mean
from .fields import fields_at, iter_marked
from .loader import LoadedRecipe, load_recipe
from .schema import RecipeSpec, Resources


@dataclass
class Recipe:
    """A validated recipe: its graph plus where it came from."""

    loaded: LoadedRecipe
    spec: RecipeSpec
    graph: Graph

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def seed(self) -> int:
        return self.spec.seed

    @property
    def recipe_dir(self) -> Path:
        return self.loaded.path.parent

    def resolve_local(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.recipe_dir / p).resolve()


def load_and_validate(file: str | Path, profile: str | None = None, overrides: list[str] | None = None,
                      registry: dict[str, ComponentSpec] | None = None) -> Recipe:
    loaded = load_recipe(file, profile, overrides)
    return validate(loaded, registry)


def validate(loaded: LoadedRecipe, registry: dict[str, ComponentSpec] | None = None) -> Recipe:
    if registry is None:
        from ..registry import load_registry

        registry = load_registry()
    diags: list[Diagnostic] = []

    spec = _validate_top(loaded, diags)
    if spec is None:
        raise RecipeError(diags)

    graph = Graph()
    for name, node_spec in spec.components.items():
        base = ("components", name)
        comp = registry.get(node_spec.kind)
        if comp is None:
            diags.append(loaded.diagnostic(base + ("kind",),
                                           f"unknown component kind '{node_spec.kind}'{did_you_mean(node_spec.kind, registry)}"))
            continue
        params = _validate_params(loaded, comp, node_spec.params, base + ("params",), diags)
        _check_resources(loaded, comp, node_spec.resources, base + ("resources",), diags)
        sweep = None
        if node_spec.sweep is not None:
            sweep = _validate_sweep(loaded, comp, node_spec, base, diags)
        if params is None:
            continue
        _check_local_files(loaded, params, base + ("params",), diags)
        graph.nodes[name] = Node(name=name, kind=node_spec.kind, spec=comp, params=params, inputs={},
                                 resources=node_spec.resources, description=node_spec.description, sweep=sweep)

    # Inputs are checked once every node's kind is known, so references can be checked both ways.
    for name, node_spec in spec.components.items():
        comp = registry.get(node_spec.kind)
        if comp is None:
            continue
        inputs = _validate_inputs(loaded, spec, registry, name, comp, node_spec.inputs, diags)
        if name in graph.nodes:
            graph.nodes[name].inputs = inputs

    edges = {name: {r.node for refs in n.inputs.values() for r in refs if r.node in spec.components}
             for name, n in graph.nodes.items()}
    for loop in find_cycles(edges):
        first = loop[0]
        diags.append(loaded.diagnostic(("components", first, "inputs"),
                                       f"cycle in the graph: {' -> '.join(loop)}; a node cannot consume its own descendants",
                                       prefer="key"))
    if diags:
        raise RecipeError(diags)
    return Recipe(loaded=loaded, spec=spec, graph=graph)


def _validate_top(loaded: LoadedRecipe, diags: list[Diagnostic]) -> RecipeSpec | None:
    try:
        return RecipeSpec.model_validate(loaded.data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            diags.append(_pydantic_diag(loaded, RecipeSpec, (), loc, err))
        return None


def _pydantic_diag(loaded: LoadedRecipe, model: type[BaseModel], base: tuple, loc: tuple, err: dict) -> Diagnostic:
    path = base + loc
    message = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if err["type"] == "extra_forbidden":
        known = fields_at(model, loc[:-1]) or set()
        message = f"unknown key '{loc[-1]}'{did_you_mean(str(loc[-1]), known)}"
        return loaded.diagnostic(path, message, prefer="key")
    if err["type"] == "missing":
        return loaded.diagnostic(path, f"missing required key '{loc[-1]}'", prefer="key")
    if err["type"] in ("literal_error", "enum") and "expected" in err.get("ctx", {}):
        message = f"{message} (got {err.get('input')!r})"
    return loaded.diagnostic(path, message)


def _validate_params(loaded: LoadedRecipe, comp: ComponentSpec, raw: dict[str, Any], base: tuple,
                     diags: list[Diagnostic]) -> BaseModel | None:
    try:
        return comp.params.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(p for p in err["loc"])
            # Drop pydantic's union-branch tags (e.g. 'literal[...]', 'list[str]') from the location.
            loc = tuple(p for p in loc if isinstance(p, int) or "[" not in str(p))
            diags.append(_pydantic_diag(loaded, comp.params, base, loc, err))
        return None


def _check_resources(loaded: LoadedRecipe, comp: ComponentSpec, res: Resources, base: tuple,
                     diags: list[Diagnostic]) -> None:
    given = set(res.model_fields_set)
    if comp.runs_as == "task":
        wrong = given & {"workers", "cpus_per_worker", "gpus_per_worker", "max_failures", "placement"}
        for key in sorted(wrong):
            diags.append(loaded.diagnostic(base + (key,),
                                           f"'{key}' applies to training components; '{comp.kind}' runs as one task: use cpus/gpus",
                                           prefer="key"))
    else:
        wrong = given & {"cpus", "gpus"}
        for key in sorted(wrong):
            diags.append(loaded.diagnostic(base + (key,),
                                           f"'{comp.kind}' is a training component: use workers, cpus_per_worker, gpus_per_worker",
                                           prefer="key"))


def _check_local_files(loaded: LoadedRecipe, params: BaseModel, base: tuple, diags: list[Diagnostic]) -> None:
    for loc, value in iter_marked(params, LOCAL_FILE):
        p = Path(str(value)).expanduser()
        full = p if p.is_absolute() else (loaded.path.parent / p)
        if not full.exists():
            diags.append(loaded.diagnostic(base + loc,
                                           f"data file not found: {full} (paths are relative to the recipe's folder {loaded.path.parent})"))


def _validate_inputs(loaded: LoadedRecipe, spec: RecipeSpec, registry: dict[str, ComponentSpec], name: str,
                     comp: ComponentSpec, raw: dict[str, Any], diags: list[Diagnostic]) -> dict[str, list[Ref]]:
    base = ("components", name, "inputs")
    out: dict[str, list[Ref]] = {}
    for input_name, value in raw.items():
        path = base + (input_name,)
        decl = comp.inputs.get(input_name)
        if decl is None:
            diags.append(loaded.diagnostic(path, f"'{comp.kind}' has no input '{input_name}'{did_you_mean(input_name, comp.inputs)}",
                                           prefer="key"))
            continue
        values = value if isinstance(value, list) else [value]
        if isinstance(value, list) and not decl.many:
            diags.append(loaded.diagnostic(path, f"input '{input_name}' takes one reference, not a list"))
            continue
        refs: list[Ref] = []
        for i, text in enumerate(values):
            here = path + (i,) if isinstance(value, list) else path
            ref = _check_ref(loaded, spec, registry, name, text, decl, input_name, here, diags)
            if ref is not None:
                refs.append(ref)
        out[input_name] = refs
    for input_name, decl in comp.inputs.items():
        if not decl.optional and input_name not in raw:
            diags.append(loaded.diagnostic(base if "inputs" in spec.components[name].model_fields_set else ("components", name),
                                           f"missing required input '{input_name}' ({' or '.join(decl.kinds)})",
                                           prefer="key"))
    return out


def _check_ref(loaded, spec, registry, name, text, decl, input_name, path, diags) -> Ref | None:
    if not isinstance(text, str) or text.count(".") != 1:
        diags.append(loaded.diagnostic(path, f"expected 'node.output', got {text!r}"))
        return None
    node, output = text.split(".")
    if node not in spec.components:
        diags.append(loaded.diagnostic(path, f"no node named '{node}'{did_you_mean(node, spec.components)}"))
        return None
    if node == name:
        diags.append(loaded.diagnostic(path, f"cycle in the graph: {name} -> {name}; a node cannot consume its own output"))
        return None
    producer = registry.get(spec.components[node].kind)
    if producer is None:
        return None  # its unknown kind is reported on its own line
    if output not in producer.outputs:
        diags.append(loaded.diagnostic(path, f"node '{node}' has no output '{output}'{did_you_mean(output, producer.outputs)}"))
        return None
    produced = producer.outputs[output]
    if produced not in decl.kinds:
        diags.append(loaded.diagnostic(
            path, f"'{node}.{output}' is a {produced} artifact but input '{input_name}' of '{spec.components[name].kind}' "
                  f"takes {' or '.join(decl.kinds)}"))
        return None
    return Ref(node, output)


def _validate_sweep(loaded: LoadedRecipe, comp: ComponentSpec, node_spec, base: tuple, diags: list[Diagnostic]):
    from .search_space import validate_sweep

    return validate_sweep(loaded, comp, node_spec, base, diags)
