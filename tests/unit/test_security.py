"""Security properties that need no Ray: recipes are data (no import paths), secrets are never carried
or recorded by name, trust_remote_code is off unless asked for and warns when it is on."""

from __future__ import annotations

import logging

import pytest

from orchestrator.recipe.errors import RecipeError
from orchestrator.recipe.validate import load_and_validate

RECIPE = """
name: t
components:
  src:
    kind: KIND
    params: {path: w.txt}
"""


@pytest.mark.parametrize("kind", ["os.system", "os:system", "subprocess.run", "builtins:eval",
                                  "tests.toy_components.toy_source", "tests.toy_components:toy_source"])
def test_a_kind_that_looks_like_an_import_path_is_an_unknown_kind(kind, write_recipe, toy_registry):
    path = write_recipe(RECIPE.replace("KIND", f'"{kind}"'), files={"w.txt": "a\n"})
    with pytest.raises(RecipeError) as info:
        load_and_validate(path, registry=toy_registry)
    text = info.value.format()
    assert f"components.src.kind: unknown component kind '{kind}'" in text, text
    assert "nothing was run" in text


def test_secret_looking_names():
    from orchestrator.execute.job import looks_secret, redact_env

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN",
                 "WANDB_API_KEY", "DB_PASSWORD", "GOOGLE_APPLICATION_CREDENTIALS", "RAY_AUTH_TOKEN", "my_secret"):
        assert looks_secret(name), name
    for name in ("HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM", "ORCH_STAGING_DIR", "HF_HOME", "AWS_DEFAULT_REGION"):
        assert not looks_secret(name), name
    assert redact_env({"HF_TOKEN": "hf_x", "HF_HOME": "/h"}) == {"HF_TOKEN": "<redacted>", "HF_HOME": "/h"}


def test_node_jobs_never_carry_secrets():
    from orchestrator.execute.job import NodeJob, looks_secret
    from orchestrator.execute.scheduler import FORWARDED_ENV, RAY_ENV_DEFAULTS

    assert not [k for k in (*FORWARDED_ENV, *RAY_ENV_DEFAULTS) if looks_secret(k)]
    job = NodeJob(node="n", kind="k", key="x", params={}, inputs={}, many={}, outputs={}, entry_dir="/e", store_root="/s",
                  recipe_dir="/r", seed=0, resources={},
                  env={"HF_TOKEN": "hf_secret", "AWS_SECRET_ACCESS_KEY": "s", "HF_HUB_OFFLINE": "1"})
    assert job.env == {"HF_HUB_OFFLINE": "1"}


def test_trust_remote_code_is_off_by_default():
    from components.lora_sft import LoraSftParams

    assert LoraSftParams.model_fields["trust_remote_code"].default is False


def test_trust_remote_code_warns_only_when_set(caplog):
    from components.models import load_tokenizer

    with caplog.at_level(logging.WARNING, logger="components.models"):
        load_tokenizer("minilm")
    assert not [r for r in caplog.records if "trust_remote_code" in r.getMessage()]
    with caplog.at_level(logging.WARNING, logger="components.models"):
        load_tokenizer("minilm", trust_remote_code=True)
    warned = [r.getMessage() for r in caplog.records if "trust_remote_code" in r.getMessage()]
    assert warned == ["trust_remote_code=True for minilm: Python code shipped with the model will run on this machine"]


def test_component_warnings_reach_the_node_log(tmp_path):
    """A worker's stderr is not shown by `orch run`: warnings (trust_remote_code's) go to log.txt too."""
    from components.models import _warn_remote_code
    from orchestrator.context import NodeContext

    ctx = NodeContext(node="gen", entry_dir=tmp_path, recipe_dir=tmp_path)
    with ctx.capture_warnings():
        _warn_remote_code("some/model", True)
        _warn_remote_code("other/model", False)
    _warn_remote_code("after/model", True)  # the handler is gone once the component returns
    log = (tmp_path / "log.txt").read_text()
    assert "warning (components.models): trust_remote_code=True for some/model" in log, log
    assert "other/model" not in log and "after/model" not in log, log
