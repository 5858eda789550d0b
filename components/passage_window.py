"""The part of a long passage a model reads: the window that shares the most words with the query.

A cross-encoder or a small generator reads a few hundred tokens; cut after its start, a passage
loses whatever the query asks about further down (on CMRC2018 the answer lies past the first 76
characters in 46% of the questions, and SmolLM2's tokenizer spends ~2 tokens per Chinese
character). ``text_window`` picks, per query, the ``chars``-character window holding the most query
terms (character bigrams for Chinese, lower-cased words otherwise): no answer is needed, so
training, evaluation and serving choose the same way. Used by the reranker (``passage_window``,
components/rerank.py) and by the generator's RAG prompt (components/rag_prompt.py).

Standard library only: recipe validation imports the modules that use it.
"""

from __future__ import annotations

import re
from typing import Sequence

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_CJK_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]{2,}")
_WORD = re.compile(r"\w+", re.UNICODE)


def query_terms(query: str) -> set[str]:
    """Character bigrams of the query's CJK runs (single characters such as 的 match everywhere and
    are left out) plus its lower-cased non-CJK words of two letters or more."""
    terms: set[str] = set()
    for run in _CJK_RUN.findall(query):
        terms.update(run[i:i + 2] for i in range(len(run) - 1))
    terms.update(w.lower() for w in _WORD.findall(_CJK.sub(" ", query)) if len(w) > 1)
    return terms


def text_window(query: str, text: str, chars: int) -> str:
    """The ``chars``-character window of ``text`` holding the most query terms (``text`` itself when
    it fits). Windows start every ``chars // 4`` characters; ties go to the earliest window."""
    if len(text) <= chars:
        return text
    terms = query_terms(query)
    lowered = text.lower()
    stride = max(1, chars // 4)
    best_start, best_hits = 0, -1
    for start in range(0, len(text) - chars + stride, stride):
        window = lowered[start:start + chars]
        hits = sum(1 for t in terms if t in window)
        if hits > best_hits:
            best_start, best_hits = start, hits
    return text[best_start:best_start + chars]


def best_window(query: str, passage: str, chars: int) -> str:
    """For a ``title\\ntext`` passage (retrieval.passage_text): the title, a newline and the text's
    best window (text_window). A passage without a newline is windowed whole."""
    title, sep, text = passage.partition("\n")
    if not sep:
        return text_window(query, passage, chars)
    return f"{title}\n{text_window(query, text, chars)}"


def windowed(query: str, docs: Sequence[str], chars: int | None) -> list[str]:
    return list(docs) if not chars else [best_window(query, d, chars) for d in docs]
