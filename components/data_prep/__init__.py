"""Data preparation: load, map fields, clean, split and convert training data.

Three kinds, one per kind of training data, so that every declared output is always real data and
the graph checker can reject a wrong edge (an SFT trainer fed a classification set) before running:

- ``data_prep``: retrieval / QA data (SQuAD-style JSON, BEIR folders, (query, positive) records)
  -> corpus, train pairs, BEIR dev/test sets, RAG SFT records;
- ``sft_data_prep``: instruction data (alpaca, sharegpt, or mapped columns) -> train/dev/test SFT sets;
- ``cls_data_prep``: text classification data ({text, label}) -> train/dev/test text_label sets.

Only the standard library and pydantic are imported here: `orch validate` imports this module.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from orchestrator.api import Artifact, RunContext, component, write_jsonl

from ..rag_prompt import RagPrompt
from .clean import Cleaner, Dropped
from .loaders import BadRows, DataPrepError, FieldMap, Row, RowProblem, open_source
from .params import (CLS_FIELDS, CLS_REQUIRED, RETRIEVAL_FIELDS, RETRIEVAL_REQUIRED, SFT_FIELDS, SFT_REQUIRED,
                     ClsDataPrepParams, DataPrepParams, SftDataPrepParams)
from .records import cls_record, sft_record, to_sharegpt
from .retrieval import Query, RetrievalSet
from .split import SPLITS, connected_groups, split_groups, split_items, split_sizes, split_stratified

__all__ = [
    "DataPrepError", "DataPrepParams", "SftDataPrepParams", "ClsDataPrepParams",
    "data_prep", "sft_data_prep", "cls_data_prep",
]

RETRIEVAL_FORMATS = ("auto", "json", "jsonl", "csv", "beir", "squad")
RECORD_FORMATS = ("auto", "json", "jsonl", "csv")


# ---------------------------------------------------------------------------------------------
# data_prep: retrieval / QA
# ---------------------------------------------------------------------------------------------


@component(
    "data_prep",
    params=DataPrepParams,
    outputs={"corpus": "corpus", "train_pairs": "pairs", "dev": "ir_eval_set", "test": "ir_eval_set",
             "train_sft": "sft", "dev_sft": "sft"},
    runs_as="task",
    version="2",
)
def data_prep(params: DataPrepParams, inputs: dict[str, Artifact], ctx: RunContext) -> None:
    """Retrieval / QA data -> corpus, (query, positive) train pairs, BEIR dev/test sets and RAG SFT records.

    Sources: SQuAD-style JSON (questions become queries, their paragraph the one positive passage,
    answers kept for EM/F1), BEIR folders (corpus.jsonl, queries.jsonl, qrels.tsv), or records with
    a query and a positive passage (json/jsonl/csv; rows with the same query are merged). Identical
    passages are stored once. The split is by query, or by passage (queries sharing a positive
    passage stay together, so no positive passage is in two splits). dev/test are self-contained
    BEIR folders (the full corpus, queries.jsonl, qrels.tsv, and answers.jsonl when the source has
    answers). train_sft/dev_sft hold one alpaca record per answered query: the fixed instruction,
    the passage and question in ``sft_input_template``, the first answer as output; they are empty
    files when the source has no answers.
    """
    display, path = params.source, ctx.resolve_path(params.source)
    bad = BadRows(params.on_error)
    cleaner = Cleaner(params.clean)
    fields = FieldMap(params.fields, RETRIEVAL_FIELDS, RETRIEVAL_REQUIRED)
    shape, payload = open_source(path, display, params.format, RETRIEVAL_FORMATS, params.encoding,
                                 params.csv_delimiter, bad, fields)
    if params.fields and shape in ("beir", "squad"):
        raise DataPrepError(f"{display}: fields apply to json/jsonl/csv records; this source is {shape} "
                            f"(a fixed layout): remove fields")
    ctx.log(f"reading {display} ({shape})")
    data = RetrievalSet(cleaner, bad)
    if shape == "beir":
        data.add_beir(payload, display, params.encoding)
    elif shape == "squad":
        data.add_squad(payload, display)
    else:
        _consume(payload, bad, cleaner, lambda row: data.add_record(row.loc, row.data, fields))
    data.drop_queries_without_positives()
    _log_problems(ctx, bad, cleaner)
    if not data.queries:
        raise DataPrepError(f"{display}: no usable queries ({_why_empty(data.records_in, bad, cleaner)})")

    seed = params.split.seed if params.split.seed is not None else ctx.seed
    qids = list(data.queries)
    if params.split.by == "query":
        assign = split_items(qids, params.split.dev, params.split.test, seed)
    else:
        groups = connected_groups({qid: list(q.positives) for qid, q in data.queries.items()})
        assign = split_groups(groups, params.split.dev, params.split.test, seed)
        ctx.log(f"split by passage: {len(groups)} groups of queries sharing positive passages")
    by_split = {s: [data.queries[q] for q in qids if assign[q] == s] for s in SPLITS}
    _check_split_sizes(ctx, {s: len(v) for s, v in by_split.items()}, params.split.dev, params.split.test, "queries")

    corpus_file = ctx.output_dir("corpus") / "corpus.jsonl"
    write_jsonl(corpus_file, data.passages.values())
    pairs = write_jsonl(ctx.output_dir("train_pairs") / "pairs.jsonl", _pairs(by_split["train"], data))
    for name in ("dev", "test"):
        _write_beir(ctx.output_dir(name), by_split[name], corpus_file, data.has_answers)
    sft_counts = {}
    prompt = rag_prompt_of(params)
    for name, split in (("train_sft", "train"), ("dev_sft", "dev")):
        sft_counts[split] = write_jsonl(ctx.output_dir(name) / "sft.jsonl", _rag_sft(by_split[split], data, prompt))
        prompt.save(ctx.output_dir(name))  # the format, for lora_sft to carry into its adapter

    notes = []
    if not data.has_answers:
        notes.append("the source has no answers: train_sft and dev_sft are empty")
        ctx.log("note: " + notes[-1])
    summary = {
        "records_in": data.records_in,
        **_problem_summary(bad, cleaner),
        "corpus/passages": len(data.passages),
        "corpus/merged_duplicates": data.merged_passages,
        **{f"queries/{s}": len(by_split[s]) for s in SPLITS},
        "pairs/train": pairs,
        "sft/train": sft_counts["train"],
        "sft/dev": sft_counts["dev"],
        "split/by": params.split.by,
        "split/seed": seed,
    }
    if notes:
        summary["notes"] = notes
    ctx.log("wrote " + ", ".join(f"{k} {v}" for k, v in summary.items() if k.startswith(("corpus/p", "queries/", "pairs/", "sft/"))))
    ctx.set_summary(summary)


def _pairs(queries: list[Query], data: RetrievalSet) -> Iterable[dict[str, Any]]:
    for q in queries:
        for pid in q.positives:
            yield {"query": q.text, "positive": passage_text(data.passages[pid]), "query_id": q.id, "positive_id": pid}


def passage_text(doc: dict[str, str]) -> str:
    """How a passage is embedded, indexed and trained on everywhere: ``title\ntext`` (or the one that exists).
    Same convention as components.retrieval.passage_text, so train pairs match the corpus exactly."""
    title, text = (doc.get("title") or "").strip(), (doc.get("text") or "").strip()
    return f"{title}\n{text}" if title and text else (title or text)


def _write_beir(folder: Path, queries: list[Query], corpus_file: Path, with_answers: bool) -> None:
    shutil.copyfile(corpus_file, folder / "corpus.jsonl")
    write_jsonl(folder / "queries.jsonl", ({"_id": q.id, "text": q.text} for q in queries))
    with open(folder / "qrels.tsv", "w", encoding="utf-8") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for q in queries:
            for pid, score in q.positives.items():
                fh.write(f"{q.id}\t{pid}\t{score}\n")
    if with_answers:
        write_jsonl(folder / "answers.jsonl", ({"_id": q.id, "answers": q.answers} for q in queries))


def rag_prompt_of(params: DataPrepParams) -> RagPrompt:
    return RagPrompt(params.sft_instruction, params.sft_input_template, params.sft_passage_window)


def _rag_sft(queries: list[Query], data: RetrievalSet, prompt: RagPrompt) -> Iterable[dict[str, str]]:
    for q in queries:
        if not q.answers:
            continue
        # The best-scored positive (the first one on ties) is the passage the answer comes from.
        pid = max(q.positives, key=lambda p: q.positives[p])
        yield {"instruction": prompt.instruction, "input": prompt.input(q.text, [data.passages[pid]]),
               "output": q.answers[0]}


# ---------------------------------------------------------------------------------------------
# sft_data_prep: instruction data
# ---------------------------------------------------------------------------------------------


@component(
    "sft_data_prep",
    params=SftDataPrepParams,
    outputs={"train": "sft", "dev": "sft", "test": "sft"},
    runs_as="task",
    version="1",
)
def sft_data_prep(params: SftDataPrepParams, inputs: dict[str, Artifact], ctx: RunContext) -> None:
    """Instruction data -> train/dev/test SFT sets (alpaca or sharegpt records).

    Reads alpaca records {instruction, input, output[, system, history]}, sharegpt records
    {conversations: [{from, value}]} or OpenAI-style {messages: [{role, content}]}, or any records
    whose columns ``fields`` maps (e.g. {instruction: ask, output: answer} for a QA CSV).
    Conversations become alpaca records with history (the last turn is instruction/output).
    """
    records, counts = _read_records(params, ctx, SFT_FIELDS, SFT_REQUIRED,
                                    lambda row, fields, cleaner: sft_record(row.data, fields, cleaner))
    seed = params.split.seed if params.split.seed is not None else ctx.seed
    assign = split_items(range(len(records)), params.split.dev, params.split.test, seed)
    sizes = {}
    for split in SPLITS:
        rows = [r for i, r in enumerate(records) if assign[i] == split]
        if params.output_format == "sharegpt":
            rows = [to_sharegpt(r) for r in rows]
        sizes[split] = write_jsonl(ctx.output_dir(split) / "sft.jsonl", rows)
    _check_split_sizes(ctx, sizes, params.split.dev, params.split.test, "records")
    summary = {**counts, **{f"records/{s}": sizes[s] for s in SPLITS},
               "with_history": sum(1 for r in records if r.get("history")),
               "output_format": params.output_format, "split/seed": seed}
    ctx.log("wrote " + ", ".join(f"{s} {sizes[s]}" for s in SPLITS) + f" {params.output_format} records")
    ctx.set_summary(summary)


# ---------------------------------------------------------------------------------------------
# cls_data_prep: text classification
# ---------------------------------------------------------------------------------------------


@component(
    "cls_data_prep",
    params=ClsDataPrepParams,
    outputs={"train": "text_label", "dev": "text_label", "test": "text_label"},
    runs_as="task",
    version="1",
)
def cls_data_prep(params: ClsDataPrepParams, inputs: dict[str, Artifact], ctx: RunContext) -> None:
    """Text classification data -> train/dev/test {text, label} sets (+ labels.json, the label list).

    Labels are read as text ("1", not 1) and mapped through ``label_map`` when given. The split is
    stratified by label unless ``split.stratify`` is false.
    """
    records, counts = _read_records(params, ctx, CLS_FIELDS, CLS_REQUIRED,
                                    lambda row, fields, cleaner: cls_record(row.data, fields, cleaner, params.label_map))
    seed = params.split.seed if params.split.seed is not None else ctx.seed
    indices = list(range(len(records)))
    if params.split.stratify:
        assign = split_stratified(indices, [r["label"] for r in records], params.split.dev, params.split.test, seed)
    else:
        assign = split_items(indices, params.split.dev, params.split.test, seed)
    labels = sorted({r["label"] for r in records})
    sizes, per_split = {}, {}
    for split in SPLITS:
        rows = [r for i, r in enumerate(records) if assign[i] == split]
        folder = ctx.output_dir(split)
        sizes[split] = write_jsonl(folder / "text_label.jsonl", rows)
        (folder / "labels.json").write_text(json.dumps(labels, ensure_ascii=False) + "\n", encoding="utf-8")
        per_split[split] = dict(sorted(Counter(r["label"] for r in rows).items()))
    _check_split_sizes(ctx, sizes, params.split.dev, params.split.test, "records")
    summary = {**counts, **{f"records/{s}": sizes[s] for s in SPLITS},
               **{f"labels/{s}": per_split[s] for s in SPLITS}, "split/seed": seed}
    ctx.log("wrote " + ", ".join(f"{s} {sizes[s]}" for s in SPLITS) + f" records; labels {', '.join(labels)}")
    ctx.set_summary(summary)


# ---------------------------------------------------------------------------------------------
# Shared steps
# ---------------------------------------------------------------------------------------------


def _read_records(params, ctx: RunContext, known: dict, required: tuple, convert) -> tuple[list[dict], dict]:
    """Read, convert, clean and dedupe the records of a json/jsonl/csv source."""
    display, path = params.source, ctx.resolve_path(params.source)
    bad = BadRows(params.on_error)
    cleaner = Cleaner(params.clean)
    fields = FieldMap(params.fields, known, required)
    shape, rows = open_source(path, display, params.format, RECORD_FORMATS, params.encoding, params.csv_delimiter,
                              bad, fields)
    ctx.log(f"reading {display} ({shape})")
    records: list[dict] = []

    def take(row: Row) -> None:
        record = convert(row, fields, cleaner)
        if cleaner.is_duplicate(json.dumps(record, sort_keys=True, ensure_ascii=False)):
            raise Dropped("duplicate")
        records.append(record)

    records_in = _consume(rows, bad, cleaner, take)
    _log_problems(ctx, bad, cleaner)
    if not records:
        raise DataPrepError(f"{display}: no usable records ({_why_empty(records_in, bad, cleaner)})")
    return records, {"records_in": records_in, **_problem_summary(bad, cleaner)}


def _consume(rows: Iterable[Row], bad: BadRows, cleaner: Cleaner, take) -> int:
    n = 0
    for row in rows:
        n += 1
        try:
            take(row)
        except Dropped as drop:
            cleaner.drop(drop.reason)
        except RowProblem as exc:
            bad.report(row.loc, str(exc))
    return n


def _problem_summary(bad: BadRows, cleaner: Cleaner) -> dict[str, Any]:
    out: dict[str, Any] = {"bad_rows": bad.count, "dropped": sum(cleaner.dropped.values()), **cleaner.summary()}
    if bad.examples:
        out["bad_row_examples"] = list(bad.examples)
    return out


def _log_problems(ctx: RunContext, bad: BadRows, cleaner: Cleaner) -> None:
    if bad.count:
        ctx.log(f"skipped {bad.count} bad row(s) (on_error: skip); the first {len(bad.examples)}:")
        for example in bad.examples:
            ctx.log("  " + example)
    if cleaner.dropped:
        ctx.log("dropped by cleaning: " + ", ".join(f"{r} {n}" for r, n in sorted(cleaner.dropped.items())))


def _why_empty(records_in: int, bad: BadRows, cleaner: Cleaner) -> str:
    parts = [f"{records_in} read", f"{bad.count} bad"]
    parts += [f"{n} dropped as {r}" for r, n in sorted(cleaner.dropped.items())]
    if bad.examples:
        parts.append(f"first problem: {bad.examples[0]}")
    return "; ".join(parts)


def _check_split_sizes(ctx: RunContext, sizes: dict[str, int], dev: float, test: float, unit: str) -> None:
    total = sum(sizes.values())
    target = split_sizes(total, dev, test)
    ctx.log("split: " + ", ".join(f"{s} {sizes[s]}" for s in SPLITS) + f" {unit}")
    for s in ("dev", "test"):
        fraction = dev if s == "dev" else test
        if fraction > 0 and sizes[s] == 0:
            ctx.log(f"warning: {s} is empty ({total} {unit} are too few for {s}: {fraction})")
        elif total and abs(sizes[s] - target[s]) > max(2, 0.05 * total):
            ctx.log(f"warning: {s} has {sizes[s]} {unit}, {target[s]} asked: large groups of queries "
                    f"sharing passages cannot be divided")
