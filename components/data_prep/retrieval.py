"""Retrieval / QA data: passages, queries with their positive passages, and answers.

Three source shapes feed one ``RetrievalSet``:
- flat records (json / jsonl / csv): one (query, positive passage) pair per row, optionally with
  title, answer(s), ids and negatives; rows with the same query (text, or query_id) are merged;
- SQuAD-style JSON (CMRC2018 layout): questions are queries, their paragraph is the one positive;
- BEIR folders: corpus.jsonl, queries.jsonl, qrels.tsv (+ optional answers.jsonl).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .clean import Cleaner, Dropped
from .loaders import (BadRows, FieldMap, RowProblem, find_beir_files, iter_jsonl, iter_qrels, iter_squad,
                      read_text, text_list, text_value)


@dataclass
class Query:
    id: str
    text: str
    loc: str
    positives: dict[str, int | float] = field(default_factory=dict)  # passage id -> score (> 0)
    answers: list[str] = field(default_factory=list)

    def add_answers(self, answers: list[str]) -> None:
        for a in answers:
            if a and a not in self.answers:
                self.answers.append(a)


class RetrievalSet:
    """Passages and queries, deduplicated as they are added; drops are counted by the cleaner."""

    def __init__(self, cleaner: Cleaner, bad: BadRows):
        self.cleaner = cleaner
        self.bad = bad
        self.passages: dict[str, dict[str, str]] = {}  # id -> {_id, title, text}, in first-seen order
        self.queries: dict[str, Query] = {}
        self.records_in = 0
        self.merged_passages = 0  # same (title, text) under another source id
        self._by_content: dict[tuple[str, str], str] = {}
        self._alias: dict[str, str] = {}  # source passage id -> kept id
        self._passage_loc: dict[str, str] = {}
        self._query_by_text: dict[str, str] = {}
        self._dropped_passage_ids: set[str] = set()
        self._dropped_query_ids: set[str] = set()

    # -- building blocks -------------------------------------------------------------------
    def _new_id(self, prefix: str, taken: dict[str, Any]) -> str:
        n = len(taken)
        while f"{prefix}{n}" in taken or f"{prefix}{n}" in self._alias:
            n += 1
        return f"{prefix}{n}"

    def add_passage(self, text: str, title: str, loc: str, source_id: str | None = None) -> str:
        """The id of the passage (text, title), adding it if new. ``text`` is already cleaned."""
        if source_id is not None and source_id in self.passages:
            kept = self.passages[source_id]
            if (kept["title"], kept["text"]) != (title, text):
                raise RowProblem(f"passage id '{source_id}' already names a different passage "
                                 f"(first at {self._passage_loc[source_id]})")
            return source_id
        if source_id is not None and source_id in self._alias:
            return self._alias[source_id]
        key = (title, text)
        existing = self._by_content.get(key)
        if existing is not None and (source_id is None or self.cleaner.params.dedupe):
            if source_id is not None:
                self._alias[source_id] = existing
                self.merged_passages += 1
            return existing
        pid = source_id if source_id is not None else self._new_id("p", self.passages)
        self.passages[pid] = {"_id": pid, "title": title, "text": text}
        self._passage_loc[pid] = loc
        self._by_content.setdefault(key, pid)
        return pid

    def passage_id(self, source_id: str) -> str | None:
        if source_id in self.passages:
            return source_id
        return self._alias.get(source_id)

    def add_query(self, text: str, loc: str, source_id: str | None = None, merge_by_text: bool = False) -> Query:
        """The query with this id (or, with ``merge_by_text``, this text), adding it if new."""
        if source_id is None and merge_by_text and text in self._query_by_text:
            return self.queries[self._query_by_text[text]]
        if source_id is not None and source_id in self.queries:
            query = self.queries[source_id]
            if query.text != text:
                raise RowProblem(f"query id '{source_id}' already names a different query (first at {query.loc})")
            return query
        qid = source_id if source_id is not None else self._new_id("q", self.queries)
        query = Query(qid, text, loc)
        self.queries[qid] = query
        self._query_by_text.setdefault(text, qid)
        return query

    def passage_text(self, value: Any, name: str = "positive") -> str:
        return self.cleaner.text(text_value(value, name), "passage")

    # -- flat records ----------------------------------------------------------------------
    def add_record(self, loc: str, record: dict[str, Any], fields: FieldMap) -> None:
        """One (query, positive[s]) row; raises RowProblem (bad row) or Dropped (cleaning)."""
        self.records_in += 1
        mapping = fields.resolve(record.keys())
        missing = fields.missing_required(mapping)
        if missing:
            raise RowProblem(fields.describe_missing(missing[0], list(record.keys())))
        get = {name: record[column] for name, column in mapping.items()}
        query_text = self.cleaner.text(text_value(get["query"], "query"), "query")
        positives = text_list(get["positive"], "positive")
        if not positives:
            raise Dropped("empty_passage")
        title = self.cleaner.optional(text_value(get.get("title"), "title"))
        answers = [self.cleaner.optional(a) for a in text_list(get.get("answer"), "answer")]
        qid = text_value(get.get("query_id"), "query_id").strip() or None
        pid = text_value(get.get("positive_id"), "positive_id").strip() or None
        if pid is not None and len(positives) > 1:
            raise RowProblem("positive_id names one passage but the row has a list of positives")
        texts = [self.passage_text(p) for p in positives]
        negatives = [self.cleaner.optional(n) for n in text_list(get.get("negative"), "negative")]
        pids = [self.add_passage(t, title, loc, pid) for t in texts]
        for neg in negatives:
            if neg:
                self.add_passage(neg, "", loc)
        query = self.add_query(query_text, loc, qid, merge_by_text=True)
        new = [p for p in pids if p not in query.positives]
        if not new:
            raise Dropped("duplicate")
        for p in new:
            query.positives[p] = 1
        query.add_answers(answers)

    # -- SQuAD -----------------------------------------------------------------------------
    def add_squad(self, doc: Any, display: str) -> None:
        # paragraph loc -> passage id, or ("dropped", reason), or ("bad", None) when already reported
        paragraphs: dict[str, Any] = {}
        for item in iter_squad(doc, display, self.bad):
            self.records_in += 1
            if item.paragraph_loc not in paragraphs:
                paragraphs[item.paragraph_loc] = self._squad_paragraph(item)
            state = paragraphs[item.paragraph_loc]
            if isinstance(state, tuple):
                if state[0] == "dropped":
                    self.cleaner.drop(state[1])  # counted once per question, like every drop
                continue
            try:
                self._add_squad_question(item.qa, item.loc, state)
            except Dropped as drop:
                self.cleaner.drop(drop.reason)
            except RowProblem as exc:
                self.bad.report(item.loc, str(exc))

    def _squad_paragraph(self, item) -> Any:
        try:
            context = self.passage_text(item.context, "context")
            title = self.cleaner.optional(item.article_title)
            return self.add_passage(context, title, item.paragraph_loc, item.paragraph_id)
        except Dropped as drop:
            return ("dropped", drop.reason)
        except RowProblem as exc:
            self.bad.report(item.paragraph_loc, str(exc))
            return ("bad", None)

    def _add_squad_question(self, qa: dict[str, Any], loc: str, pid: str) -> None:
        if "question" not in qa:
            raise RowProblem(f"missing field 'question' (the question has: {', '.join(qa) or 'nothing'})")
        text = self.cleaner.text(text_value(qa["question"], "question"), "query")
        answers = [self.cleaner.optional(a) for a in text_list(qa.get("answers"), "answers")]
        if qa.get("is_impossible") and not answers:
            raise Dropped("unanswerable")
        if self.cleaner.is_duplicate((text, pid), "squad"):
            raise Dropped("duplicate")
        qid = qa.get("id")
        qid = str(qid) if qid is not None else None
        if qid is not None and qid in self.queries:
            raise RowProblem(f"duplicate question id '{qid}' (first at {self.queries[qid].loc})")
        query = self.add_query(text, loc, qid)
        query.positives[pid] = 1
        query.add_answers(answers)

    # -- BEIR ------------------------------------------------------------------------------
    def add_beir(self, folder: Path, display: str, encoding: str) -> None:
        corpus, queries, qrels, answers = find_beir_files(folder, display)
        self._beir_corpus(corpus, f"{display}/corpus.jsonl", encoding)
        self._beir_queries(queries, f"{display}/queries.jsonl", encoding)
        for path in qrels:
            self._beir_qrels(path, f"{display}/{path.relative_to(folder).as_posix()}", encoding)
        if answers is not None:
            self._beir_answers(answers, f"{display}/answers.jsonl", encoding)

    def _beir_corpus(self, path: Path, display: str, encoding: str) -> None:
        for row in iter_jsonl(read_text(path, display, encoding), display, self.bad):
            try:
                sid = _required_id(row.data, "_id")
                if "text" not in row.data:
                    raise RowProblem(f"missing field 'text' (the record has: {', '.join(row.data)})")
                if sid in self.passages or sid in self._alias or sid in self._dropped_passage_ids:
                    raise RowProblem(f"duplicate _id '{sid}'")
                try:
                    text = self.passage_text(row.data["text"], "text")
                except Dropped:
                    self._dropped_passage_ids.add(sid)
                    raise
                title = self.cleaner.optional(text_value(row.data.get("title"), "title"))
                self.add_passage(text, title, row.loc, sid)
            except Dropped as drop:
                self.cleaner.drop(drop.reason)
            except RowProblem as exc:
                self.bad.report(row.loc, str(exc))

    def _beir_queries(self, path: Path, display: str, encoding: str) -> None:
        for row in iter_jsonl(read_text(path, display, encoding), display, self.bad):
            self.records_in += 1
            try:
                sid = _required_id(row.data, "_id")
                if "text" not in row.data:
                    raise RowProblem(f"missing field 'text' (the record has: {', '.join(row.data)})")
                if sid in self.queries or sid in self._dropped_query_ids:
                    raise RowProblem(f"duplicate _id '{sid}'")
                try:
                    text = self.cleaner.text(text_value(row.data["text"], "text"), "query")
                except Dropped:
                    self._dropped_query_ids.add(sid)
                    raise
                self.add_query(text, row.loc, sid)
            except Dropped as drop:
                self.cleaner.drop(drop.reason)
            except RowProblem as exc:
                self.bad.report(row.loc, str(exc))

    def _beir_qrels(self, path: Path, display: str, encoding: str) -> None:
        for q in iter_qrels(read_text(path, display, encoding), display, self.bad):
            if q.query_id in self._dropped_query_ids or q.corpus_id in self._dropped_passage_ids:
                continue  # its query or passage was dropped by cleaning, and counted there
            query = self.queries.get(q.query_id)
            if query is None:
                self.bad.report(q.loc, f"unknown query-id '{q.query_id}' (not in queries.jsonl)")
                continue
            pid = self.passage_id(q.corpus_id)
            if pid is None:
                self.bad.report(q.loc, f"unknown corpus-id '{q.corpus_id}' (not in corpus.jsonl)")
                continue
            if q.score > 0:
                query.positives[pid] = max(q.score, query.positives.get(pid, 0))

    def _beir_answers(self, path: Path, display: str, encoding: str) -> None:
        for row in iter_jsonl(read_text(path, display, encoding), display, self.bad):
            try:
                sid = _required_id(row.data, "_id")
                query = self.queries.get(sid)
                if query is None:
                    if sid not in self._dropped_query_ids:
                        raise RowProblem(f"unknown query _id '{sid}' (not in queries.jsonl)")
                    continue
                query.add_answers([self.cleaner.optional(a) for a in text_list(row.data.get("answers"), "answers")])
            except RowProblem as exc:
                self.bad.report(row.loc, str(exc))

    # -- the end -----------------------------------------------------------------------------
    def drop_queries_without_positives(self) -> None:
        for qid in [qid for qid, q in self.queries.items() if not q.positives]:
            del self.queries[qid]
            self.cleaner.drop("no_positive")

    @property
    def has_answers(self) -> bool:
        return any(q.answers for q in self.queries.values())


def _required_id(record: dict[str, Any], name: str) -> str:
    if name not in record:
        raise RowProblem(f"missing field '{name}' (the record has: {', '.join(record) or 'nothing'})")
    value = text_value(record[name], name).strip()
    if not value:
        raise RowProblem(f"empty '{name}'")
    return value
