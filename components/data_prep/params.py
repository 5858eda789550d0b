"""Parameters of the three data-preparation kinds: ``data_prep``, ``sft_data_prep``, ``cls_data_prep``.

Field names here are what users write in recipes; every field carries a description because the
README's parameter reference is generated from them.
"""

from __future__ import annotations

import codecs
import difflib
import string
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from orchestrator.api import LocalFile

from ..rag_prompt import DEFAULT_INPUT_TEMPLATE as DEFAULT_SFT_INPUT_TEMPLATE
from ..rag_prompt import DEFAULT_INSTRUCTION as DEFAULT_SFT_INSTRUCTION

# Canonical field names per kind, and the source column names tried (in order) when a field is not
# mapped explicitly with ``fields``. A column mapped explicitly to one field is never picked up by
# another field's aliases.
RETRIEVAL_FIELDS: dict[str, tuple[str, ...]] = {
    "query": ("query", "question", "q"),
    "positive": ("positive", "pos", "passage", "context", "document", "doc"),
    "title": ("title",),
    "answer": ("answer", "answers"),
    "query_id": ("query_id", "qid", "query-id"),
    "positive_id": ("positive_id", "pid", "doc_id", "corpus-id"),
    "negative": ("negative", "neg", "negatives"),
}
RETRIEVAL_REQUIRED = ("query", "positive")
RETRIEVAL_TEXT_FIELDS = ("query", "passage")  # what clean.min_chars / clean.max_chars may name

SFT_FIELDS: dict[str, tuple[str, ...]] = {
    "instruction": ("instruction", "prompt", "question"),
    "input": ("input",),
    "output": ("output", "response", "answer"),
    "system": ("system",),
    "history": ("history",),
    "conversations": ("conversations", "messages"),
}
SFT_REQUIRED = ("instruction", "output")  # unless the record is a conversation
SFT_TEXT_FIELDS = ("instruction", "output")

CLS_FIELDS: dict[str, tuple[str, ...]] = {
    "text": ("text", "sentence", "review", "content"),
    "label": ("label",),
}
CLS_REQUIRED = ("text", "label")
CLS_TEXT_FIELDS = ("text",)

SFT_TEMPLATE_FIELDS = ("query", "passage", "title")


def did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


class CleanParams(BaseModel):
    """How records are cleaned before splitting. Rows whose required text is empty are always dropped."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    strip: bool = Field(True, description="Strip leading/trailing whitespace from every text field.")
    dedupe: bool = Field(True, description="Drop exact duplicate records (after stripping); counted as dropped/duplicate.")
    min_chars: dict[str, int] = Field(
        default_factory=dict,
        description="Per text field, the minimum length in characters, e.g. {query: 4}; shorter records are "
                    "dropped (dropped/<field>_too_short). Fields: query, passage (data_prep); instruction, "
                    "output (sft_data_prep); text (cls_data_prep).")
    max_chars: dict[str, int] = Field(
        default_factory=dict,
        description="Per text field, the maximum length in characters, e.g. {passage: 2000}; longer records "
                    "are dropped (dropped/<field>_too_long). Same field names as min_chars.")

    @field_validator("min_chars", "max_chars")
    @classmethod
    def _positive(cls, value: dict[str, int]) -> dict[str, int]:
        bad = {k: v for k, v in value.items() if v < 1}
        if bad:
            raise ValueError(f"character limits must be >= 1, got {bad}")
        return value

    def check_fields(self, allowed: tuple[str, ...]) -> None:
        for name in ("min_chars", "max_chars"):
            for key in getattr(self, name):
                if key not in allowed:
                    raise ValueError(f"{name}: unknown field '{key}'{did_you_mean(key, allowed)} "
                                     f"(fields: {', '.join(allowed)})")
        for key, low in self.min_chars.items():
            high = self.max_chars.get(key)
            if high is not None and high < low:
                raise ValueError(f"max_chars.{key} ({high}) is below min_chars.{key} ({low})")


class SplitParams(BaseModel):
    """Train/dev/test fractions; train gets the rest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dev: float = Field(0.1, ge=0, lt=1, description="Fraction of units (queries, groups or records) for dev.")
    test: float = Field(0.2, ge=0, lt=1, description="Fraction of units for test.")
    seed: int | None = Field(None, ge=0, description="Shuffle seed; the recipe's seed when unset.")

    @model_validator(mode="after")
    def _fractions(self):
        if self.dev + self.test >= 1:
            raise ValueError(f"dev + test must be < 1 so that train keeps some data "
                             f"(got dev {self.dev} + test {self.test} = {self.dev + self.test:g})")
        return self


