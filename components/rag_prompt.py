"""The generator's RAG prompt: one definition for the SFT data, evaluation and serving.

A generator answers best in the format it was trained on. ``data_prep`` builds its RAG SFT records
with a ``RagPrompt`` and saves it (``rag_prompt.json``) next to them; ``lora_sft`` copies that file
into the adapter it writes; ``evaluate`` and ``serving`` (``orch query``) read it back from the
adapter and put retrieved passages into the very same prompt (instruction, input template, and the
passage window: the query-matched part of each passage, components/passage_window.py).

Standard library only (recipe validation imports data_prep's parameters).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from .passage_window import text_window

PROMPT_FILE = "rag_prompt.json"
DEFAULT_INSTRUCTION = "请根据参考资料回答问题。答案要简洁，尽量直接摘自参考资料。"
DEFAULT_INPUT_TEMPLATE = "参考资料：{passage}\n\n问题：{query}"


@dataclass(frozen=True)
class RagPrompt:
    instruction: str = DEFAULT_INSTRUCTION
    input_template: str = DEFAULT_INPUT_TEMPLATE  # placeholders {passage}, {query}, {title}
    passage_window: int | None = None  # characters of each passage's text (query-matched); None: all

    def passage(self, query: str, text: str) -> str:
        return text if not self.passage_window else text_window(query, text, self.passage_window)

    def input(self, query: str, passages: Iterable[dict[str, Any]]) -> str:
        """The record's input: the passages' texts (windowed; blank line between) and the first one's title."""
        docs = list(passages)
        body = "\n\n".join(self.passage(query, str(d.get("text", ""))) for d in docs)
        return self.input_template.format(query=query, passage=body, title=docs[0].get("title", "") if docs else "")

    def user_message(self, query: str, passages: Iterable[dict[str, Any]]) -> str:
        """What the user turn holds: instruction, newline, input (lora_sft's alpaca -> chat rule)."""
        return self.instruction + "\n" + self.input(query, passages)

    def save(self, folder: str | Path) -> None:
        (Path(folder) / PROMPT_FILE).write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n",
                                                encoding="utf-8")

    @classmethod
    def load(cls, folder: str | Path) -> "RagPrompt | None":
        """The prompt saved in ``folder`` (an SFT data folder or an adapter), or None."""
        path = Path(folder) / PROMPT_FILE
        if not path.exists():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(**{k: data[k] for k in ("instruction", "input_template", "passage_window") if k in data})
