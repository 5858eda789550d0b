"""Every recipe error a user can make is reported at file:line:col, all at once, with a hint."""

from __future__ import annotations

import re

import pytest

from orchestrator.recipe.errors import RecipeError
from orchestrator.recipe.validate import load_and_validate

GOOD = """
name: toy
seed: 1
components:
  src:
    kind: toy_source
    params: {path: words.txt}
  up:
    kind: toy_map
    inputs: {corpus: src.corpus}
    params:
      suffix: "!"
  fit:
    kind: toy_train
    inputs: {corpus: up.corpus}
    params:
      steps: 3
      lr: 0.1
    resources: {workers: 2}
profiles:
  long:
    components.fit.params.steps: 9
"""
FILES = {"words.txt": "alpha\nbeta\n"}


def errors_of(write_recipe, toy_registry, text, profile=None, sets=None, files=FILES):
    path = write_recipe(text, files=files)
    with pytest.raises(RecipeError) as info:
        load_and_validate(path, profile, sets, registry=toy_registry)
    return info.value, path


def test_good_recipe_validates(write_recipe, toy_registry):
    r = load_and_validate(write_recipe(GOOD, files=FILES), registry=toy_registry)
    assert r.graph.layers() == [["src"], ["up"], ["fit"]]
    assert r.graph.nodes["fit"].params.steps == 3


def test_malformed_yaml_points_at_line(write_recipe, toy_registry):
    err, path = errors_of(write_recipe, toy_registry, "name: toy\ncomponents:\n  src: {kind: toy_source\n  up: 1\n")
    text = err.format()
    assert re.search(rf"{re.escape(str(path))}:4:5: error: invalid YAML: .*", text), text
    assert text.endswith("1 error; nothing was run.")


def test_duplicate_key(write_recipe, toy_registry):
    err, path = errors_of(write_recipe, toy_registry, "name: toy\nname: again\ncomponents: {}\n")
    assert re.search(r":2:1: error: invalid YAML: found duplicate key \"name\".*each key may appear once", err.format())


def test_wrong_type_points_at_value(write_recipe, toy_registry):
    err, path = errors_of(write_recipe, toy_registry, GOOD.replace("steps: 3", "steps: lots"))
    assert re.search(r":16:14: error: components\.fit\.params\.steps: Input should be a valid integer", err.format()), err.format()


def test_unknown_kind_suggests(write_recipe, toy_registry):
    err, _ = errors_of(write_recipe, toy_registry, GOOD.replace("kind: toy_map", "kind: toy_mapp"))
    assert re.search(r":8:11: error: components\.up\.kind: unknown component kind 'toy_mapp'; did you mean 'toy_map'\?",
                     err.format()), err.format()


def test_unknown_param_key_suggests(write_recipe, toy_registry):
    err, _ = errors_of(write_recipe, toy_registry, GOOD.replace('suffix: "!"', 'sufix: "!"'))
    assert re.search(r":11:7: error: components\.up\.params\.sufix: unknown key 'sufix'; did you mean 'suffix'\?",
                     err.format()), err.format()


def test_unknown_top_level_key_suggests(write_recipe, toy_registry):
    err, _ = errors_of(write_recipe, toy_registry, GOOD.replace("seed: 1", "sed: 1"))
    assert re.search(r":2:1: error: sed: unknown key 'sed'; did you mean 'seed'\?", err.format()), err.format()


def test_missing_node_suggests(write_recipe, toy_registry):
    err, _ = errors_of(write_recipe, toy_registry, GOOD.replace("corpus: src.corpus", "corpus: srcc.corpus"))
    assert re.search(r"components\.up\.inputs\.corpus: no node named 'srcc'; did you mean 'src'\?", err.format())


def test_missing_output_suggests(write_recipe, toy_registry):
    err, _ = errors_of(write_recipe, toy_registry, GOOD.replace("corpus: up.corpus", "corpus: up.corpsu"))
    assert re.search(r":14:22: error: components\.fit\.inputs\.corpus: node 'up' has no output 'corpsu'; did you mean 'corpus'\?",
                     err.format()), err.format()


def test_unknown_input_name_suggests(write_recipe, toy_registry):
    err, _ = errors_of(write_recipe, toy_registry, GOOD.replace("inputs: {corpus: src.corpus}", "inputs: {corpuss: src.corpus}"))
    text = err.format()
    assert "components.up.inputs.corpuss: 'toy_map' has no input 'corpuss'; did you mean 'corpus'?" in text
    assert "missing required input 'corpus' (corpus)" in text


def test_cycle_names_the_loop(write_recipe, toy_registry):
    text = GOOD.replace("profiles:", "  fit2:\n    kind: toy_map\n    inputs: {corpus: up.corpus}\nprofiles:")
    text = text.replace("inputs: {corpus: src.corpus}", "inputs: {corpus: fit2.corpus}")
    err, _ = errors_of(write_recipe, toy_registry, text)
    assert re.search(r"error: components\.(up|fit2)\.inputs: cycle in the graph: (up -> fit2 -> up|fit2 -> up -> fit2)",
                     err.format()), err.format()


def test_self_reference_is_a_cycle(write_recipe, toy_registry):
    err, _ = errors_of(write_recipe, toy_registry, GOOD.replace("corpus: src.corpus", "corpus: up.corpus"))
    assert "cycle in the graph: up -> up" in err.format()


