"""data_prep, sft_data_prep and cls_data_prep: loaders, cleaning, splits, conversions, error paths.

Tiny files are written in tmp_path; the SQuAD loader also reads the shipped CMRC2018 sample.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from components.data_prep import (ClsDataPrepParams, DataPrepError, DataPrepParams, SftDataPrepParams,
                                  cls_data_prep, data_prep, sft_data_prep)
from components.data_prep.split import connected_groups, split_groups, split_items, split_sizes
from orchestrator.api import _REGISTRY
from orchestrator.context import NodeContext

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
CMRC_SAMPLE = "data/cmrc2018_sample.json"


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def write(folder: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def jsonl(rows) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def make_ctx(tmp_path: Path, recipe_dir: Path | None = None, seed: int = 13) -> NodeContext:
    return NodeContext(node="prep", entry_dir=tmp_path / "entry", recipe_dir=recipe_dir or tmp_path, seed=seed)


def run(fn, params, tmp_path: Path, recipe_dir: Path | None = None, seed: int = 13) -> tuple[NodeContext, dict]:
    ctx = make_ctx(tmp_path, recipe_dir, seed)
    fn(params, {}, ctx)
    return ctx, json.loads((ctx.entry_dir / "metrics.json").read_text(encoding="utf-8"))


def out(ctx: NodeContext, name: str, file: str) -> Path:
    return ctx.entry_dir / "outputs" / name / file


def qrels(path: Path) -> list[tuple[str, str, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "query-id\tcorpus-id\tscore"
    return [tuple(line.split("\t")) for line in lines[1:]]


PAIRS = [
    {"question": "What is BM25?", "passage": "BM25 is a ranking function.", "answer": "a ranking function"},
    {"question": "Who wrote it?", "passage": "Robertson wrote it.", "answer": "Robertson"},
    {"question": "What is BM25?", "passage": "BM25 is a ranking function.", "answer": "a ranking function"},
    {"question": "  What is FAISS? ", "passage": "FAISS searches vectors.", "answer": "searches vectors"},
    {"question": "What is BM25?", "passage": "BM25 extends TF-IDF.", "answer": ""},
    {"question": "   ", "passage": "Orphan passage.", "answer": "x"},
]


# ---------------------------------------------------------------------------------------------
# registration and params
# ---------------------------------------------------------------------------------------------


def test_kinds_are_registered_with_their_outputs():
    assert _REGISTRY["data_prep"].outputs == {
        "corpus": "corpus", "train_pairs": "pairs", "dev": "ir_eval_set", "test": "ir_eval_set",
        "train_sft": "sft", "dev_sft": "sft"}
    assert _REGISTRY["sft_data_prep"].outputs == {"train": "sft", "dev": "sft", "test": "sft"}
    assert _REGISTRY["cls_data_prep"].outputs == {"train": "text_label", "dev": "text_label", "test": "text_label"}
    for kind in ("data_prep", "sft_data_prep", "cls_data_prep"):
        assert _REGISTRY[kind].inputs == {} and _REGISTRY[kind].runs_as == "task"


@pytest.mark.parametrize("model", [DataPrepParams, SftDataPrepParams, ClsDataPrepParams])
def test_every_params_field_has_a_description(model):
    seen: set[type] = set()

    def walk(m: type[BaseModel]) -> None:
        if m in seen:
            return
        seen.add(m)
        for name, f in m.model_fields.items():
            assert f.description, f"{m.__name__}.{name} has no description"
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann)

    walk(model)
    assert len(seen) >= 3  # the params, clean and split models


def test_module_imports_without_heavy_dependencies():
    code = ("import sys, components.data_prep; "
            "heavy = [m for m in ('torch', 'ray', 'transformers', 'numpy', 'pandas') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


@pytest.mark.parametrize("model, kwargs", [
    (DataPrepParams, {"split": {"by": "passage", "seed": 3}, "clean": {"max_chars": {"passage": 900}}}),
    (SftDataPrepParams, {"fields": {"instruction": "ask"}, "output_format": "sharegpt"}),
    (ClsDataPrepParams, {"label_map": {1: "positive"}, "split": {"stratify": False}}),
])
def test_params_survive_the_trip_to_a_worker(model, kwargs):
    # The executor sends model_dump(mode="json") to the worker and validates it again there.
    params = model(source="x", **kwargs)
    assert model.model_validate(json.loads(json.dumps(params.model_dump(mode="json")))) == params


def test_defaults():
    p = DataPrepParams(source="x.json")
    assert (p.format, p.encoding, p.on_error) == ("auto", "utf-8", "fail")
    assert (p.split.by, p.split.dev, p.split.test, p.split.seed) == ("query", 0.1, 0.2, None)
    assert (p.clean.strip, p.clean.dedupe, p.clean.min_chars, p.clean.max_chars) == (True, True, {}, {})
    assert "{query}" in p.sft_input_template and "{passage}" in p.sft_input_template
    assert ClsDataPrepParams(source="x.csv").split.stratify is True
    assert SftDataPrepParams(source="x.json").output_format == "alpaca"


@pytest.mark.parametrize("split, message", [
    ({"dev": 0.5, "test": 0.5}, r"dev \+ test must be < 1 .*got dev 0.5 \+ test 0.5 = 1"),
    ({"dev": 0.7, "test": 0.4}, r"dev \+ test must be < 1"),
    ({"dev": -0.1}, r"greater than or equal to 0"),
    ({"test": 1.0}, r"less than 1"),
    ({"by": "document"}, r"'query' or 'passage'"),
    ({"seed": -1}, r"greater than or equal to 0"),
])
def test_invalid_split_is_rejected(split, message):
    with pytest.raises(ValidationError, match=message):
        DataPrepParams(source="x.json", split=split)


@pytest.mark.parametrize("kwargs, message", [
    ({"fields": {"qeury": "q"}}, r"unknown field 'qeury'; did you mean 'query'\?"),
    ({"fields": {"query": " "}}, r"query: the source column name is empty"),
    ({"fields": {"query": "a", "positive": "a"}}, r"column\(s\) a mapped to more than one field"),
    ({"encoding": "utf-9"}, r"unknown encoding 'utf-9'"),
    ({"sft_input_template": "{pasage} {query}"}, r"unknown placeholder \{pasage\}; did you mean 'passage'"),
    ({"sft_input_template": "{passage}"}, r"must contain \{query\}"),
    ({"sft_input_template": "{query"}, r"invalid template"),
    ({"clean": {"min_chars": {"text": 3}}}, r"min_chars: unknown field 'text'"),
    ({"clean": {"min_chars": {"query": 5}, "max_chars": {"query": 2}}}, r"max_chars.query \(2\) is below"),
    ({"clean": {"max_chars": {"query": 0}}}, r"must be >= 1"),
    ({"format": "squad", "fields": {"query": "q"}}, r"fields apply to json/jsonl/csv sources"),
    ({"formt": "json"}, r"Extra inputs are not permitted"),
    ({"on_error": "ignore"}, r"'fail' or 'skip'"),
])
def test_invalid_params_are_rejected(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        DataPrepParams(source="x.json", **kwargs)


def test_params_are_frozen():
    p = DataPrepParams(source="x.json")
    with pytest.raises(ValidationError, match="frozen"):
        p.source = "y.json"


def test_label_map_keys_are_text():
    p = ClsDataPrepParams(source="x.csv", label_map={1: "positive", 0: "negative", 2.0: "neutral"})
    assert p.label_map == {"1": "positive", "0": "negative", "2": "neutral"}
    assert ClsDataPrepParams(source="x.csv", label_map={True: "yes"}).label_map == {"true": "yes"}
    with pytest.raises(ValidationError, match=r"unknown field 'query'"):
        ClsDataPrepParams(source="x.csv", fields={"query": "q"})
    with pytest.raises(ValidationError, match=r"Input should be 'auto', 'json', 'jsonl' or 'csv'"):
        SftDataPrepParams(source="x.json", format="squad")


# ---------------------------------------------------------------------------------------------
# loaders and error paths
# ---------------------------------------------------------------------------------------------


def test_jsonl_records_merge_queries_clean_and_dedupe(tmp_path):
    write(tmp_path, "pairs.jsonl", jsonl(PAIRS))
    ctx, summary = run(data_prep, DataPrepParams(source="pairs.jsonl", split={"dev": 0, "test": 0}), tmp_path)
    assert summary["records_in"] == 6
    assert summary["dropped/duplicate"] == 1 and summary["dropped/empty_query"] == 1
    assert summary["dropped"] == 2 and summary["bad_rows"] == 0
    corpus = read_jsonl(out(ctx, "corpus", "corpus.jsonl"))
    assert [c["text"] for c in corpus] == ["BM25 is a ranking function.", "Robertson wrote it.",
                                           "FAISS searches vectors.", "BM25 extends TF-IDF."]
    pairs = read_jsonl(out(ctx, "train_pairs", "pairs.jsonl"))
    assert summary["queries/train"] == 3 and summary["pairs/train"] == len(pairs) == 4
    bm25 = [p for p in pairs if p["query"] == "What is BM25?"]
    assert {p["positive_id"] for p in bm25} == {"p0", "p3"} and {p["query_id"] for p in bm25} == {"q0"}
    assert any(p["query"] == "What is FAISS?" for p in pairs)  # stripped
    sft = read_jsonl(out(ctx, "train_sft", "sft.jsonl"))
    assert len(sft) == summary["sft/train"] == 3
    assert {"instruction", "input", "output"} == set(sft[0])


def test_explicit_fields_list_positives_and_negatives(tmp_path):
    rows = [{"q": "a?", "pos": ["p one", "p two"], "neg": ["n one"], "id": "Q1"},
            {"q": "b?", "pos": "p two", "neg": "n two", "id": "Q2"}]
    write(tmp_path, "t.json", json.dumps(rows))
    params = DataPrepParams(source="t.json", fields={"query": "q", "positive": "pos", "query_id": "id"},
                            split={"dev": 0, "test": 0})
    ctx, summary = run(data_prep, params, tmp_path)
    corpus = read_jsonl(out(ctx, "corpus", "corpus.jsonl"))
    assert [c["text"] for c in corpus] == ["p one", "p two", "n one", "n two"]
    pairs = read_jsonl(out(ctx, "train_pairs", "pairs.jsonl"))
    assert [(p["query_id"], p["positive_id"]) for p in pairs] == [("Q1", "p0"), ("Q1", "p1"), ("Q2", "p1")]
    assert summary["sft/train"] == 0 and "no answers" in summary["notes"][0]
    assert out(ctx, "train_sft", "sft.jsonl").read_text() == ""  # written, empty


def test_explicit_mapping_is_not_reused_by_aliases(tmp_path):
    # `answer` is mapped to positive, so it must not also become the QA answer.
    write(tmp_path, "med.csv", "ask,answer\n头疼怎么办？,多休息，必要时就医。\n")
    params = DataPrepParams(source="med.csv", fields={"query": "ask", "positive": "answer"}, split={"dev": 0, "test": 0})
    ctx, summary = run(data_prep, params, tmp_path)
    assert summary["pairs/train"] == 1 and summary["sft/train"] == 0


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    write(tmp_path, "data/pairs.jsonl", jsonl(PAIRS[:2]) + '{"question": "x", "passage": \n')
    with pytest.raises(DataPrepError, match=r"^data/pairs\.jsonl:3: invalid JSON: .*on_error: skip"):
        run(data_prep, DataPrepParams(source="data/pairs.jsonl"), tmp_path)


def test_jsonl_line_that_is_not_an_object(tmp_path):
    write(tmp_path, "p.jsonl", jsonl(PAIRS[:2]) + "\n[1, 2]\n")
    with pytest.raises(DataPrepError, match=r"p\.jsonl:4: expected a JSON object, got a list"):
        run(data_prep, DataPrepParams(source="p.jsonl"), tmp_path)


def test_missing_field_is_named_with_record_index(tmp_path):
    rows = [PAIRS[0], {"question": "no passage here", "text": "?"}]
    write(tmp_path, "p.json", json.dumps(rows))
    with pytest.raises(DataPrepError, match=r"p\.json\[1\]: missing field 'positive' \(looked for: positive, pos, "
                                            r"passage.*the record has: question, text"):
        run(data_prep, DataPrepParams(source="p.json"), tmp_path)


def test_missing_mapped_field_says_which_mapping(tmp_path):
    write(tmp_path, "p.jsonl", jsonl([{"qustion": "a", "passage": "b"}]))
    params = DataPrepParams(source="p.jsonl", fields={"query": "question"})
    with pytest.raises(DataPrepError, match=r"p\.jsonl:1: missing field 'question' \(mapped to query by "
                                            r"fields\.query\); did you mean 'qustion'\?"):
        run(data_prep, params, tmp_path)


def test_wrong_value_type_is_a_bad_row(tmp_path):
    write(tmp_path, "p.jsonl", jsonl([{"query": {"a": 1}, "positive": "b"}]))
    with pytest.raises(DataPrepError, match=r"p\.jsonl:1: field 'query' should be text, got an object"):
        run(data_prep, DataPrepParams(source="p.jsonl"), tmp_path)


def test_on_error_skip_counts_and_logs_bad_rows(tmp_path):
    lines = jsonl(PAIRS[:2]) + "not json\n" + jsonl([{"nothing": 1}] * 6) + jsonl([PAIRS[3]])
    write(tmp_path, "p.jsonl", lines)
    ctx, summary = run(data_prep, DataPrepParams(source="p.jsonl", on_error="skip", split={"dev": 0, "test": 0}),
                       tmp_path)
    assert summary["bad_rows"] == 7
    assert summary["records_in"] == 9  # parsed records; the broken line is only a bad row
    assert summary["queries/train"] == 3
    assert len(summary["bad_row_examples"]) == 5
    assert summary["bad_row_examples"][0].startswith("p.jsonl:3: invalid JSON")
    log = (ctx.entry_dir / "log.txt").read_text(encoding="utf-8")
    assert "skipped 7 bad row(s)" in log and "p.jsonl:4: missing field 'query'" in log
    assert "p.jsonl:9:" not in log  # only the first five are logged


def test_skip_with_nothing_usable_still_fails(tmp_path):
    write(tmp_path, "p.jsonl", jsonl([{"a": 1}, {"b": 2}]))
    with pytest.raises(DataPrepError, match=r"p\.jsonl: no usable queries \(2 read; 2 bad; first problem: "
                                            r"p\.jsonl:1: missing field 'query'"):
        run(data_prep, DataPrepParams(source="p.jsonl", on_error="skip"), tmp_path)


def test_json_document_with_syntax_error(tmp_path):
    write(tmp_path, "p.json", '[\n {"query": "a",\n  "positive": }\n]')
    with pytest.raises(DataPrepError, match=r"p\.json:3:15: invalid JSON: Expecting value"):
        run(data_prep, DataPrepParams(source="p.json"), tmp_path)


def test_json_extension_holding_json_lines(tmp_path):
    write(tmp_path, "p.json", jsonl(PAIRS[:2]))
    _, summary = run(data_prep, DataPrepParams(source="p.json", split={"dev": 0, "test": 0}), tmp_path)
    assert summary["queries/train"] == 2


def test_json_object_that_is_not_records(tmp_path):
    write(tmp_path, "p.json", json.dumps({"rows": []}))
    with pytest.raises(DataPrepError, match=r"p\.json: expected a JSON list of records"):
        run(data_prep, DataPrepParams(source="p.json"), tmp_path)


def test_csv_line_numbers_count_multiline_fields(tmp_path):
    text = 'query,positive\n"first?","line one\nline two"\nsecond?,ok\nthird?,too,many\n'
    write(tmp_path, "p.csv", text)
    with pytest.raises(DataPrepError, match=r"p\.csv:5: expected 2 columns \(query, positive\), got 3"):
        run(data_prep, DataPrepParams(source="p.csv"), tmp_path)
    ctx, summary = run(data_prep, DataPrepParams(source="p.csv", on_error="skip", split={"dev": 0, "test": 0}),
                       tmp_path / "skip", recipe_dir=tmp_path)
    assert summary["bad_rows"] == 1 and summary["queries/train"] == 2
    assert read_jsonl(out(ctx, "corpus", "corpus.jsonl"))[0]["text"] == "line one\nline two"


def test_csv_header_without_the_mapped_column_fails_at_once(tmp_path):
    write(tmp_path, "p.csv", "question,answer\na?,b\n")
    with pytest.raises(DataPrepError, match=r"p\.csv:1: no column for field 'positive' in the CSV header"):
        run(data_prep, DataPrepParams(source="p.csv"), tmp_path)
    params = DataPrepParams(source="p.csv", fields={"query": "questoin", "positive": "answer"})
    with pytest.raises(DataPrepError, match=r"p\.csv:1: .*missing field 'questoin'.*did you mean 'question'"):
        run(data_prep, params, tmp_path)


def test_csv_header_without_an_optional_mapped_column(tmp_path):
    write(tmp_path, "p.csv", "query,positive\na?,b\n")
    with pytest.raises(DataPrepError, match=r"p\.csv:1: missing field 'heading' \(mapped to title by fields\.title\)"):
        run(data_prep, DataPrepParams(source="p.csv", fields={"title": "heading"}), tmp_path)


def test_csv_gb18030_needs_its_encoding(tmp_path):
    write(tmp_path, "med.csv", "department,ask,answer\n内科,头疼怎么办？,多喝水，注意休息。\n", encoding="gb18030")
    with pytest.raises(DataPrepError, match=r"med\.csv: cannot decode as utf-8 .*set encoding: .*gb18030"):
        run(data_prep, DataPrepParams(source="med.csv", fields={"query": "ask", "positive": "answer"}), tmp_path)
    params = DataPrepParams(source="med.csv", encoding="gb18030", fields={"query": "ask", "positive": "answer"},
                            split={"dev": 0, "test": 0})
    ctx, _ = run(data_prep, params, tmp_path / "ok", recipe_dir=tmp_path)
    assert read_jsonl(out(ctx, "train_pairs", "pairs.jsonl")) == [
        {"query": "头疼怎么办？", "positive": "多喝水，注意休息。", "query_id": "q0", "positive_id": "p0"}]


def test_csv_with_bom_and_tsv(tmp_path):
    write(tmp_path, "bom.csv", "\ufeffquery,positive\na?,b\n")
    write(tmp_path, "t.tsv", "query\tpositive\na?\tb, with comma\n")
    _, summary = run(data_prep, DataPrepParams(source="bom.csv", split={"dev": 0, "test": 0}), tmp_path / "1",
                     recipe_dir=tmp_path)
    assert summary["queries/train"] == 1
    ctx, _ = run(data_prep, DataPrepParams(source="t.tsv", split={"dev": 0, "test": 0}), tmp_path / "2",
                 recipe_dir=tmp_path)
    assert read_jsonl(out(ctx, "corpus", "corpus.jsonl"))[0]["text"] == "b, with comma"


@pytest.mark.parametrize("name, fmt, message", [
    ("p.txt", "auto", r"p\.txt: cannot tell the format from the extension '\.txt'; set format:"),
    ("missing.jsonl", "auto", r"missing\.jsonl: file not found"),
    ("p.jsonl", "beir", r"p\.jsonl: format beir needs a folder"),
])
def test_source_errors(tmp_path, name, fmt, message):
    write(tmp_path, "p.txt", "x")
    write(tmp_path, "p.jsonl", jsonl(PAIRS[:1]))
    with pytest.raises(DataPrepError, match=message):
        run(data_prep, DataPrepParams(source=name, format=fmt), tmp_path)


def test_folder_sources_need_beir(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataPrepError, match=r"folder: is a folder; format json reads a file"):
        run(data_prep, DataPrepParams(source="folder", format="json"), tmp_path)
    with pytest.raises(DataPrepError, match=r"folder: is a folder; this component reads one file"):
        run(sft_data_prep, SftDataPrepParams(source="folder"), tmp_path)


@pytest.mark.parametrize("text, message", [
    ("", r"e\.csv: empty CSV file"),
    (",\n1,2\n", r"e\.csv:1: empty CSV header"),
])
def test_empty_csv(tmp_path, text, message):
    write(tmp_path, "e.csv", text)
    with pytest.raises(DataPrepError, match=message):
        run(data_prep, DataPrepParams(source="e.csv"), tmp_path)


def test_csv_quote_errors_name_their_line(tmp_path):
    write(tmp_path, "q.csv", 'query,positive\na?,"b"x\nc?,d\ne?,"unclosed\n')
    with pytest.raises(DataPrepError, match=r"q\.csv:2: cannot parse CSV: .*check the quotes"):
        run(data_prep, DataPrepParams(source="q.csv"), tmp_path)
    ctx, summary = run(data_prep, DataPrepParams(source="q.csv", on_error="skip", split={"dev": 0, "test": 0}),
                       tmp_path / "skip", recipe_dir=tmp_path)
    assert summary["bad_rows"] == 2 and summary["queries/train"] == 1
    assert summary["bad_row_examples"][1].startswith("q.csv:4: cannot parse CSV: unexpected end of data")


def test_json_list_item_that_is_not_an_object(tmp_path):
    write(tmp_path, "p.json", json.dumps([PAIRS[0], "text"]))
    with pytest.raises(DataPrepError, match=r"p\.json\[1\]: expected a JSON object, got a string"):
        run(data_prep, DataPrepParams(source="p.json"), tmp_path)
    write(tmp_path, "d.json", json.dumps({"data": [PAIRS[0], 3]}))
    with pytest.raises(DataPrepError, match=r"d\.json: data\[1\]: expected a JSON object, got a number"):
        run(data_prep, DataPrepParams(source="d.json"), tmp_path)


@pytest.mark.parametrize("rows, message", [
    ([{"query": "a", "positive": "x", "positive_id": "P"}, {"query": "b", "positive": "y", "positive_id": "P"}],
     r"p\.jsonl:2: passage id 'P' already names a different passage \(first at p\.jsonl:1\)"),
    ([{"query": "a", "positive": "x", "query_id": "Q"}, {"query": "b", "positive": "y", "query_id": "Q"}],
     r"p\.jsonl:2: query id 'Q' already names a different query \(first at p\.jsonl:1\)"),
    ([{"query": "a", "positive": ["x", "y"], "positive_id": "P"}],
     r"p\.jsonl:1: positive_id names one passage but the row has a list of positives"),
])
def test_conflicting_ids_are_bad_rows(tmp_path, rows, message):
    write(tmp_path, "p.jsonl", jsonl(rows))
    with pytest.raises(DataPrepError, match=message):
        run(data_prep, DataPrepParams(source="p.jsonl"), tmp_path)


def test_ids_from_records_are_kept(tmp_path):
    rows = [{"query": "a", "positive": "x", "positive_id": "P", "query_id": "Q"},
            {"query": "a", "positive": "x", "positive_id": "P", "query_id": "Q"},
            {"query": "b", "positive": [], "query_id": "R"}]
    write(tmp_path, "p.jsonl", jsonl(rows))
    ctx, summary = run(data_prep, DataPrepParams(source="p.jsonl", split={"dev": 0, "test": 0}), tmp_path)
    assert summary["dropped/duplicate"] == 1 and summary["dropped/empty_passage"] == 1
    assert read_jsonl(out(ctx, "train_pairs", "pairs.jsonl")) == [
        {"query": "a", "positive": "x", "query_id": "Q", "positive_id": "P"}]


def test_explicit_format_overrides_extension(tmp_path):
    write(tmp_path, "p.txt", jsonl(PAIRS[:2]))
    _, summary = run(data_prep, DataPrepParams(source="p.txt", format="jsonl", split={"dev": 0, "test": 0}), tmp_path)
    assert summary["queries/train"] == 2


def test_length_limits_are_counted(tmp_path):
    write(tmp_path, "p.jsonl", jsonl(PAIRS[:4] + [{"query": "A longer question?", "positive": "short"}]))
    params = DataPrepParams(source="p.jsonl", clean={"min_chars": {"query": 14}, "max_chars": {"passage": 22}},
                            split={"dev": 0, "test": 0})
    _, summary = run(data_prep, params, tmp_path)
    # The first three questions have 13 characters; "FAISS searches vectors." has 23.
    assert summary["dropped/query_too_short"] == 3
    assert summary["dropped/passage_too_long"] == 1
    assert summary["queries/train"] == 1


# ---------------------------------------------------------------------------------------------
# SQuAD and BEIR
# ---------------------------------------------------------------------------------------------


def test_squad_loader_on_the_shipped_sample(tmp_path):
    params = DataPrepParams(source=CMRC_SAMPLE, split={"by": "passage", "dev": 0.1, "test": 0.3})
    ctx, summary = run(data_prep, params, tmp_path, recipe_dir=RECIPES)
    assert summary["records_in"] == 556 and summary["bad_rows"] == 0 and summary["dropped"] == 0
    assert summary["corpus/passages"] == 150
    assert summary["queries/train"] + summary["queries/dev"] + summary["queries/test"] == 556
    corpus = read_jsonl(out(ctx, "corpus", "corpus.jsonl"))
    assert corpus[0]["_id"] == "DEV_0" and corpus[0]["title"] == "战国无双3"
    answers = {a["_id"]: a["answers"] for a in read_jsonl(out(ctx, "test", "answers.jsonl"))}
    assert len(answers) == summary["queries/test"] and all(answers.values())
    if "DEV_0_QUERY_0" in answers:  # the answers are deduplicated: three identical annotations -> one
        assert answers["DEV_0_QUERY_0"] == ["光荣和ω-force"]


def test_squad_layout_problems(tmp_path):
    doc = {"data": [{"title": "T", "paragraphs": [
        {"context": "Paris is the capital of France.", "qas": [
            {"id": "a", "question": "Capital of France?", "answers": [{"text": "Paris", "answer_start": 0}]},
            {"id": "b", "answers": []},
            {"id": "c", "question": "Capital of France?", "answers": [{"text": "Paris"}]},
            {"id": "d", "question": "Unanswerable?", "answers": [], "is_impossible": True}]},
        {"context": "   ", "qas": [{"id": "e", "question": "Empty context?", "answers": ["x"]}]},
        {"qas": []}]}]}
    write(tmp_path, "s.json", json.dumps(doc))
    with pytest.raises(DataPrepError, match=r"s\.json: data\[0\]\.paragraphs\[0\]\.qas\[1\]: missing field 'question'"):
        run(data_prep, DataPrepParams(source="s.json"), tmp_path)
    _, summary = run(data_prep, DataPrepParams(source="s.json", on_error="skip", split={"dev": 0, "test": 0}),
                     tmp_path / "skip", recipe_dir=tmp_path)
    assert summary["bad_rows"] == 2  # qas[1] and paragraphs[2] (no context)
    assert summary["dropped/duplicate"] == 1 and summary["dropped/unanswerable"] == 1
    assert summary["dropped/empty_passage"] == 1
    assert summary["queries/train"] == 1 and summary["corpus/passages"] == 1


def test_squad_structure_problems_are_bad_rows(tmp_path):
    doc = {"data": [
        {"title": "A", "paragraphs": [{"id": "P", "context": "Some text.", "qas": [
            {"id": "x", "question": "First?", "answers": ["t"]}, "not a question",
            {"id": "x", "question": "Second?", "answers": ["t"]}]}]},
        {"title": "B"},
        {"title": "C", "paragraphs": [{"context": ["not", "text"], "qas": [{"question": "Q?"}, {"question": "R?"}]},
                                      {"context": "More text.", "qas": "none"}]}]}
    write(tmp_path, "s.json", json.dumps(doc))
    _, summary = run(data_prep, DataPrepParams(source="s.json", on_error="skip", split={"dev": 0, "test": 0}), tmp_path)
    examples = summary["bad_row_examples"]
    assert summary["bad_rows"] == 5 and summary["queries/train"] == 1
    assert examples == [
        "s.json: data[0].paragraphs[0].qas[1]: expected a question object, got a string",
        "s.json: data[0].paragraphs[0].qas[2]: duplicate question id 'x' (first at s.json: data[0].paragraphs[0].qas[0])",
        "s.json: data[1]: expected an article object with a 'paragraphs' list",
        "s.json: data[2].paragraphs[0]: field 'context' should be text, got a list",
        "s.json: data[2].paragraphs[1]: missing field 'qas' (a list of questions)",
    ]


def test_squad_format_on_other_json(tmp_path):
    write(tmp_path, "p.json", json.dumps(PAIRS))
    with pytest.raises(DataPrepError, match=r"p\.json: format squad expects"):
        run(data_prep, DataPrepParams(source="p.json", format="squad"), tmp_path)


def _beir(folder: Path, qrels_text: str, header: bool = True) -> None:
    write(folder, "corpus.jsonl", jsonl([
        {"_id": "d1", "title": "BM25", "text": "BM25 ranks documents."},
        {"_id": "d2", "title": "FAISS", "text": "FAISS searches vectors."},
        {"_id": "d3", "title": "BM25", "text": "BM25 ranks documents."},  # duplicate of d1
        {"_id": "d4", "title": "", "text": "  "}]))
    write(folder, "queries.jsonl", jsonl([
        {"_id": "q1", "text": "what is bm25"}, {"_id": "q2", "text": "vector search"},
        {"_id": "q3", "text": "no judgement"}, {"_id": "q4", "text": "judged irrelevant"}]))
    write(folder, "qrels.tsv", ("query-id\tcorpus-id\tscore\n" if header else "") + qrels_text)


@pytest.mark.parametrize("header", [True, False])
def test_beir_folder(tmp_path, header):
    _beir(tmp_path / "beir", "q1\td3\t1\nq2\td2\t2\nq2\td4\t1\nq4\td2\t0\n", header)
    write(tmp_path / "beir", "answers.jsonl", jsonl([{"_id": "q1", "answers": ["a ranking function"]}]))
    ctx, summary = run(data_prep, DataPrepParams(source="beir", split={"dev": 0, "test": 0.5, "seed": 1}), tmp_path)
    assert summary["records_in"] == 4 and summary["bad_rows"] == 0
    assert summary["corpus/passages"] == 2 and summary["corpus/merged_duplicates"] == 1
    assert summary["dropped/empty_passage"] == 1 and summary["dropped/no_positive"] == 2
    assert summary["queries/train"] + summary["queries/test"] == 2
    test_rows = qrels(out(ctx, "test", "qrels.tsv"))
    train_rows = [(p["query_id"], p["positive_id"]) for p in read_jsonl(out(ctx, "train_pairs", "pairs.jsonl"))]
    assert sorted(test_rows + [(q, p, "1" if q == "q1" else "2") for q, p in train_rows]) == [
        ("q1", "d1", "1"), ("q2", "d2", "2")]  # d3 merged into d1; graded score kept
    assert out(ctx, "test", "corpus.jsonl").read_bytes() == out(ctx, "corpus", "corpus.jsonl").read_bytes()
    assert out(ctx, "test", "answers.jsonl").is_file()


def test_beir_qrels_problems(tmp_path):
    _beir(tmp_path / "beir", "q1\td1\t1\nq9\td1\t1\nq2\td7\t1\nq2\td2\n")
    with pytest.raises(DataPrepError, match=r"beir/qrels\.tsv:3: unknown query-id 'q9' \(not in queries\.jsonl\)"):
        run(data_prep, DataPrepParams(source="beir"), tmp_path)
    _, summary = run(data_prep, DataPrepParams(source="beir", on_error="skip"), tmp_path / "s", recipe_dir=tmp_path)
    assert summary["bad_rows"] == 3
    assert any("unknown corpus-id 'd7'" in e for e in summary["bad_row_examples"])
    assert any("beir/qrels.tsv:5: expected 3 tab-separated columns" in e for e in summary["bad_row_examples"])


def test_beir_record_problems(tmp_path):
    _beir(tmp_path / "beir", "q1\td1\tx\nq1\t0\td1\t1\nq2\td2\t1\n")
    with open(tmp_path / "beir" / "corpus.jsonl", "a", encoding="utf-8") as fh:
        fh.write(jsonl([{"title": "no id", "text": "t"}, {"_id": " ", "text": "t"}, {"_id": "d9"}]))
    with open(tmp_path / "beir" / "queries.jsonl", "a", encoding="utf-8") as fh:
        fh.write(jsonl([{"_id": "q8"}]))
    write(tmp_path / "beir", "answers.jsonl", jsonl([{"_id": "q1", "answers": "BM25"}, {"_id": "q7", "answers": []}]))
    _, summary = run(data_prep, DataPrepParams(source="beir", on_error="skip", split={"dev": 0, "test": 0}), tmp_path)
    assert summary["bad_rows"] == 6 and summary["queries/train"] == 2  # the TREC-style row (4 columns) is read
    assert summary["bad_row_examples"] == [
        "beir/corpus.jsonl:5: missing field '_id' (the record has: title, text)",
        "beir/corpus.jsonl:6: empty '_id'",
        "beir/corpus.jsonl:7: missing field 'text' (the record has: _id)",
        "beir/queries.jsonl:5: missing field 'text' (the record has: _id)",
        "beir/qrels.tsv:2: score 'x' is not a number",
    ]
    _beir(tmp_path / "b2", "q1\td1\t1\n")
    write(tmp_path / "b2", "answers.jsonl", jsonl([{"_id": "q1", "answers": "BM25"}, {"_id": "q7", "answers": []}]))
    with pytest.raises(DataPrepError, match=r"b2/answers\.jsonl:2: unknown query _id 'q7'"):
        run(data_prep, DataPrepParams(source="b2"), tmp_path / "f", recipe_dir=tmp_path)


def test_beir_cleaning_drops_queries_and_their_qrels(tmp_path):
    _beir(tmp_path / "beir", "q1\td1\t1\nq5\td2\t1\nq2\td4\t1\nq2\td2\t1\n")
    with open(tmp_path / "beir" / "queries.jsonl", "a", encoding="utf-8") as fh:
        fh.write(jsonl([{"_id": "q5", "text": "  "}, {"_id": "q5", "text": "again"}]))
    with pytest.raises(DataPrepError, match=r"beir/queries\.jsonl:6: duplicate _id 'q5'"):
        run(data_prep, DataPrepParams(source="beir"), tmp_path)
    _, summary = run(data_prep, DataPrepParams(source="beir", on_error="skip", split={"dev": 0, "test": 0}),
                     tmp_path / "s", recipe_dir=tmp_path)
    # q5 is dropped as empty and its qrels row is skipped quietly; d4 (empty) likewise.
    assert summary["bad_rows"] == 1 and summary["dropped/empty_query"] == 1
    assert summary["queries/train"] == 2 and summary["pairs/train"] == 2


def test_beir_qrels_folder_and_missing_files(tmp_path):
    _beir(tmp_path / "beir", "")
    (tmp_path / "beir" / "qrels.tsv").unlink()
    write(tmp_path / "beir", "qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    write(tmp_path / "beir", "qrels/train.tsv", "q2\td2\t1\n")
    _, summary = run(data_prep, DataPrepParams(source="beir", split={"dev": 0, "test": 0}), tmp_path)
    assert summary["queries/train"] == 2
    (tmp_path / "beir" / "queries.jsonl").unlink()
    with pytest.raises(DataPrepError, match=r"beir: not a BEIR folder: missing queries\.jsonl \(found: corpus\.jsonl, qrels\)"):
        run(data_prep, DataPrepParams(source="beir"), tmp_path / "again", recipe_dir=tmp_path)


def test_beir_duplicate_id(tmp_path):
    _beir(tmp_path / "beir", "q1\td1\t1\n")
    with open(tmp_path / "beir" / "queries.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"_id": "q1", "text": "again"}) + "\n")
    with pytest.raises(DataPrepError, match=r"beir/queries\.jsonl:5: duplicate _id 'q1'"):
        run(data_prep, DataPrepParams(source="beir"), tmp_path)


def test_fields_with_a_fixed_layout_source(tmp_path):
    _beir(tmp_path / "beir", "q1\td1\t1\n")
    with pytest.raises(DataPrepError, match=r"beir: fields apply to json/jsonl/csv records; this source is beir"):
        run(data_prep, DataPrepParams(source="beir", fields={"query": "text"}), tmp_path)


def test_shipped_covid_beir_sample(tmp_path):
    ctx, summary = run(data_prep, DataPrepParams(source="data/covid_faq_sample", split={"by": "passage"}), tmp_path,
                       recipe_dir=RECIPES)
    log = (ctx.entry_dir / "log.txt").read_text(encoding="utf-8")
    assert "large groups of queries sharing passages cannot be divided" in log  # FAQ items link many queries
    assert summary["corpus/passages"] == 129 and summary["records_in"] == 56 and summary["bad_rows"] == 0
    assert sum(summary[f"queries/{s}"] for s in ("train", "dev", "test")) == 56
    assert not out(ctx, "test", "answers.jsonl").exists()  # no answers in this source


# ---------------------------------------------------------------------------------------------
# splits
# ---------------------------------------------------------------------------------------------


def _shared_passage_rows(n_queries: int = 120) -> list[dict]:
    # Every passage is positive for several queries; some queries have two positives, chaining groups.
    rows = []
    for i in range(n_queries):
        rows.append({"query": f"query {i}", "positive": f"passage {i // 4}"})
        if i % 10 == 0:
            rows.append({"query": f"query {i}", "positive": f"passage {(i // 4) + 1}"})
    return rows


@pytest.mark.parametrize("seed", [0, 1, 13])
def test_split_by_passage_never_shares_a_passage(tmp_path, seed):
    write(tmp_path, "p.jsonl", jsonl(_shared_passage_rows()))
    ctx, summary = run(data_prep, DataPrepParams(source="p.jsonl", split={"by": "passage", "dev": 0.2, "test": 0.3}),
                       tmp_path, seed=seed)
    train = {p["positive_id"] for p in read_jsonl(out(ctx, "train_pairs", "pairs.jsonl"))}
    dev = {r[1] for r in qrels(out(ctx, "dev", "qrels.tsv"))}
    test = {r[1] for r in qrels(out(ctx, "test", "qrels.tsv"))}
    assert train and dev and test
    assert not (train & dev) and not (train & test) and not (dev & test)
    assert summary["queries/train"] + summary["queries/dev"] + summary["queries/test"] == 120
    assert 0.15 <= summary["queries/test"] / 120 <= 0.45  # close to the fraction despite groups


def test_split_by_passage_on_the_cmrc_sample(tmp_path):
    ctx, _ = run(data_prep, DataPrepParams(source=CMRC_SAMPLE, split={"by": "passage", "dev": 0.1, "test": 0.3}),
                 tmp_path, recipe_dir=RECIPES)
    train = {p["positive_id"] for p in read_jsonl(out(ctx, "train_pairs", "pairs.jsonl"))}
    test = {r[1] for r in qrels(out(ctx, "test", "qrels.tsv"))}
    dev = {r[1] for r in qrels(out(ctx, "dev", "qrels.tsv"))}
    assert not (train & test) and not (train & dev) and not (dev & test)


def test_split_by_query_shares_passages_and_is_seeded(tmp_path):
    write(tmp_path, "p.jsonl", jsonl(_shared_passage_rows()))

    def split_of(seed: int, split_seed: int | None = None) -> list[str]:
        params = DataPrepParams(source="p.jsonl", split={"by": "query", "dev": 0.2, "test": 0.3, "seed": split_seed})
        ctx, _ = run(data_prep, params, tmp_path / f"{seed}-{split_seed}", recipe_dir=tmp_path, seed=seed)
        return [r[0] for r in qrels(out(ctx, "test", "qrels.tsv"))]

    assert split_of(1) == split_of(1)
    assert split_of(1) != split_of(2)
    assert split_of(1, split_seed=7) == split_of(2, split_seed=7)  # split.seed overrides the recipe seed
    assert len(set(split_of(1))) == 36  # round(120 * 0.3)
    ctx = make_ctx(tmp_path / "1-None")
    train = {p["positive_id"] for p in read_jsonl(out(ctx, "train_pairs", "pairs.jsonl"))}
    assert train & {r[1] for r in qrels(out(ctx, "test", "qrels.tsv"))}  # unlike by: passage


def test_split_helpers():
    assert split_sizes(10, 0.1, 0.2) == {"train": 7, "dev": 1, "test": 2}
    assert split_sizes(2, 0.3, 0.3) == {"train": 1, "dev": 0, "test": 1}  # train keeps one
    assert split_sizes(0, 0.1, 0.2) == {"train": 0, "dev": 0, "test": 0}
    assignment = split_items(range(100), 0.1, 0.2, seed=3)
    assert sorted(assignment.values()).count("test") == 20 and list(assignment.values()).count("dev") == 10
    groups = connected_groups({"a": ["p1"], "b": ["p2"], "c": ["p1", "p3"], "d": ["p3"], "e": ["p4"]})
    assert sorted(map(sorted, groups)) == [["a", "c", "d"], ["b"], ["e"]]
    by_group = split_groups(groups, 0.2, 0.2, seed=0)
    assert by_group["a"] == by_group["c"] == by_group["d"]


# ---------------------------------------------------------------------------------------------
# end to end: data_prep with a real NodeContext
# ---------------------------------------------------------------------------------------------


def test_data_prep_end_to_end_writes_every_declared_output(tmp_path):
    params = DataPrepParams(source=CMRC_SAMPLE, split={"by": "query", "dev": 0.1, "test": 0.3},
                            sft_input_template="【{title}】{passage}\n问题：{query}")
    ctx = NodeContext(node="prep", entry_dir=tmp_path / "entry", recipe_dir=RECIPES, seed=13)
    data_prep(params, {}, ctx)
    summary = json.loads((ctx.entry_dir / "metrics.json").read_text(encoding="utf-8"))
    # The orchestrator's rule: every declared output is a non-empty folder.
    for name in _REGISTRY["data_prep"].outputs:
        folder = ctx.entry_dir / "outputs" / name
        assert folder.is_dir() and any(folder.iterdir()), name
    assert sorted(p.name for p in (ctx.entry_dir / "outputs" / "dev").iterdir()) == [
        "answers.jsonl", "corpus.jsonl", "qrels.tsv", "queries.jsonl"]
    corpus = read_jsonl(out(ctx, "corpus", "corpus.jsonl"))
    assert len(corpus) == 150 and set(corpus[0]) == {"_id", "title", "text"}
    ids = {c["_id"] for c in corpus}
    pairs = read_jsonl(out(ctx, "train_pairs", "pairs.jsonl"))
    assert len(pairs) == summary["pairs/train"] == summary["queries/train"] == 333
    assert set(pairs[0]) == {"query", "positive", "query_id", "positive_id"} and {p["positive_id"] for p in pairs} <= ids
    for split in ("dev", "test"):
        queries = read_jsonl(out(ctx, split, "queries.jsonl"))
        assert len(queries) == summary[f"queries/{split}"] and set(queries[0]) == {"_id", "text"}
        rows = qrels(out(ctx, split, "qrels.tsv"))
        assert {r[0] for r in rows} == {q["_id"] for q in queries} and {r[1] for r in rows} <= ids
    assert (summary["queries/dev"], summary["queries/test"]) == (56, 167)
    train_q = {p["query_id"] for p in pairs}
    assert not train_q & {q["_id"] for q in read_jsonl(out(ctx, "test", "queries.jsonl"))}
    sft = read_jsonl(out(ctx, "train_sft", "sft.jsonl"))
    assert len(sft) == summary["sft/train"] == 333
    first = sft[0]
    assert first["instruction"] == params.sft_instruction
    assert first["input"].startswith("【") and "\n问题：" in first["input"]
    passage_of = {p["query"]: p["positive"] for p in pairs}
    question = first["input"].split("\n问题：")[1]
    # Train pairs carry "title\ntext" (as the corpus is indexed); the SFT input shows the text after its title.
    title, text = passage_of[question].split("\n", 1)
    assert first["input"].startswith(f"【{title}】{text}") and first["output"] in text
    assert len(read_jsonl(out(ctx, "dev_sft", "sft.jsonl"))) == summary["sft/dev"] == 56
    log = (ctx.entry_dir / "log.txt").read_text(encoding="utf-8")
    assert "split: train 333, dev 56, test 167 queries" in log


# ---------------------------------------------------------------------------------------------
# sft_data_prep
# ---------------------------------------------------------------------------------------------


def test_sft_alpaca_sample(tmp_path):
    ctx, summary = run(sft_data_prep, SftDataPrepParams(source="data/alpaca_zh_sample.json"), tmp_path,
                       recipe_dir=RECIPES)
    assert summary["records_in"] == 200
    assert (summary["records/train"], summary["records/dev"], summary["records/test"]) == (140, 20, 40)
    rows = read_jsonl(out(ctx, "train", "sft.jsonl"))
    assert len(rows) == 140 and set(rows[0]) == {"instruction", "input", "output"}


def test_sft_history_to_sharegpt(tmp_path):
    params = SftDataPrepParams(source="data/oaast_sft_zh_sample.json", output_format="sharegpt",
                               split={"dev": 0, "test": 0})
    ctx, summary = run(sft_data_prep, params, tmp_path, recipe_dir=RECIPES)
    assert summary["with_history"] == 23 and summary["records/train"] == 60
    rows = read_jsonl(out(ctx, "train", "sft.jsonl"))
    multi = [r for r in rows if len(r["conversations"]) > 2]
    assert len(multi) == 23
    assert [t["from"] for t in multi[0]["conversations"]][:4] == ["human", "gpt", "human", "gpt"]


def test_sft_conversations_and_messages_become_alpaca(tmp_path):
    rows = [
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"},
                           {"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}], "system": "be brief"},
        {"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "q"},
                      {"role": "assistant", "content": "a"}]},
        {"instruction": "总结", "input": " 原文 ", "output": "总结", "history": [["u", "a"]]},
        {"instruction": "总结", "input": "原文", "output": "总结", "history": [["u", "a"]]},
    ]
    write(tmp_path, "c.jsonl", jsonl(rows))
    ctx, summary = run(sft_data_prep, SftDataPrepParams(source="c.jsonl", split={"dev": 0, "test": 0}), tmp_path)
    assert summary["dropped/duplicate"] == 1
    got = read_jsonl(out(ctx, "train", "sft.jsonl"))
    assert got[0] == {"instruction": "2+2?", "input": "", "output": "4", "system": "be brief", "history": [["hi", "hello"]]}
    assert got[1] == {"instruction": "q", "input": "", "output": "a", "system": "sys"}
    assert got[2] == {"instruction": "总结", "input": "原文", "output": "总结", "history": [["u", "a"]]}


@pytest.mark.parametrize("row, message", [
    ({"conversations": [{"from": "human", "value": "q"}]}, r"c\.jsonl:1: the conversation must end with an assistant turn"),
    ({"conversations": [{"from": "gpt", "value": "a"}]}, r"conversations\[0\]: expected a user turn, got role 'gpt'"),
    ({"conversations": "text"}, r"field 'conversations' should be a non-empty list"),
    ({"instruction": "q", "output": "a", "history": [["only one"]]}, r"history\[0\] should be a \[user, assistant\] pair"),
    ({"instruction": "q"}, r"missing field 'output' \(looked for: output, response, answer\)"),
])
def test_sft_bad_records(tmp_path, row, message):
    write(tmp_path, "c.jsonl", jsonl([row]))
    with pytest.raises(DataPrepError, match=message):
        run(sft_data_prep, SftDataPrepParams(source="c.jsonl"), tmp_path)


@pytest.mark.parametrize("row, message", [
    ({"conversations": ["hi"]}, r"conversations\[0\] should be an object"),
    ({"conversations": [{"from": "human"}]}, r"conversations\[0\] needs 'from' and 'value'"),
    ({"instruction": "q", "output": "a", "history": "u: a"}, r"field 'history' should be a list"),
])
def test_sft_bad_turns(tmp_path, row, message):
    write(tmp_path, "c.jsonl", jsonl([row]))
    with pytest.raises(DataPrepError, match=message):
        run(sft_data_prep, SftDataPrepParams(source="c.jsonl"), tmp_path)


def test_sft_with_nothing_usable(tmp_path):
    write(tmp_path, "c.jsonl", jsonl([{"instruction": "q"}, {"instruction": " ", "output": "a"}]))
    with pytest.raises(DataPrepError, match=r"c\.jsonl: no usable records \(2 read; 1 bad; 1 dropped as "
                                            r"empty_instruction; first problem: c\.jsonl:1: missing field 'output'"):
        run(sft_data_prep, SftDataPrepParams(source="c.jsonl", on_error="skip"), tmp_path)


def test_sft_from_mapped_csv_columns(tmp_path):
    write(tmp_path, "qa.csv", "title,ask,answer\n头疼,头疼怎么办？,多休息。\n头疼,头疼怎么办？,多休息。\n胃痛,胃痛吃什么？,\n")
    params = SftDataPrepParams(source="qa.csv", fields={"instruction": "ask", "output": "answer"},
                               split={"dev": 0, "test": 0}, clean={"dedupe": False})
    ctx, summary = run(sft_data_prep, params, tmp_path)
    assert summary["records/train"] == 2 and summary["dropped/empty_output"] == 1  # duplicates kept: dedupe off
    assert read_jsonl(out(ctx, "train", "sft.jsonl"))[0] == {"instruction": "头疼怎么办？", "input": "", "output": "多休息。"}


# ---------------------------------------------------------------------------------------------
# cls_data_prep
# ---------------------------------------------------------------------------------------------


def _senti_csv(n_pos: int = 60, n_neg: int = 30) -> str:
    lines = ["label,review"]
    lines += [f"1,很好 {i}" for i in range(n_pos)] + [f"0,太差 {i}" for i in range(n_neg)]
    return "\n".join(lines) + "\n1,很好 0\n1,\n"


def test_cls_label_map_stratified_split(tmp_path):
    write(tmp_path, "senti.csv", _senti_csv())
    params = ClsDataPrepParams(source="senti.csv", fields={"text": "review"}, label_map={1: "positive", 0: "negative"},
                               split={"dev": 0.1, "test": 0.2})
    ctx, summary = run(cls_data_prep, params, tmp_path)
    assert summary["records_in"] == 92 and summary["dropped/duplicate"] == 1 and summary["dropped/empty_text"] == 1
    assert summary["labels/test"] == {"negative": 6, "positive": 12}
    assert summary["labels/dev"] == {"negative": 3, "positive": 6}
    rows = read_jsonl(out(ctx, "train", "text_label.jsonl"))
    assert len(rows) == summary["records/train"] == 63
    assert all(set(r) == {"text", "label"} and r["label"] in ("positive", "negative") for r in rows)
    assert json.loads(out(ctx, "dev", "labels.json").read_text(encoding="utf-8")) == ["negative", "positive"]


def test_cls_unknown_label_is_a_bad_row(tmp_path):
    write(tmp_path, "senti.csv", "label,review\n1,好\n2,一般\n")
    params = ClsDataPrepParams(source="senti.csv", label_map={"1": "positive", "0": "negative"})
    with pytest.raises(DataPrepError, match=r"senti\.csv:3: label '2' is not in label_map \(keys: 1, 0\)"):
        run(cls_data_prep, params, tmp_path)


def test_cls_empty_label_and_empty_splits(tmp_path):
    write(tmp_path, "c.jsonl", jsonl([{"text": "a", "label": " "}, {"text": "b", "label": "x"}, {"text": "c", "label": "y"}]))
    ctx, summary = run(cls_data_prep, ClsDataPrepParams(source="c.jsonl", split={"dev": 0.1, "test": 0.1}), tmp_path)
    assert summary["dropped/empty_label"] == 1
    assert summary["records/train"] == 2 and summary["records/dev"] == summary["records/test"] == 0
    assert out(ctx, "dev", "text_label.jsonl").read_text() == ""  # written, empty
    log = (ctx.entry_dir / "log.txt").read_text(encoding="utf-8")
    assert "warning: dev is empty (2 records are too few for dev: 0.1)" in log


def test_cls_missing_label(tmp_path):
    write(tmp_path, "c.jsonl", jsonl([{"text": "a", "label": "x"}, {"text": "b", "tag": "y"}]))
    with pytest.raises(DataPrepError, match=r"c\.jsonl:2: missing field 'label' \(looked for: label\)"):
        run(cls_data_prep, ClsDataPrepParams(source="c.jsonl"), tmp_path)


def test_cls_json_labels_without_map(tmp_path):
    write(tmp_path, "c.json", json.dumps([{"text": "a", "label": 1}, {"text": "b", "label": 0}, {"text": "c", "label": 1}]))
    ctx, summary = run(cls_data_prep, ClsDataPrepParams(source="c.json", split={"dev": 0, "test": 0, "stratify": False}),
                       tmp_path)
    assert summary["labels/train"] == {"0": 1, "1": 2}
