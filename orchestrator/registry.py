"""Where component kinds come from: the built-in ``components`` package and installed entry points.

Recipes name a ``kind``; the kind is looked up here and nowhere else. A recipe can never name an
import path: only code that is installed (built-ins, or a package that registers itself under the
``orch.components`` entry-point group) can run.
"""

from __future__ import annotations

import importlib

from .api import _REGISTRY, ComponentSpec

ENTRY_POINT_GROUP = "orch.components"


class RegistryError(Exception):
    pass


_loaded = False


def load_registry() -> dict[str, ComponentSpec]:
    """Import every component module once and return kind -> spec (the live registry)."""
    global _loaded
    if _loaded:
        return _REGISTRY
    _loaded = True
    from importlib.metadata import entry_points

    errors = []
    modules: list[str] = []
    try:
        import components  # the built-ins shipped with orch

        modules.extend(components.BUILTIN_MODULES)
    except ImportError:  # pragma: no cover - orch installed without its components package
        pass
    for module in modules:
        importlib.import_module(module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.value.split(":")[0] in modules:
            continue
        try:
            ep.load()
        except Exception as exc:  # a broken third-party package must not hide the built-ins
            errors.append(f"{ep.name} ({ep.value}): {exc}")
    if errors:
        import warnings

        warnings.warn("some orch component packages failed to load: " + "; ".join(errors), stacklevel=2)
    return _REGISTRY


def get_spec(kind: str) -> ComponentSpec:
    registry = load_registry()
    if kind not in registry:
        raise RegistryError(f"unknown component kind {kind!r}")
    return registry[kind]