class RetrievalSplitParams(SplitParams):
    by: Literal["query", "passage"] = Field(
        "query",
        description="query: queries are shuffled and split (a passage may be positive in several splits); "
                    "passage: queries sharing a positive passage stay in one split, so no positive passage "
                    "appears in two splits.")


class ClsSplitParams(SplitParams):
    stratify: bool = Field(True, description="Split each label separately so every split keeps the label ratio.")


class _SourceParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: LocalFile = Field(description="The data file (for data_prep also a BEIR folder), relative to the "
                                          "recipe's folder.")
    encoding: str = Field("utf-8", description="Text encoding of the source files, e.g. gb18030 for Chinese "
                                               "Windows CSVs. A UTF-8 byte-order mark is skipped.")
    csv_delimiter: str | None = Field(None, min_length=1, max_length=1,
                                      description="CSV delimiter; by default ',' ('\\t' for .tsv files).")
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="Canonical field -> source column, e.g. {query: question, positive: answer}. Canonical "
                    "fields: query, positive, title, answer, query_id, positive_id, negative (data_prep); "
                    "instruction, input, output, system, history, conversations (sft_data_prep); text, label "
                    "(cls_data_prep). Unmapped fields are looked up under their own name and common aliases "
                    "(e.g. question for query, context for positive, review for text).")
    clean: CleanParams = Field(default_factory=CleanParams, description="Cleaning steps.")
    on_error: Literal["fail", "skip"] = Field(
        "fail", description="Bad rows (invalid JSON, missing fields, wrong column count, unknown ids): fail "
                            "stops with file:line and the problem; skip drops them, counts them "
                            "(summary bad_rows) and logs the first few.")

    KNOWN_FIELDS: ClassVar[dict[str, tuple[str, ...]]] = {}
    TEXT_FIELDS: ClassVar[tuple[str, ...]] = ()
    REQUIRED_FIELDS: ClassVar[tuple[str, ...]] = ()

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding '{value}' (e.g. utf-8, gb18030, utf-16)") from None
        return value

    # Field validators (not one model validator) so that each problem is reported at its own
    # location, together with every other error of the recipe.
    @field_validator("fields")
    @classmethod
    def _check_fields(cls, value: dict[str, str]) -> dict[str, str]:
        known = cls.KNOWN_FIELDS
        for key, column in value.items():
            if key not in known:
                raise ValueError(f"unknown field '{key}'{did_you_mean(key, known)} (fields: {', '.join(known)})")
            if not column.strip():
                raise ValueError(f"{key}: the source column name is empty")
        columns = list(value.values())
        dupes = sorted({c for c in columns if columns.count(c) > 1})
        if dupes:
            raise ValueError(f"column(s) {', '.join(dupes)} mapped to more than one field")
        return value

    @field_validator("clean")
    @classmethod
    def _check_clean(cls, value: CleanParams) -> CleanParams:
        value.check_fields(cls.TEXT_FIELDS)
        return value


