"""SFT (alpaca / sharegpt) and text-classification records: normalise, clean, convert."""

from __future__ import annotations

from typing import Any

from .clean import Cleaner, Dropped
from .loaders import FieldMap, RowProblem, text_value

USER_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant", "model", "bot")


def sft_record(record: dict[str, Any], fields: FieldMap, cleaner: Cleaner) -> dict[str, Any]:
    """An alpaca record {instruction, input, output[, system, history]} from an alpaca, sharegpt or
    OpenAI-messages record (or any record with mapped columns). Raises RowProblem or Dropped."""
    mapping = fields.resolve(record.keys())
    get = {name: record[column] for name, column in mapping.items()}
    if "conversations" in get and "instruction" not in get:
        out = _from_conversation(get["conversations"])
        if "system" in get and not out.get("system"):
            out["system"] = text_value(get["system"], "system")
    else:
        missing = fields.missing_required(mapping)
        if missing:
            raise RowProblem(fields.describe_missing(missing[0], list(record.keys())))
        out = {
            "instruction": text_value(get["instruction"], "instruction"),
            "input": text_value(get.get("input"), "input"),
            "output": text_value(get["output"], "output"),
            "system": text_value(get.get("system"), "system"),
            "history": _history(get.get("history")),
        }
    out["instruction"] = cleaner.text(out["instruction"], "instruction")
    out["output"] = cleaner.text(out["output"], "output")
    out["input"] = cleaner.optional(out.get("input", ""))
    system = cleaner.optional(out.get("system") or "")
    history = [[cleaner.optional(u), cleaner.optional(a)] for u, a in out.get("history") or []]
    clean: dict[str, Any] = {"instruction": out["instruction"], "input": out["input"], "output": out["output"]}
    if system:
        clean["system"] = system
    if history:
        clean["history"] = history
    return clean


def _history(value: Any) -> list[list[str]]:
    if value is None or value == "":
        return []
    if not isinstance(value, list):
        raise RowProblem("field 'history' should be a list of [user, assistant] pairs")
    out = []
    for i, turn in enumerate(value):
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2):
            raise RowProblem(f"history[{i}] should be a [user, assistant] pair")
        out.append([text_value(turn[0], f"history[{i}][0]"), text_value(turn[1], f"history[{i}][1]")])
    return out


def _from_conversation(turns: Any) -> dict[str, Any]:
    """sharegpt {from, value} or OpenAI {role, content} turns -> alpaca with history."""
    if not isinstance(turns, list) or not turns:
        raise RowProblem("field 'conversations' should be a non-empty list of turns")
    system = ""
    pairs: list[list[str]] = []
    pending: str | None = None
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RowProblem(f"conversations[{i}] should be an object")
        role = turn.get("from", turn.get("role"))
        content = turn.get("value", turn.get("content"))
        if role is None or content is None:
            raise RowProblem(f"conversations[{i}] needs 'from' and 'value' (or 'role' and 'content')")
        text = text_value(content, f"conversations[{i}]")
        role = str(role).lower()
        if role == "system" and i == 0:
            system = text
        elif role in USER_ROLES and pending is None:
            pending = text
        elif role in ASSISTANT_ROLES and pending is not None:
            pairs.append([pending, text])
            pending = None
        else:
            expected = "a user turn" if pending is None else "an assistant turn"
            raise RowProblem(f"conversations[{i}]: expected {expected}, got role '{role}'")
    if pending is not None or not pairs:
        raise RowProblem("the conversation must end with an assistant turn")
    (instruction, output), history = pairs[-1], pairs[:-1]
    return {"instruction": instruction, "input": "", "output": output, "system": system, "history": history}


def to_sharegpt(record: dict[str, Any]) -> dict[str, Any]:
    """alpaca -> sharegpt; instruction and input are joined by a newline (as LLaMA-Factory does)."""
    turns = []
    for user, assistant in record.get("history", []):
        turns += [{"from": "human", "value": user}, {"from": "gpt", "value": assistant}]
    prompt = record["instruction"] + ("\n" + record["input"] if record.get("input") else "")
    turns += [{"from": "human", "value": prompt}, {"from": "gpt", "value": record["output"]}]
    out: dict[str, Any] = {"conversations": turns}
    if record.get("system"):
        out["system"] = record["system"]
    return out


def cls_record(record: dict[str, Any], fields: FieldMap, cleaner: Cleaner, label_map: dict[str, str]) -> dict[str, str]:
    """{text, label}, with the label mapped through ``label_map`` when one is given."""
    mapping = fields.resolve(record.keys())
    missing = fields.missing_required(mapping)
    if missing:
        raise RowProblem(fields.describe_missing(missing[0], list(record.keys())))
    text = cleaner.text(text_value(record[mapping["text"]], "text"), "text")
    label = text_value(record[mapping["label"]], "label").strip()
    if not label:
        raise Dropped("empty_label")
    if label_map:
        if label not in label_map:
            raise RowProblem(f"label '{label}' is not in label_map (keys: {', '.join(label_map)})")
        label = label_map[label]
    return {"text": text, "label": label}
