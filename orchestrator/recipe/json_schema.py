"""JSON Schema of recipes: each node's params schema chosen by its `kind` (for editor completion)."""

from __future__ import annotations

from typing import Any


def recipe_json_schema() -> dict[str, Any]:
    from ..registry import load_registry
    from .schema import RecipeSpec, Resources
    from .search_space import SweepSpec

    registry = load_registry()
    schema = RecipeSpec.model_json_schema()
    defs = schema.setdefault("$defs", {})
    defs["Resources"] = Resources.model_json_schema()
    sweep = SweepSpec.model_json_schema()
    defs.update(sweep.pop("$defs", {}))
    defs["SweepSpec"] = sweep
    variants = []
    for kind, spec in sorted(registry.items()):
        params = spec.params.model_json_schema()
        defs.update(params.pop("$defs", {}))
        name = f"{spec.params.__name__}"
        defs[name] = params
        inputs = {n: ({"type": "array", "items": {"type": "string", "pattern": r"^[A-Za-z][\w-]*\.\w+$"}} if i.many
                      else {"type": "string", "pattern": r"^[A-Za-z][\w-]*\.\w+$"})
                  for n, i in spec.inputs.items()}
        for n, i in spec.inputs.items():
            inputs[n]["description"] = f"{' or '.join(i.kinds)} artifact(s): 'node.output'"
        variants.append({
            "type": "object",
            "description": spec.description.splitlines()[0] if spec.description else kind,
            "properties": {
                "kind": {"const": kind},
                "description": {"type": "string"},
                "inputs": {"type": "object", "properties": inputs, "additionalProperties": False,
                           "required": [n for n, i in spec.inputs.items() if not i.optional]},
                "params": {"$ref": f"#/$defs/{name}"},
                "resources": {"$ref": "#/$defs/Resources"},
                "sweep": {"$ref": "#/$defs/SweepSpec"},
            },
            "required": ["kind"],
            "additionalProperties": False,
        })
    schema["properties"]["components"] = {
        "type": "object", "description": "The graph's nodes by name.",
        "additionalProperties": {"oneOf": variants} if variants else {"type": "object"},
    }
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "orch recipe"
    return schema