class DataPrepParams(_SourceParams):
    """Retrieval / QA data: corpus, training pairs, BEIR dev/test sets and RAG SFT records."""

    KNOWN_FIELDS: ClassVar[dict[str, tuple[str, ...]]] = RETRIEVAL_FIELDS
    TEXT_FIELDS: ClassVar[tuple[str, ...]] = RETRIEVAL_TEXT_FIELDS
    REQUIRED_FIELDS: ClassVar[tuple[str, ...]] = RETRIEVAL_REQUIRED

    format: Literal["auto", "json", "jsonl", "csv", "beir", "squad"] = Field(
        "auto",
        description="auto: a folder is BEIR; .jsonl JSON lines; .csv/.tsv CSV; .json SQuAD when it has "
                    "data[].paragraphs, otherwise a list of records (or JSON lines).")
    split: RetrievalSplitParams = Field(default_factory=RetrievalSplitParams, description="Train/dev/test split.")
    sft_instruction: str = Field(DEFAULT_SFT_INSTRUCTION, min_length=1,
                                 description="Instruction of every RAG SFT record (train_sft, dev_sft).")
    sft_input_template: str = Field(
        DEFAULT_SFT_INPUT_TEMPLATE,
        description="Input of every RAG SFT record; placeholders {passage}, {query} (required) and {title}.")
    sft_passage_window: int | None = Field(
        None, ge=16,
        description="Characters of the answer's passage in each RAG SFT record: the window sharing the most words "
                    "with the question (chosen without the answer, so evaluate and serving choose alike), instead "
                    "of the whole passage that the generator's max_length would cut. Saved with the records "
                    "(rag_prompt.json) and carried by the adapter to evaluate and `orch query`. null: the whole "
                    "passage.")

    @field_validator("sft_input_template")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            names = [name for _, name, _, _ in string.Formatter().parse(value) if name is not None]
        except ValueError as exc:
            raise ValueError(f"invalid template ({exc}); write literal braces as {{{{ and }}}}") from None
        unknown = [n for n in names if n not in SFT_TEMPLATE_FIELDS]
        if unknown:
            raise ValueError(f"unknown placeholder {{{unknown[0]}}}{did_you_mean(unknown[0], SFT_TEMPLATE_FIELDS)} "
                             f"(placeholders: {{passage}}, {{query}}, {{title}})")
        if "query" not in names:
            raise ValueError("the template must contain {query}")
        return value

    @model_validator(mode="after")
    def _fields_need_records(self):
        if self.fields and self.format in ("beir", "squad"):
            raise ValueError(f"fields apply to json/jsonl/csv sources; the {self.format} layout is fixed")
        return self


class SftDataPrepParams(_SourceParams):
    """Instruction-tuning data (alpaca or sharegpt records) for LoRA SFT."""

    KNOWN_FIELDS: ClassVar[dict[str, tuple[str, ...]]] = SFT_FIELDS
    TEXT_FIELDS: ClassVar[tuple[str, ...]] = SFT_TEXT_FIELDS
    REQUIRED_FIELDS: ClassVar[tuple[str, ...]] = SFT_REQUIRED

    format: Literal["auto", "json", "jsonl", "csv"] = Field(
        "auto", description="auto: by extension (.json list of records or JSON lines, .jsonl, .csv/.tsv).")
    split: SplitParams = Field(default_factory=SplitParams, description="Train/dev/test split of records.")
    output_format: Literal["alpaca", "sharegpt"] = Field(
        "alpaca", description="alpaca: {instruction, input, output[, system, history]}; sharegpt: "
                              "{conversations: [{from: human|gpt, value}][, system]}.")


class ClsDataPrepParams(_SourceParams):
    """Text classification data ({text, label}), e.g. sentiment CSVs."""

    KNOWN_FIELDS: ClassVar[dict[str, tuple[str, ...]]] = CLS_FIELDS
    TEXT_FIELDS: ClassVar[tuple[str, ...]] = CLS_TEXT_FIELDS
    REQUIRED_FIELDS: ClassVar[tuple[str, ...]] = CLS_REQUIRED

    format: Literal["auto", "json", "jsonl", "csv"] = Field(
        "auto", description="auto: by extension (.json list of records or JSON lines, .jsonl, .csv/.tsv).")
    split: ClsSplitParams = Field(default_factory=ClsSplitParams, description="Train/dev/test split of records.")
    label_map: dict[str, str] = Field(
        default_factory=dict,
        description="Source label -> output label, e.g. {1: positive, 0: negative}. When given, a row whose "
                    "label is not a key is a bad row.")

    @field_validator("label_map", mode="before")
    @classmethod
    def _label_keys(cls, value: Any) -> Any:
        # YAML reads `{1: positive}` with an int key; source labels are compared as text.
        if isinstance(value, dict):
            return {_label_text(k): v for k, v in value.items()}
        return value


def _label_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
