"""What a trained reranker reads and how its scores are used: one place for training, evaluation, serving.

- **Passage windows.** A cross-encoder reads ``max_seq_length`` tokens: a long passage is cut after
  its start, and whatever the query asks about further down is never seen (on CMRC2018 the answer
  lies past the first 76 characters in 46% of the questions). With ``passage_window: N`` the reranker
  reads the passage's title plus the N-character window that shares the most of the query's words
  (character bigrams for Chinese, lower-cased words otherwise), chosen per query, the same way in
  training, dev evaluation, ``evaluate`` and ``serving`` (the setting is saved with the model).
- **Fusion** with the first stage's score (components/fusion.py), weight chosen on dev.

``Reranker.load(folder)`` gives both; ``scores(query, docs)`` returns the cross-encoder's own scores.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

CONFIG_FILE = "orch_reranker.json"
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_WORD = re.compile(r"\w+", re.UNICODE)


def query_terms(query: str) -> set[str]:
    """Character bigrams of the query's CJK runs (single characters such as 的 match everywhere and
    are left out) plus its lower-cased non-CJK words of two letters or more."""
    terms: set[str] = set()
    for run in re.findall(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]{2,}", query):
        terms.update(run[i:i + 2] for i in range(len(run) - 1))
    terms.update(w.lower() for w in _WORD.findall(_CJK.sub(" ", query)) if len(w) > 1)
    return terms


def best_window(query: str, passage: str, chars: int) -> str:
    """``title\\n`` + the ``chars``-character window of the text holding the most query terms.

    A passage whose text fits is returned unchanged. Windows start every ``chars // 4`` characters;
    ties go to the earliest window.
    """
    title, sep, text = passage.partition("\n")
    if not sep:
        title, text = "", passage
    if len(text) <= chars:
        return passage
    terms = query_terms(query)
    lowered = text.lower()
    stride = max(1, chars // 4)
    best_start, best_hits = 0, -1
    for start in range(0, len(text) - chars + stride, stride):
        window = lowered[start:start + chars]
        hits = sum(1 for t in terms if t in window)
        if hits > best_hits:
            best_start, best_hits = start, hits
    window = text[best_start:best_start + chars]
    return f"{title}\n{window}" if sep else window


def windowed(query: str, docs: Sequence[str], chars: int | None) -> list[str]:
    return list(docs) if not chars else [best_window(query, d, chars) for d in docs]


def save_config(folder: Path, *, passage_window: int | None) -> None:
    (Path(folder) / CONFIG_FILE).write_text(json.dumps({"passage_window": passage_window}, indent=2))


class Reranker:
    """A trained cross-encoder with the input preparation and fusion weight it was saved with."""

    def __init__(self, model, passage_window: int | None = None, fusion_weight: float | None = None):
        self.model, self.passage_window, self.fusion_weight = model, passage_window, fusion_weight

    @classmethod
    def load(cls, folder: str | Path, device: str | None = None) -> "Reranker":
        from sentence_transformers import CrossEncoder

        from .fusion import load_fusion_weight

        cfg_file = Path(folder) / CONFIG_FILE
        cfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
        return cls(CrossEncoder(str(folder), device=device), cfg.get("passage_window"), load_fusion_weight(folder))

    def scores(self, query: str, docs: Sequence[str], batch_size: int | None = None) -> list[float]:
        if not docs:
            return []
        from components.retrieval import batch_size_for

        texts = windowed(query, docs, self.passage_window)
        out = self.model.predict([(query, d) for d in texts], batch_size=batch_size_for(self.model, batch_size),
                                 show_progress_bar=False)
        return [float(x) for x in out]
