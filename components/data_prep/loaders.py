"""Reading source files into records that remember where they came from (file:line).

Row-level problems (a JSONL line that is not JSON, a CSV row with the wrong column count, a
missing field) go to ``BadRows``, which raises under ``on_error: fail`` and counts under ``skip``.
File-level problems (missing file, wrong encoding, a header without the needed column, a JSON
document that does not parse) always raise ``DataPrepError``.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .params import did_you_mean

MAX_LOGGED_BAD_ROWS = 5


class DataPrepError(ValueError):
    """A problem with the input data, said with where it is (file:line) and how to fix it."""


class RowProblem(ValueError):
    """What is wrong with one record; the caller adds the location and hands it to ``BadRows``."""


@dataclass
class Row:
    """One source record and its location: ``data.jsonl:12``, ``data.csv:7``, ``data.json[3]``."""

    loc: str
    data: dict[str, Any]


class BadRows:
    """Collects row-level problems: raises at once under ``fail``, counts and keeps examples under ``skip``."""

    def __init__(self, on_error: str, keep: int = MAX_LOGGED_BAD_ROWS):
        self.on_error = on_error
        self.keep = keep
        self.count = 0
        self.examples: list[str] = []

    def report(self, loc: str, problem: str) -> None:
        message = f"{loc}: {problem}"
        if self.on_error == "fail":
            raise DataPrepError(f"{message} (set on_error: skip to drop bad rows and count them)")
        self.count += 1
        if len(self.examples) < self.keep:
            self.examples.append(message)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def read_text(path: Path, display: str, encoding: str) -> str:
    if not path.is_file():
        raise DataPrepError(f"{display}: file not found ({path})")
    data = path.read_bytes()
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        raise DataPrepError(
            f"{display}: cannot decode as {encoding} ({exc.reason} at byte {exc.start}); set encoding: "
            f"to the file's encoding (e.g. gb18030 for Chinese CSVs saved on Windows)") from None


def detect_format(path: Path, display: str, fmt: str, allowed: tuple[str, ...]) -> str:
    """The concrete format of ``path`` ('squad' is decided later, once the JSON is parsed)."""
    if path.is_dir():
        if fmt not in ("auto", "beir"):
            raise DataPrepError(f"{display}: is a folder; format {fmt} reads a file (folders are BEIR: format beir)")
        if "beir" not in allowed:
            raise DataPrepError(f"{display}: is a folder; this component reads one file ({', '.join(allowed)})")
        return "beir"
    if not path.exists():
        raise DataPrepError(f"{display}: file not found ({path})")
    if fmt == "beir":
        raise DataPrepError(f"{display}: format beir needs a folder with corpus.jsonl, queries.jsonl and qrels.tsv")
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    by_suffix = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "csv", ".json": "json"}
    if suffix not in by_suffix:
        raise DataPrepError(f"{display}: cannot tell the format from the extension '{suffix}'; "
                            f"set format: to one of {', '.join(a for a in allowed if a != 'auto')}")
    return by_suffix[suffix]


def iter_jsonl(text: str, display: str, bad: BadRows, first_line: int = 1) -> Iterator[Row]:
    # Split on '\n' only: str.splitlines() would also split on U+2028 inside JSON strings.
    for number, line in enumerate(text.split("\n"), start=first_line):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        loc = f"{display}:{number}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.report(loc, f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        if not isinstance(value, dict):
            bad.report(loc, f"expected a JSON object, got {_type_name(value)}")
            continue
        yield Row(loc, value)


def parse_json_document(text: str, display: str) -> Any | None:
    """The parsed JSON document, or None when the file is JSON lines (several documents)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":
            return None
        raise DataPrepError(f"{display}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None


def iter_json_records(doc: Any, display: str, bad: BadRows) -> Iterator[Row]:
    """Records of a JSON document: a list of objects, or {"data": [...]}."""
    records = doc
    prefix = display
    if isinstance(doc, dict) and isinstance(doc.get("data"), list):
        records = doc["data"]
        prefix = f"{display}: data"
    if not isinstance(records, list):
        raise DataPrepError(f"{display}: expected a JSON list of records (or JSON lines), "
                            f"got {_type_name(doc)}")
    for i, value in enumerate(records):
        loc = f"{prefix}[{i}]"
        if not isinstance(value, dict):
            bad.report(loc, f"expected a JSON object, got {_type_name(value)}")
            continue
        yield Row(loc, value)


def iter_csv(text: str, display: str, bad: BadRows, delimiter: str) -> tuple[list[str], Iterator[Row]]:
    """The header and an iterator over data rows (line numbers count physical lines, header = 1)."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    # strict: an unclosed or stray quote is an error on its line, not a field that swallows the file.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise DataPrepError(f"{display}: empty CSV file (expected a header line)") from None
    except csv.Error as exc:
        raise DataPrepError(f"{display}:1: cannot read the CSV header: {exc}") from None
    header = [h.strip() for h in header]
    if not any(header):
        raise DataPrepError(f"{display}:1: empty CSV header")

    def rows() -> Iterator[Row]:
        last = reader.line_num
        while True:
            start = last + 1
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                bad.report(f"{display}:{start}", f"cannot parse CSV: {exc} (check the quotes on this line)")
                last = reader.line_num
                continue
            last = reader.line_num
            if not values or (len(values) == 1 and not values[0].strip()):
                continue
            if len(values) != len(header):
                bad.report(f"{display}:{start}", f"expected {len(header)} columns ({', '.join(header)}), "
                                                 f"got {len(values)}")
                continue
            yield Row(f"{display}:{start}", dict(zip(header, values)))

    return header, rows()


def open_source(path: Path, display: str, fmt: str, allowed: tuple[str, ...], encoding: str,
                delimiter: str | None, bad: BadRows, fields: "FieldMap") -> tuple[str, Any]:
    """("beir", folder) | ("squad", parsed document) | (json|jsonl|csv, iterator of Row)."""
    fmt = detect_format(path, display, fmt, allowed)
    if fmt == "beir":
        return "beir", path
    text = read_text(path, display, encoding)
    if fmt in ("json", "squad"):
        doc = parse_json_document(text, display)
        if fmt == "squad" or ("squad" in allowed and doc is not None and is_squad(doc)):
            return "squad", doc
        if doc is None:
            return "jsonl", iter_jsonl(text, display, bad)
        return "json", iter_json_records(doc, display, bad)
    if fmt == "jsonl":
        return "jsonl", iter_jsonl(text, display, bad)
    sep = delimiter or ("\t" if path.suffix.lower() == ".tsv" else ",")
    header, rows = iter_csv(text, display, bad, sep)
    fields.check_header(header, f"{display}:1")
    return "csv", rows


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


# ---------------------------------------------------------------------------------------------
# Field mapping
# ---------------------------------------------------------------------------------------------

MISSING = object()


class FieldMap:
    """Finds canonical fields in source records: explicit ``fields`` first, then aliases.

    A column mapped explicitly to one field is never taken by another field's aliases (so
    ``fields: {positive: answer}`` does not also make ``answer`` the QA answer).
    """

    def __init__(self, explicit: dict[str, str], aliases: dict[str, tuple[str, ...]], required: tuple[str, ...]):
        self.explicit = dict(explicit)
        self.aliases = aliases
        self.required = required
        self._taken = set(explicit.values())
        self._cache: dict[tuple[str, ...], dict[str, str]] = {}

    def resolve(self, keys) -> dict[str, str]:
        """canonical name -> source key, for a record with these keys."""
        sig = tuple(keys)
        mapping = self._cache.get(sig)
        if mapping is None:
            present = set(sig)
            mapping = {}
            for name, candidates in self.aliases.items():
                if name in self.explicit:
                    if self.explicit[name] in present:
                        mapping[name] = self.explicit[name]
                    continue
                for column in candidates:
                    if column in present and column not in self._taken:
                        mapping[name] = column
                        break
            self._cache[sig] = mapping
        return mapping

    def describe_missing(self, name: str, keys) -> str:
        have = ", ".join(map(str, keys)) or "none"
        if name in self.explicit:
            column = self.explicit[name]
            return (f"missing field '{column}' (mapped to {name} by fields.{name}){did_you_mean(column, keys)}; "
                    f"the record has: {have}")
        looked = ", ".join(self.aliases[name])
        return (f"missing field '{name}' (looked for: {looked}); the record has: {have}; "
                f"map a column with fields: {{{name}: <column>}}")

    def missing_required(self, mapping: dict[str, str], required: tuple[str, ...] | None = None) -> list[str]:
        return [name for name in (self.required if required is None else required) if name not in mapping]

    def check_header(self, header: list[str], loc: str) -> None:
        """A CSV header must hold every required field's column: a wrong mapping fails at once."""
        mapping = self.resolve(header)
        for name in self.missing_required(mapping):
            raise DataPrepError(f"{loc}: no column for field '{name}' in the CSV header "
                                f"({self.describe_missing(name, header)})")
        for name, column in self.explicit.items():
            if column not in header:
                raise DataPrepError(f"{loc}: {self.describe_missing(name, header)}")


