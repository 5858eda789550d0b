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


def start_local_ray():
    """Start the tests' local Ray (its workers inherit this process's environment as it is now)."""
    import ray

    ray.init(num_cpus=4, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False,
             configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                                       "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
                                       "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
    return ray


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session (the scheduler reuses an initialised Ray)."""
    import ray

    if not ray.is_initialized():
        start_local_ray()
    yield ray
    ray.shutdown()


# Dummy credentials for the local S3 API; the secret is distinctive so tests can look for leaks.
S3_ENV = {"AWS_ACCESS_KEY_ID": "orch-test-access-key-id", "AWS_SECRET_ACCESS_KEY": "orch-s3-secret-5d1c9e7fa2",
          "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="session")
def s3_server():
    """A local S3 API (moto's server, in a thread of this process): yields "127.0.0.1:PORT"."""
    import logging

    server_mod = pytest.importorskip("moto.server", reason="needs moto[server] (the test extra)")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"{host}:{port}"
    server.stop()


class S3Bucket:
    """A fresh bucket on the local S3 API."""

    def __init__(self, endpoint: str, name: str):
        from pyarrow import fs

        self.endpoint, self.name = endpoint, name
        self.fs = fs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True)
        self.fs.create_dir(name)

    def uri(self, prefix: str = "") -> str:
        return f"s3://{self.name}/{prefix}?endpoint_override={self.endpoint}&scheme=http"

    def files(self, prefix: str = "") -> dict[str, bytes]:
        """Every object under prefix: key (without the bucket) -> content."""
        from pyarrow import fs

        root = f"{self.name}/{prefix}".rstrip("/")
        infos = self.fs.get_file_info(fs.FileSelector(root, recursive=True, allow_not_found=True))
        out = {}
        for info in infos:
            if info.type == fs.FileType.File:
                with self.fs.open_input_stream(info.path) as fh:
                    out[info.path.split("/", 1)[1]] = fh.read()
        return out


@pytest.fixture
def s3_bucket(s3_server, monkeypatch):
    """A fresh bucket, with dummy AWS credentials in this process's environment."""
    import secrets

    for k, v in S3_ENV.items():
        monkeypatch.setenv(k, v)
    return S3Bucket(s3_server, f"orch-{secrets.token_hex(4)}")


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
