"""A run store on a bucket (pyarrow filesystems), against a local S3 API (moto): clear errors for URIs
that cannot work, manifest-last completion judged on the remote, downloads into a local mirror."""

from __future__ import annotations

import json
import socket

import pytest

from orchestrator.remote import Remote, staging_dir
from orchestrator.store import MANIFEST, Store


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unknown_scheme_names_the_uri_and_what_to_do():
    with pytest.raises(ValueError) as info:
        Store.at("nosuchfs://bucket/runs")
    msg = str(info.value)
    assert "storage 'nosuchfs://bucket/runs'" in msg and "cannot open 'nosuchfs://' URIs" in msg, msg
    assert "local path" in msg and "s3://BUCKET/PREFIX" in msg and "cluster/README.md" in msg, msg


def test_unknown_scheme_from_the_cli_exits_2(orch, write_recipe, toy_registry):
    path = write_recipe("name: t\ncomponents:\n  src: {kind: toy_source, params: {path: w.txt}}\n", files={"w.txt": "a\n"})
    code, out = orch("plan", path, "--storage", "nosuchfs://bucket/runs")
    assert code == 2, out
    assert "error: storage 'nosuchfs://bucket/runs'" in out, out


def test_unreachable_endpoint_names_the_uri_and_credentials(monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    uri = f"s3://bucket/runs?endpoint_override=127.0.0.1:{_closed_port()}&scheme=http"
    with pytest.raises(ValueError) as info:
        Store.at(uri)
    msg = str(info.value)
    assert f"storage '{uri}' cannot be reached" in msg, msg
    assert "AWS_ACCESS_KEY_ID" in msg and "endpoint" in msg, msg


def test_missing_bucket_is_named(s3_bucket):
    uri = f"s3://no-such-bucket/runs?endpoint_override={s3_bucket.endpoint}&scheme=http"
    with pytest.raises(ValueError, match=r"'no-such-bucket' does not exist; create the bucket"):
        Store.at(uri)


def test_credentials_in_the_uri_are_refused_and_not_echoed():
    with pytest.raises(ValueError) as info:
        Store.at("s3://AKIDEXAMPLE:wJalrXUtnFEMIEXAMPLEKEY@bucket/runs")
    msg = str(info.value)
    assert "credentials in the URI are not accepted" in msg and "AWS_SECRET_ACCESS_KEY" in msg, msg
    assert "wJalrXUtnFEMIEXAMPLEKEY" not in msg and "AKIDEXAMPLE" not in msg, msg


def test_staging_dir_per_uri(monkeypatch, tmp_path):
    monkeypatch.setenv("ORCH_STAGING_DIR", str(tmp_path))
    a = staging_dir("s3://b/runs?scheme=http&endpoint_override=h:1")
    assert a.parent == tmp_path and len(a.name) == 16
    assert a == staging_dir("s3://b/runs/?endpoint_override=h:1&scheme=http")  # same store, same mirror
    assert a != staging_dir("s3://b/other?endpoint_override=h:1&scheme=http")
    monkeypatch.delenv("ORCH_STAGING_DIR")
    assert "/.cache/orch/stores/" in str(staging_dir("s3://b/runs"))


def test_local_paths_do_not_touch_pyarrow(tmp_path):
    store = Store.at(str(tmp_path / "runs"))
    assert store.remote is None and store.location == str(tmp_path / "runs")
    assert Store.at(f"file://{tmp_path}/x").root == tmp_path / "x"


def _write_entry(store: Store, kind: str = "toy_map", key: str = "k1") -> None:
    entry = store.prepare_entry(kind, key)
    (entry / "outputs" / "corpus").mkdir(parents=True)
    (entry / "outputs" / "corpus" / "corpus.jsonl").write_text('{"_id": "d0"}\n')
    (entry / "log.txt").write_text("log\n")
    (entry / "work").mkdir()
    (entry / "work" / "scratch.bin").write_text("local only")


def test_entry_is_complete_only_once_its_manifest_is_on_the_remote(s3_bucket, monkeypatch, tmp_path):
    monkeypatch.setenv("ORCH_STAGING_DIR", str(tmp_path / "staging"))
    store = Store.at(s3_bucket.uri("runs"))
    assert store.remote is not None and store.root.parent == tmp_path / "staging"
    _write_entry(store)
    # Everything but the manifest uploaded (a node killed mid-upload): not complete, never reused.
    store.push_dir(store.entry_dir("toy_map", "k1"))
    assert "runs/cache/toy_map/k1/outputs/corpus/corpus.jsonl" in s3_bucket.files()
    assert not store.is_complete("toy_map", "k1")
    # A manifest only in the local mirror does not count either.
    (store.entry_dir("toy_map", "k1") / MANIFEST).write_text("{}")
    assert not store.is_complete("toy_map", "k1")

    order: list[str] = []
    real = Remote.upload_file
    monkeypatch.setattr(Remote, "upload_file", lambda self, local, rel: (order.append(str(rel)), real(self, local, rel)))
    store.finish_entry("toy_map", "k1", "up", {"corpus": "corpus"}, {"summary": {}})
    assert order[-1] == f"cache/toy_map/k1/{MANIFEST}", order  # the manifest goes last
    assert not any("/work/" in r for r in order), order  # scratch and checkpoints are not uploaded by orch
    assert store.is_complete("toy_map", "k1")
    files = s3_bucket.files("runs/cache/toy_map/k1")
    assert json.loads(files[f"runs/cache/toy_map/k1/{MANIFEST}"])["node"] == "up"


def test_prepare_entry_removes_the_remote_manifest_and_outputs(s3_bucket, monkeypatch, tmp_path):
    monkeypatch.setenv("ORCH_STAGING_DIR", str(tmp_path / "staging"))
    store = Store.at(s3_bucket.uri("runs"))
    _write_entry(store)
    store.finish_entry("toy_map", "k1", "up", {"corpus": "corpus"}, {})
    store.remote.upload_file(store.entry_dir("toy_map", "k1") / "work" / "scratch.bin", "cache/toy_map/k1/work/ckpt")
    store.prepare_entry("toy_map", "k1")  # a repeated attempt (the last one failed or was killed)
    left = set(s3_bucket.files("runs/cache/toy_map/k1"))
    assert not store.is_complete("toy_map", "k1")
    assert not any("/outputs/" in k for k in left), left
    assert "runs/cache/toy_map/k1/work/ckpt" in left  # checkpoints stay: training resumes from them
    store.prepare_entry("toy_map", "k1", fresh=True)  # --force: from scratch, no checkpoint resumed
    assert not any("/work/" in k for k in s3_bucket.files("runs/cache/toy_map/k1"))
    assert not (store.entry_dir("toy_map", "k1") / "work").exists()


def test_another_machine_downloads_entries_and_runs(s3_bucket, monkeypatch, tmp_path):
    monkeypatch.setenv("ORCH_STAGING_DIR", str(tmp_path / "machine-a"))
    a = Store.at(s3_bucket.uri("runs"))
    _write_entry(a)
    a.finish_entry("toy_map", "k1", "up", {"corpus": "corpus"}, {})
    run_id, run_dir = a.new_run("toy")
    (run_dir / "status.json").write_text(json.dumps({"state": "done", "nodes": {"up": {"state": "done"}}}))
    a.link_node(run_dir, "up", "toy_map", "k1", "run")
    a.push(run_dir / "status.json")
    a.update_index("toy", "up", {"kind": "toy_map"}, "k1")

    import shutil

    shutil.rmtree(tmp_path / "machine-a")  # another machine: nothing of A's mirror is there
    monkeypatch.setenv("ORCH_STAGING_DIR", str(tmp_path / "machine-b"))
    b = Store.at(s3_bucket.uri("runs"))
    assert b.root != a.root and not b.root.exists()
    assert b.read_index("toy")["up"]["key"] == "k1"
    found = b.find_run(None, entries=True)
    assert found == b.root / "toy" / run_id
    entry = b.entry_dir("toy_map", "k1")
    assert (entry / "outputs" / "corpus" / "corpus.jsonl").read_text() == '{"_id": "d0"}\n'
    assert (entry / MANIFEST).exists() and not (entry / "work").exists()
    from orchestrator.store import node_entry, run_artifacts

    assert node_entry(found, "up") == entry  # node.json names machine A's mirror; found here by kind/key
    assert [art.meta["output"] for art in run_artifacts(found)] == ["corpus"]