def text_value(value: Any, name: str) -> str:
    """A field value as text; numbers become text, lists and objects are errors."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    raise RowProblem(f"field '{name}' should be text, got {_type_name(value)}")


def text_list(value: Any, name: str) -> list[str]:
    """A field that may hold one text or a list of texts (or of {"text": ...} objects, as SQuAD answers)."""
    if value is None:
        return []
    if isinstance(value, list):
        out = []
        for item in value:
            if isinstance(item, dict) and "text" in item:
                item = item["text"]
            out.append(text_value(item, name))
        return out
    if isinstance(value, dict) and "text" in value:
        value = value["text"]
    return [text_value(value, name)]


# ---------------------------------------------------------------------------------------------
# SQuAD and BEIR layouts
# ---------------------------------------------------------------------------------------------


def is_squad(doc: Any) -> bool:
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list) or not doc["data"]:
        return False
    first = doc["data"][0]
    return isinstance(first, dict) and isinstance(first.get("paragraphs"), list)


@dataclass
class SquadQuestion:
    loc: str
    article_title: str
    paragraph_loc: str
    paragraph_id: str | None
    context: Any
    qa: dict[str, Any]


def iter_squad(doc: Any, display: str, bad: BadRows) -> Iterator[SquadQuestion]:
    """Every question of a SQuAD-style document, with its paragraph (data[].paragraphs[].qas[])."""
    if not is_squad(doc):
        raise DataPrepError(f"{display}: format squad expects {{\"data\": [{{\"title\", \"paragraphs\": "
                            f"[{{\"context\", \"qas\": [...]}}]}}]}}")
    for i, article in enumerate(doc["data"]):
        aloc = f"{display}: data[{i}]"
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            bad.report(aloc, "expected an article object with a 'paragraphs' list")
            continue
        title = article.get("title")
        title = title if isinstance(title, str) else ""
        for j, paragraph in enumerate(article["paragraphs"]):
            ploc = f"{aloc}.paragraphs[{j}]"
            if not isinstance(paragraph, dict) or "context" not in paragraph:
                bad.report(ploc, "missing field 'context'")
                continue
            qas = paragraph.get("qas")
            if not isinstance(qas, list):
                bad.report(ploc, "missing field 'qas' (a list of questions)")
                continue
            pid = paragraph.get("id")
            for k, qa in enumerate(qas):
                qloc = f"{ploc}.qas[{k}]"
                if not isinstance(qa, dict):
                    bad.report(qloc, f"expected a question object, got {_type_name(qa)}")
                    continue
                yield SquadQuestion(qloc, title, ploc, str(pid) if pid is not None else None,
                                    paragraph["context"], qa)


@dataclass
class QrelRow:
    loc: str
    query_id: str
    corpus_id: str
    score: int | float


def find_beir_files(folder: Path, display: str) -> tuple[Path, Path, list[Path], Path | None]:
    corpus, queries = folder / "corpus.jsonl", folder / "queries.jsonl"
    qrels = [folder / "qrels.tsv"] if (folder / "qrels.tsv").is_file() else sorted((folder / "qrels").glob("*.tsv"))
    missing = [name for name, ok in (("corpus.jsonl", corpus.is_file()), ("queries.jsonl", queries.is_file()),
                                     ("qrels.tsv (or qrels/*.tsv)", bool(qrels))) if not ok]
    if missing:
        found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise DataPrepError(f"{display}: not a BEIR folder: missing {', '.join(missing)} (found: {found})")
    answers = folder / "answers.jsonl"
    return corpus, queries, qrels, answers if answers.is_file() else None


def iter_qrels(text: str, display: str, bad: BadRows) -> Iterator[QrelRow]:
    """qrels.tsv rows: query-id, corpus-id, score (an optional header line; 4-column TREC rows too)."""
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        loc = f"{display}:{number}"
        if len(parts) == 4:  # TREC: qid 0 docid score
            parts = [parts[0], parts[2], parts[3]]
        if len(parts) != 3:
            bad.report(loc, f"expected 3 tab-separated columns (query-id, corpus-id, score), got {len(parts)}")
            continue
        qid, cid, raw = (p.strip() for p in parts)
        try:
            score: int | float = int(raw)
        except ValueError:
            try:
                score = float(raw)
            except ValueError:
                if number == 1:
                    continue  # the header line: query-id corpus-id score
                bad.report(loc, f"score '{raw}' is not a number")
                continue
        yield QrelRow(loc, qid, cid, score)