def test_artifact_kind_mismatch(write_recipe, toy_registry):
    text = GOOD.replace("profiles:", "  again:\n    kind: toy_map\n    inputs: {corpus: fit.model}\nprofiles:")
    err, _ = errors_of(write_recipe, toy_registry, text)
    assert re.search(r"components\.again\.inputs\.corpus: 'fit\.model' is a text_label artifact but input 'corpus' "
                     r"of 'toy_map' takes corpus", err.format()), err.format()


def test_missing_data_file(write_recipe, toy_registry):
    err, _ = errors_of(write_recipe, toy_registry, GOOD.replace("words.txt", "nowhere.txt"))
    assert re.search(r":6:20: error: components\.src\.params\.path: data file not found: .*nowhere\.txt "
                     r"\(paths are relative to the recipe's folder", err.format()), err.format()


def test_all_errors_reported_at_once(write_recipe, toy_registry):
    text = (GOOD.replace("steps: 3", "steps: -1").replace("kind: toy_map", "kind: toy_mop")
            .replace("words.txt", "gone.txt").replace("seed: 1", "seed: one"))
    err, _ = errors_of(write_recipe, toy_registry, text)
    assert len(err.errors) == 1  # the top-level type error stops before nodes are looked at
    text2 = GOOD.replace("steps: 3", "steps: -1").replace("kind: toy_map", "kind: toy_mop").replace("words.txt", "gone.txt")
    err2, _ = errors_of(write_recipe, toy_registry, text2)
    assert len(err2.errors) == 3, err2.format()
    assert err2.format().endswith("3 errors; nothing was run.")


def test_override_error_names_the_override(write_recipe, toy_registry):
    err, _ = errors_of(write_recipe, toy_registry, GOOD, sets=["components.fit.params.lr=-1"])
    assert re.search(r"components\.fit\.params\.lr: Input should be greater than 0 \(value set by --set components\.fit\.params\.lr=-1\)",
                     err.format()), err.format()


def test_override_unknown_node_suggests(write_recipe, toy_registry):
    err, _ = errors_of(write_recipe, toy_registry, GOOD, sets=["components.fitt.params.lr=1"])
    assert "no key 'fitt' at 'components'; did you mean 'fit'? (in --set components.fitt.params.lr=1)" in err.format()


def test_override_and_profile_apply(write_recipe, toy_registry):
    path = write_recipe(GOOD, files=FILES)
    r = load_and_validate(path, "long", ["components.fit.params.lr=3e-5"], registry=toy_registry)
    assert r.graph.nodes["fit"].params.steps == 9
    assert r.graph.nodes["fit"].params.lr == pytest.approx(3e-5)


def test_profile_error_points_into_profile(write_recipe, toy_registry):
    text = GOOD.replace("components.fit.params.steps: 9", "components.fit.params.steps: 0")
    err, _ = errors_of(write_recipe, toy_registry, text, profile="long")
    assert re.search(r":21:5: error: components\.fit\.params\.steps: Input should be greater than or equal to 1 "
                     r"\(value set by profile 'long'", err.format()), err.format()


def test_unknown_profile_suggests(write_recipe, toy_registry):
    err, _ = errors_of(write_recipe, toy_registry, GOOD, profile="lng")
    assert "no profile named 'lng'; did you mean 'long'?" in err.format()


def test_resources_of_the_wrong_kind(write_recipe, toy_registry):
    err, _ = errors_of(write_recipe, toy_registry, GOOD.replace("resources: {workers: 2}", "resources: {cpus: 2}"))
    assert "components.fit.resources.cpus: 'toy_train' is a training component: use workers" in err.format()


def test_sweep_impossible_space_is_an_error(write_recipe, toy_registry):
    text = GOOD.replace("    resources: {workers: 2}",
                        "    resources: {workers: 2}\n    sweep:\n      metric: loss\n      mode: min\n"
                        "      search_space:\n        lr: {uniform: [-1, 1]}\n        steps: {choice: [2, 0]}\n")
    err, _ = errors_of(write_recipe, toy_registry, text)
    out = err.format()
    assert re.search(r":23:9: error: components\.fit\.sweep\.search_space\.lr: value -1 for 'lr' gives invalid params: "
                     r"lr: Input should be greater than 0", out), out
    assert "value 0 for 'steps' gives invalid params" in out


def test_sweep_unknown_distribution_and_param(write_recipe, toy_registry):
    text = GOOD.replace("    resources: {workers: 2}",
                        "    resources: {workers: 2}\n    sweep:\n      metric: loss\n"
                        "      search_space:\n        lr: {logunifrom: [1e-5, 1e-3]}\n")
    err, _ = errors_of(write_recipe, toy_registry, text)
    assert "unknown distribution 'logunifrom'; did you mean 'loguniform'?" in err.format()
    text2 = GOOD.replace("    resources: {workers: 2}",
                         "    resources: {workers: 2}\n    sweep:\n      metric: loss\n"
                         "      search_space:\n        lrate: {loguniform: [1e-5, 1e-3]}\n")
    err2, _ = errors_of(write_recipe, toy_registry, text2)
    assert "'lrate' is not a parameter of 'toy_train'" in err2.format()


def test_sweep_only_on_training_nodes(write_recipe, toy_registry):
    text = GOOD.replace('      suffix: "!"', '      suffix: "!"\n    sweep: {metric: m, search_space: {suffix: {choice: [a, b]}}}')
    err, _ = errors_of(write_recipe, toy_registry, text)
    assert "'toy_map' is not a training component; only training nodes can be swept" in err.format()
