"""Shared fixtures: toy components, recipe writing, one local Ray per test session."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def toy_registry():
    """The built-in registry plus the test-only toy components."""
    import tests.toy_components  # noqa: F401  (registers toy_* kinds)
    from orchestrator.registry import load_registry

    return load_registry()


@pytest.fixture
def write_recipe(tmp_path):
    """Write a recipe (dedented) into tmp_path, plus optional data files; return its path."""

    def write(text: str, name: str = "recipe.yaml", files: dict[str, str] | None = None) -> Path:
        for rel, content in (files or {}).items():
            p = tmp_path / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(content, encoding="utf-8")
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session (the scheduler reuses an initialised Ray)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False,
                 configure_logging=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                                           "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
                                           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
    yield ray
    ray.shutdown()


@pytest.fixture
def orch(monkeypatch, tmp_path):
    """Run the `orch` CLI in-process: returns (exit_code, output)."""
    from typer.testing import CliRunner

    from orchestrator.cli import app

    runner = CliRunner()

    def call(*args: str, cwd: Path | None = None):
        monkeypatch.chdir(cwd or tmp_path)
        result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        return result.exit_code, result.output

    return call
