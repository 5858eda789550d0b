"""What a trained reranker reads and how its scores are used: one place for training, evaluation, serving.

- **Passage windows.** A cross-encoder reads ``max_seq_length`` tokens: a long passage is cut after
  its start, and whatever the query asks about further down is never seen (on CMRC2018 the answer
  lies past the first 76 characters in 46% of the questions). With ``passage_window: N`` the reranker
  reads the passage's title plus the N-character window that shares the most of the query's words
  (character bigrams for Chinese, lower-cased words otherwise), chosen per query, the same way in
  training, dev evaluation, ``evaluate`` and ``serving`` (the setting is saved with the model;
  components/passage_window.py, which the generator's RAG prompt uses too).
- **Fusion** with the first stage's score (components/fusion.py), weight chosen on dev.

``Reranker.load(folder)`` gives both; ``scores(query, docs)`` returns the cross-encoder's own scores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from .passage_window import best_window, query_terms, windowed  # noqa: F401  (the reranker's input; re-exported)

CONFIG_FILE = "orch_reranker.json"
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
