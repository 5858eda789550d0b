"""Every recipe shipped in recipes/ validates and plans, with every profile; validate/plan stay light."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.plan import make_plan
from orchestrator.recipe.validate import load_and_validate
from orchestrator.store import Store

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def _profiles(path: Path) -> list[str | None]:
    from orchestrator.recipe.loader import load_recipe

    return [None, *sorted(load_recipe(path).data.get("profiles") or {})]


CASES = [(p, prof) for p in RECIPES for prof in _profiles(p)]


def test_there_are_recipes():
    assert any(p.name == "rag_full.yaml" for p in RECIPES)


@pytest.mark.parametrize("path,profile", CASES, ids=[f"{p.stem}:{prof or 'default'}" for p, prof in CASES])
def test_recipe_validates_and_plans(path, profile, tmp_path):
    recipe = load_and_validate(path, profile)
    plan = make_plan(recipe, Store(tmp_path / "runs"))
    assert set(plan.nodes) == set(recipe.graph.nodes)
    assert all(p.action == "run" and p.reason == "new" for p in plan.nodes.values())


def test_validate_and_plan_import_no_ml_and_are_fast(tmp_path):
    code = (
        "import sys, time; t = time.time();"
        "from orchestrator.cli import app;"
        "from orchestrator.recipe.validate import load_and_validate;"
        "from orchestrator.plan import make_plan; from orchestrator.store import Store;"
        f"r = load_and_validate({str(REPO / 'recipes' / 'rag_full.yaml')!r});"
        f"make_plan(r, Store.at({str(tmp_path)!r}));"
        "heavy = [m for m in ('torch', 'ray', 'transformers', 'sentence_transformers', 'faiss', 'pyarrow') if m in sys.modules];"
        "print('HEAVY', heavy); print('TOOK', time.time() - t)"
    )
    start = time.time()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    wall = time.time() - start
    assert "HEAVY []" in out, out
    assert wall < 3.0, f"validate+plan took {wall:.2f}s including interpreter start"


def test_readme_component_reference_is_current():
    from orchestrator.reference import BEGIN, END, render_reference
    from orchestrator.registry import load_registry

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    current = readme[readme.index(BEGIN): readme.index(END) + len(END)]
    assert current == render_reference(load_registry()), "run `orch reference --write README.md`"
