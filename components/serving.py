"""Two-stage retrieval (and answers) from a finished run: the library behind `orch query`.

    from components.serving import RagPipeline
    rag = RagPipeline.from_run("runs/rag_full/20261124-...")     # or RagPipeline(embedder=..., corpus=...)
    for hit in rag.search("《战国无双3》是由哪两个公司合作开发的？", k=5):
        print(hit.rank, hit.rerank_score, hit.dense_score, hit.title)
    rag.rerank("query", ["doc a", "doc b"], top_k=1)
    rag.answer("query")                                        # needs a LoRA-tuned generator in the run

Passage embeddings are cached next to the run (``.serving/<embedder key>.npy``), so the second query
does not re-encode the corpus.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.api import read_jsonl


@dataclass
class Hit:
    rank: int
    doc_id: str
    title: str
    text: str
    dense_score: float
    rerank_score: float | None = None
    score: float | None = None  # what the ranking used: fused (see components/fusion.py), rerank or dense


@dataclass
class Timings:
    encode_ms: float = 0.0
    search_ms: float = 0.0
    rerank_ms: float = 0.0
    generate_ms: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


class RagPipeline:
    def __init__(self, *, embedder: str, corpus: str | Path, reranker: str | None = None,
                 adapter: str | Path | None = None, cache_dir: str | Path | None = None, device: str | None = None):
        from .retrieval import DenseRetriever, load_model, passage_text

        self.rows = read_jsonl(Path(corpus) / "corpus.jsonl" if Path(corpus).is_dir() else Path(corpus))
        self.by_id = {r["_id"]: r for r in self.rows}
        ids = [r["_id"] for r in self.rows]
        self.dense = DenseRetriever(load_model(str(embedder), device=device))
        cache = Path(cache_dir) / (Path(str(embedder)).parent.parent.name + ".npy") if cache_dir else None
        if cache is not None and cache.exists():
            import numpy as np

            emb = np.load(cache)
            if len(emb) == len(ids):
                self.dense.index_embeddings(ids, emb)
        if self.dense.doc_embeddings is None:
            self.dense.index(ids, [passage_text(r) for r in self.rows])
            if cache is not None:
                import numpy as np

                cache.parent.mkdir(parents=True, exist_ok=True)
                np.save(cache, self.dense.doc_embeddings)
        self.reranker = None
        if reranker:
            from .rerank import Reranker

            self.reranker = Reranker.load(reranker, device=device)
        self.adapter = Path(adapter) if adapter else None
        self._generator = None
        self.timings = Timings()

    @classmethod
    def from_run(cls, run_dir: str | Path, **kwargs: Any) -> "RagPipeline":
        """The last embedder, reranker, LoRA adapter and the corpus produced by a finished run."""
        from orchestrator.store import run_artifacts

        arts = run_artifacts(Path(run_dir))
        last = {a.kind: a for a in arts}
        if "embedding_model" not in last or "corpus" not in last:
            have = sorted({a.kind for a in arts}) or ["nothing"]
            raise LookupError(f"run {run_dir} has no finished embedding_model and corpus (it has {', '.join(have)}); "
                              "run a recipe with an embed_finetune node first")
        return cls(embedder=str(last["embedding_model"].path), corpus=last["corpus"].path,
                   reranker=str(last["reranker_model"].path) if "reranker_model" in last else None,
                   adapter=last["lora_adapter"].path if "lora_adapter" in last else None,
                   cache_dir=Path(run_dir) / ".serving", **kwargs)

    # -- retrieval -----------------------------------------------------------------------------
    def search(self, query: str, k: int = 5, *, candidates: int = 20) -> list[Hit]:
        """Dense recall of ``candidates`` passages, then (with a reranker) cross-encoder reranking to ``k``.

        With the ``fusion.json`` a reranker_finetune node saves, the ranking uses the dev-tuned mix of
        both scores (``Hit.score``); ``Hit.rerank_score`` is always the cross-encoder's own score.
        """
        t0 = time.perf_counter()
        q = self.dense.embed_queries([query])
        t1 = time.perf_counter()
        hits = self.dense.search_embeddings(q, max(k, candidates) if self.reranker else k)[0]
        t2 = time.perf_counter()
        self.timings.encode_ms, self.timings.search_ms = 1000 * (t1 - t0), 1000 * (t2 - t1)
        out = [Hit(i + 1, d, self.by_id[d].get("title", ""), self.by_id[d]["text"], float(s), score=float(s))
               for i, (d, s) in enumerate(hits)]
        if self.reranker is None:
            return out[:k]
        from .fusion import fuse
        from .retrieval import passage_text

        scores = self.rerank_scores(query, [passage_text(self.by_id[h.doc_id]) for h in out])
        weight = self.reranker.fusion_weight
        final = scores if weight is None else fuse([h.dense_score for h in out], scores, weight)
        for h, s, f in zip(out, scores, final):
            h.rerank_score, h.score = s, f
        out.sort(key=lambda h: -(h.score or 0.0))
        for i, h in enumerate(out):
            h.rank = i + 1
        return out[:k]

    def rerank_scores(self, query: str, docs: list[str]) -> list[float]:
        if self.reranker is None:
            raise LookupError("no reranker: the run has no reranker_finetune node")
        t0 = time.perf_counter()
        scores = self.reranker.scores(query, docs)
        self.timings.rerank_ms = 1000 * (time.perf_counter() - t0)
        return scores

    def rerank(self, query: str, docs: list[str], top_k: int | None = None) -> list[tuple[int, float, str]]:
        """(index in docs, score, doc) best first."""
        scores = self.rerank_scores(query, docs)
        order = sorted(range(len(docs)), key=lambda i: -scores[i])
        return [(i, scores[i], docs[i]) for i in order[: top_k or len(docs)]]

    # -- generation ----------------------------------------------------------------------------
    def answer_message(self, query: str, hits: list[Hit]) -> str:
        """The user turn the generator gets: the adapter's saved RAG prompt (rag_prompt.json: instruction,
        template, passage window) filled with ``hits``; the defaults for an adapter without one."""
        from .rag_prompt import RagPrompt

        prompt = (RagPrompt.load(self.adapter) if self.adapter else None) or RagPrompt()
        return prompt.user_message(query, [{"title": h.title, "text": h.text} for h in hits])

    def answer(self, query: str, hits: list[Hit] | None = None, *, passages: int = 1, max_new_tokens: int = 64) -> str:
        """Answer from the top passages with the run's LoRA-tuned generator, in the prompt it was trained
        on (the adapter's rag_prompt.json: instruction, template, passage window; else the defaults)."""
        import json

        from .lora_sft import generate, prepare_tokenizer

        if self.adapter is None:
            raise LookupError("no generator: the run has no lora_sft node")
        if self._generator is None:
            import torch
            from peft import PeftModel

            from .models import load_causal_lm, load_tokenizer

            meta_file = self.adapter / "orch_base_model.json"
            meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
            base = meta.get("base_model") or meta.get("base_model_path")
            tok = load_tokenizer(base)
            prepare_tokenizer(tok)
            model = PeftModel.from_pretrained(load_causal_lm(base, compute_dtype=torch.float32), str(self.adapter))
            model.eval()
            self._generator = (model, tok)
        model, tok = self._generator
        hits = hits if hits is not None else self.search(query, k=passages)
        docs = hits[:passages]
        user = self.answer_message(query, docs)
        prompt = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)

        class _G:
            max_length = 1024
            generation_batch_size = 1

        _G.max_new_tokens = max_new_tokens
        t0 = time.perf_counter()
        out = generate(model, tok, [prompt], _G)[0]
        self.timings.generate_ms = 1000 * (time.perf_counter() - t0)
        return out
