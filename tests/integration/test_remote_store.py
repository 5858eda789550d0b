"""A run store on a bucket (a local S3 API, moto) and secrets in the environment, end to end on Ray.

Ray is (re)started for this module with the secrets in its environment, as on a cluster whose nodes
hold credentials: whatever the driver, a task or a Ray Train worker writes, no secret may be in it.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import S3_ENV, S3Bucket, start_local_ray

SECRETS = {"HF_TOKEN": "hf_orchTestToken8b41e07c", "WANDB_API_KEY": "orch-wandb-key-3e5a91",
           "AWS_SECRET_ACCESS_KEY": S3_ENV["AWS_SECRET_ACCESS_KEY"]}

RECIPE = """
name: toy
seed: 1
components:
  src:
    kind: toy_source
    params: {path: words.txt}
  up:
    kind: toy_map
    inputs: {corpus: src.corpus}
    params: {suffix: "!"}
  fit:
    kind: toy_train
    inputs: {corpus: up.corpus}
    params: {steps: 4}
    resources: {workers: 2}
"""


@pytest.fixture(scope="module")
def worker_mirror(tmp_path_factory) -> Path:
    """The Ray workers' staging mirror: not the driver's (each test's), as on another machine."""
    return tmp_path_factory.mktemp("worker-staging")


@pytest.fixture(scope="module", autouse=True)
def ray_with_secrets(toy_registry, worker_mirror):
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {**S3_ENV, **SECRETS, "ORCH_STAGING_DIR": str(worker_mirror)}.items():
            mp.setenv(k, v)
        import ray

        if ray.is_initialized():  # its workers would not have this environment
            ray.shutdown()
        start_local_ray()
        seen = ray.get(ray.remote(lambda: {k: __import__("os").environ.get(k) for k in SECRETS}).remote())
        assert seen == SECRETS  # the workers hold the secrets, as a cluster's nodes would
        yield


def assert_no_secret(files: dict[str, bytes], where: str) -> None:
    assert files, f"nothing found under {where}"
    for name, value in SECRETS.items():
        leaks = [path for path, data in files.items() if value.encode() in data]
        assert not leaks, f"the value of {name} is in {where}: {leaks}"


def local_files(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


def test_secrets_never_land_in_the_run_store(orch, write_recipe, tmp_path):
    path = write_recipe(RECIPE, files={"words.txt": "alpha\nbeta\ngamma\n"})
    code, out = orch("run", path)
    assert code == 0, out
    runs = tmp_path / "runs"
    files = local_files(runs)
    names = {Path(p).name for p in files}
    assert {"plan.json", "status.json", "recipe.resolved.yaml", "manifest.json", "log.txt", "index.json"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names), names  # TensorBoard
    assert any("/work/ray/" in p for p in files), "Ray Train's run state"
    assert_no_secret(files, str(runs))
    for value in SECRETS.values():
        assert value not in out


def test_remote_store_on_s3(orch, write_recipe, tmp_path, s3_server, monkeypatch, worker_mirror):
    bucket = S3Bucket(s3_server, "orch-runs")
    staging = tmp_path / "staging"  # the driver's mirror; the nodes run in worker_mirror
    monkeypatch.setenv("ORCH_STAGING_DIR", str(staging))
    uri = bucket.uri("team/runs")
    path = write_recipe(RECIPE, files={"words.txt": "alpha\nbeta\ngamma\n"})

    code, out = orch("run", path, "--storage", uri)
    assert code == 0, out
    objects = bucket.files("team/runs")
    for kind in ("toy_source", "toy_map", "toy_train"):
        assert any(re.fullmatch(rf"team/runs/cache/{kind}/\w+/manifest\.json", k) for k in objects), kind
    model = next(k for k in objects if k.endswith("outputs/model/text_label.jsonl"))
    assert json.loads(objects[model])["label"] > 0
    entry = model.rsplit("/outputs/", 1)[0]
    assert json.loads(objects[f"{entry}/metrics.json"])["world_size"] == 2
    assert any(k.startswith(f"{entry}/tensorboard/") for k in objects)
    assert any(re.match(rf"{entry}/work/ray/train/checkpoint_", k) for k in objects), "checkpoints go to the bucket"
    assert any(re.fullmatch(r"team/runs/toy/[\w-]+/status\.json", k) for k in objects)
    assert json.loads(objects["team/runs/toy/index.json"])["fit"]["key"] in entry
    (status_key,) = [k for k in objects if k.endswith("/status.json")]
    assert json.loads(objects[status_key])["state"] == "done" and json.loads(objects[status_key])["storage"] == uri
    assert_no_secret(objects, "the bucket")
    assert_no_secret(local_files(staging), "the driver's staging mirror")
    workers = local_files(worker_mirror)
    assert any(p.endswith("outputs/model/text_label.jsonl") for p in workers)  # the nodes ran in their own mirror
    assert_no_secret(workers, "the workers' staging mirror")

    # Another machine (no local mirror): everything is cached, found on the bucket; Ray is not started.
    shutil.rmtree(staging)
    code, out = orch("run", path, "--storage", uri)
    assert code == 0, out
    assert "3 cached" in out and "everything cached; Ray not started" in out, out

    # ...and the CLI views download what they show.
    shutil.rmtree(staging)
    code, out = orch("ls", "--storage", uri)
    assert code == 0 and out.count("toy/") == 2, out
    code, out = orch("show", "toy", "fit", "--storage", uri)
    assert code == 0 and "output model (text_label)" in out and '"world_size": 2' in out, out

    # An attempt that did not finish (its manifest never reached the bucket), re-run on machines without
    # their mirrors, resumes from the bucket's checkpoint (its input is downloaded from the bucket).
    shutil.rmtree(staging)
    shutil.rmtree(worker_mirror)
    bucket.fs.delete_file(f"orch-runs/{entry}/manifest.json")
    code, out = orch("run", path, "--storage", uri)
    assert code == 0, out
    objects = bucket.files("team/runs")
    assert json.loads(objects[f"{entry}/metrics.json"])["resumed_from"] == 4
    assert json.loads(objects[f"{entry}/manifest.json"])["resumed"] is True

    # --force starts the node from scratch: its checkpoints are cleared from the bucket first.
    code, out = orch("run", path, "--storage", uri, "--force", "fit")
    assert code == 0, out
    objects = bucket.files("team/runs")
    assert json.loads(objects[f"{entry}/manifest.json"])["resumed"] is False
    assert json.loads(objects[f"{entry}/metrics.json"])["resumed_from"] == 0
    assert_no_secret(objects, "the bucket")
    assert_no_secret(local_files(staging), "the driver's staging mirror")
    assert_no_secret(local_files(worker_mirror), "the workers' staging mirror")
