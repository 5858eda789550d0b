"""evaluate: the whole RAG chain measured on held-out queries, and a report a person can read.

Retrieval systems: BM25, base embedders (models as they ship), the fine-tuned embedders connected to
the node, optionally BM25+dense hybrid, and every reranker on top of the best embedder's candidates
(its score fused with the embedder's by the weight its node chose on dev, and alone) and, alone, on
the candidates of the `rerank_also` first stages (an off-the-shelf embedder, BM25).
Generation (optional): retrieve, then answer from the top passages with the base LLM and with each
LoRA adapter; exact match and token F1 against the reference answers.

Writes report.json / report.md / report.html (plots embedded) and PNG plots into the ``report``
output, the metrics to TensorBoard, and the embeddings to TensorBoard's projector.

Only pydantic and the standard library are imported at module level.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.api import Artifact, Input, ModelRef, RunContext, component, read_jsonl, write_jsonl

from .rag_prompt import RagPrompt


SEED_TARGETS = {"recall@5": 0.7, "recall@10": 0.85}  # the seeds' RAG targets


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerationParams(_Strict):
    max_queries: int = Field(20, ge=1, description="Answer this many test queries (those with reference answers).")
    passages: int = Field(1, ge=1, le=10, description="Retrieved passages put into the prompt.")
    max_new_tokens: int = Field(48, ge=1, le=2048, description="Longest generated answer.")
    max_length: int = Field(768, ge=32, description="Prompt + answer token budget (long passages are cut in the "
                                                    "middle).")
    instruction: str | None = Field(None, description="Instruction of the RAG prompt. Default: the one the adapter "
                                                      "was trained with (its rag_prompt.json, written by data_prep), "
                                                      "else data_prep's default.")
    input_template: str | None = Field(None, description="Prompt input with {passage}, {query} and optional {title}. "
                                                         "Default: as the adapter was trained, else data_prep's.")
    passage_window: int | None = Field(None, ge=0, description="Characters of each retrieved passage in the prompt "
                                                               "(the window sharing the most words with the query); "
                                                               "0: the whole passage. Default: as the adapter was "
                                                               "trained (data_prep's sft_passage_window).")
    base_model: ModelRef | None = Field(None, description="The base generator to compare with; default: the base "
                                                          "model named by the first adapter.")


class EvaluateParams(_Strict):
    ks: list[int] = Field([1, 3, 5, 10], description="Cut-offs of Recall@k, Precision@k, MRR@k, nDCG@k, MAP@k.")
    bm25: bool = Field(True, description="Evaluate BM25 as a baseline retriever.")
    base_embedders: list[ModelRef] = Field(["minilm"], description="Embedding models evaluated as they ship (the "
                                                                  "'before' of before/after fine-tuning).")
    hybrid: bool = Field(True, description="Also evaluate BM25 + the best embedder fused by reciprocal rank.")
    rerank_top_n: int = Field(20, ge=2, le=1000, description="Rerankers reorder the best first stage's top N.")
    rerank_also: list[Literal["base", "bm25"]] = Field(
        ["base"], description="Also rerank these first stages' top N with each reranker alone: base (the first "
                              "base embedder: an off-the-shelf embedder + the trained reranker) and bm25. The "
                              "best fine-tuned embedder's candidates are always reranked.")
    baseline: str | None = Field(None, description="System the deltas are computed against (default: the first "
                                                   "base embedder).")
    targets: dict[str, float] = Field(dict(SEED_TARGETS), description="Metric targets marked met / missed in the "
                                                                      "report (default: the seeds' RAG targets).")
    max_queries: int | None = Field(None, ge=1, description="Evaluate on at most this many test queries.")
    latency_queries: int = Field(20, ge=1, description="Queries timed one at a time for per-stage latency.")
    tsne: bool = Field(True, description="Plot t-SNE of query/passage embeddings, base vs fine-tuned.")
    tsne_max_passages: int = Field(40, ge=5, le=2000, description="Passages (with their queries) in the t-SNE plot.")
    generation: GenerationParams | None = Field(None, description="Answer test queries from retrieved passages with "
                                                                  "the generators (needs `generators`).")
    batch_size: int | None = Field(None, ge=1, description="Encoding batch size; default 16 on CPU, 64 on a GPU.")

    @field_validator("ks")
    @classmethod
    def _ks(cls, v: list[int]) -> list[int]:
        if not v or any(k < 1 for k in v):
            raise ValueError("ks must be positive integers")
        return sorted(set(v))


@component(
    "evaluate",
    params=EvaluateParams,
    inputs={
        "test": Input("ir_eval_set", description="held-out BEIR folder: corpus, queries, qrels (+ answers)"),
        "embedders": Input("embedding_model", optional=True, many=True, description="fine-tuned embedders"),
        "rerankers": Input("reranker_model", optional=True, many=True, description="fine-tuned rerankers"),
        "generators": Input("lora_adapter", optional=True, many=True, description="LoRA-tuned generators"),
    },
    outputs={"report": "eval_report"},
    runs_as="task",
    version="1",
)
def evaluate(params: EvaluateParams, inputs: dict[str, Any], ctx: RunContext) -> None:
    """Measures retrieval (BM25, base and fine-tuned embedders, hybrid, + rerankers) and, optionally, RAG answers.

    Systems are named after the nodes that produced them (``embedder``, ``embedder + reranker``). Metrics
    at every k: Recall, Precision, MRR, nDCG, MAP; per-stage latency per query (one query at a time);
    deltas against the baseline; the recipe's targets marked met or missed. Plots: t-SNE of the
    embedding space before vs after fine-tuning, loss curves of every upstream training node (from
    their TensorBoard events), metric bars.
    """
    from . import plots
    from .retrieval import load_ir_set
    from .metrics import ir_metrics
    from .report import write_report
    from .retrieval import BM25Retriever, DenseRetriever, HybridRetriever, load_model

    test: Artifact = inputs["test"]
    corpus_rows = {r["_id"]: r for r in read_jsonl(test.path / "corpus.jsonl")}
    corpus, queries, qrels = load_ir_set(test.path, params.max_queries)
    doc_ids = list(corpus)
    doc_texts = [corpus[d] for d in doc_ids]
    qids = list(queries)
    qtexts = [queries[q] for q in qids]
    depth = max(max(params.ks), params.rerank_top_n)
    out_dir = ctx.output_dir("report")
    ctx.log(f"test set: {len(qids)} queries, {len(doc_ids)} passages")

    rows: list[dict[str, Any]] = []
    latency: dict[str, dict[str, float]] = {}
    runs: dict[str, list[list[tuple[str, float]]]] = {}
    lat_q = qtexts[: params.latency_queries]

    def add(system: str, kind: str, hits, extra: dict[str, Any] | None = None) -> None:
        runs[system] = hits
        m = ir_metrics({q: h for q, h in zip(qids, hits)}, qrels, ks=params.ks)
        rows.append({"system": system, "kind": kind, **(extra or {}), **m})
        ctx.log(f"{system}: " + ", ".join(f"{k}={m[k]:.3f}" for k in (f"recall@{params.ks[-1]}", "mrr@10", "ndcg@10")
                                          if k in m))
        ctx.log_metrics({f"test/{system}/{k}": v for k, v in m.items()})

    def time_per_query(fn) -> float:
        t0 = time.perf_counter()
        for q in lat_q:
            fn(q)
        return 1000 * (time.perf_counter() - t0) / max(1, len(lat_q))

    if params.bm25:
        bm25 = BM25Retriever().index(doc_ids, doc_texts)
        add("bm25", "sparse", bm25.search(qtexts, depth))
        latency["bm25"] = {"search_ms": time_per_query(lambda q: bm25.search([q], depth))}

    dense: dict[str, DenseRetriever] = {}
    tuned_names: list[str] = []
    base_names: list[str] = []
    for ref in params.base_embedders:
        name = f"{ref} (base)"
        dense[name] = DenseRetriever(load_model(ref, getattr(ctx, "recipe_dir", None)), batch_size=params.batch_size)
        base_names.append(name)
    for art in inputs.get("embedders") or []:
        name = art.meta.get("node", art.path.name)
        dense[name] = DenseRetriever(load_model(str(art.path)), batch_size=params.batch_size)
        tuned_names.append(name)
    for name, r in dense.items():
        t0 = time.perf_counter()
        r.index(doc_ids, doc_texts)
        index_s = time.perf_counter() - t0
        add(name, "dense (fine-tuned)" if name in tuned_names else "dense (base)", r.search(qtexts, depth),
            {"index_s": round(index_s, 2)})
        encode_ms = time_per_query(lambda q: r.embed_queries([q]))
        total_ms = time_per_query(lambda q: r.search([q], depth))  # encode + search
        latency[name] = {"encode_query_ms": encode_ms, "search_ms": max(0.0, total_ms - encode_ms)}

    def best_of(names: list[str]) -> str | None:
        scored = [(next(r for r in rows if r["system"] == n)[f"ndcg@{_k10(params.ks)}"], n) for n in names]
        return max(scored)[1] if scored else None

    first_stage = best_of(tuned_names) or best_of(base_names)
    if params.hybrid and params.bm25 and first_stage:
        hyb = HybridRetriever([bm25, dense[first_stage]], candidates=depth)
        name = f"hybrid (bm25 + {first_stage})"
        add(name, "hybrid", hyb.search(qtexts, depth))

    rerankers = inputs.get("rerankers") or []
    if rerankers and first_stage:
        from .rerank import Reranker

        cand = runs[first_stage]
        for art in rerankers:
            rr = Reranker.load(art.path, device="cuda" if ctx.num_gpus else "cpu")
            node = art.meta.get("node", art.path.name)
            weight = rr.fusion_weight
            alone, fused = _rerank(rr, qtexts, cand, corpus, params.rerank_top_n, weight)
            name = f"{first_stage} + {node}"
            if weight is None:
                add(name, "two-stage", alone, {"rerank_top_n": params.rerank_top_n})
            else:
                # The pipeline as served: scores fused with the weight the reranker node chose on dev.
                add(name, "two-stage", fused, {"rerank_top_n": params.rerank_top_n, "fusion_weight": weight})
                add(f"{name} (reranker alone)", "two-stage", alone, {"rerank_top_n": params.rerank_top_n})
            for other in _other_first_stages(params.rerank_also, first_stage, base_names, runs):
                add(f"{other} + {node}", "two-stage", _rerank(rr, qtexts, runs[other], corpus, params.rerank_top_n)[0],
                    {"rerank_top_n": params.rerank_top_n})
            n_lat = min(len(lat_q), len(cand))
            t0 = time.perf_counter()
            for qt, h in zip(lat_q[:n_lat], cand[:n_lat]):
                rr.scores(qt, [corpus[d] for d, _ in h[: params.rerank_top_n]])
            latency[name] = {**latency.get(first_stage, {}),
                             "rerank_ms": 1000 * (time.perf_counter() - t0) / max(1, n_lat)}

    baseline = params.baseline or (base_names[0] if base_names else rows[0]["system"])
    if baseline not in {r["system"] for r in rows}:
        raise ValueError(f"baseline {baseline!r} is not one of the evaluated systems: "
                         + ", ".join(r["system"] for r in rows))
    base_row = next(r for r in rows if r["system"] == baseline)
    for r in rows:
        r["delta"] = {k: r[k] - base_row[k] for k in base_row if "@" in k}
    best_row = max(rows, key=lambda r: r.get(f"ndcg@{_k10(params.ks)}", 0))
    targets = [{"metric": k, "target": v, "system": best_row["system"], "value": best_row.get(k),
                "met": best_row.get(k) is not None and best_row[k] >= v} for k, v in params.targets.items()]

    generation = None
    if params.generation is not None and inputs.get("generators"):
        generation = evaluate_generation(params.generation, inputs["generators"], test, corpus_rows, qids,
                                         queries, runs[best_row["system"]], best_row["system"], ctx, out_dir)

    plot_files: list[str] = []
    if params.tsne and tuned_names and base_names:
        path = plots.tsne_before_after(dense[base_names[0]], dense[tuned_names[-1]], base_names[0], tuned_names[-1],
                                       corpus, queries, qrels, out_dir / "tsne_before_after.png",
                                       max_passages=params.tsne_max_passages, seed=ctx.seed)
        if path:
            plot_files.append(path.name)
        _projector(ctx, dense, base_names[:1] + tuned_names[-1:], doc_ids, corpus_rows)
    curves = training_curves(inputs)
    if curves:
        plot_files.append(plots.loss_curves(curves, out_dir / "loss_curves.png").name)
    plot_files.append(plots.metric_bars(rows, params.ks, out_dir / "retrieval_metrics.png").name)

    report = {
        "test_set": {"queries": len(qids), "passages": len(doc_ids), "source": test.key},
        "ks": params.ks, "baseline": baseline, "best": best_row["system"],
        "retrieval": rows, "latency_ms": latency, "targets": targets, "generation": generation,
        "training": {name: {k: v for k, v in c.items() if k != "series"} for name, c in curves.items()},
        "plots": plot_files,
    }
    write_report(out_dir, report, title=f"RAG evaluation — {ctx.node}")
    headline = {k: best_row[k] for k in ("recall@5", "recall@10", "mrr@10", "ndcg@10") if k in best_row}
    ctx.set_summary({"best_system": best_row["system"], "baseline": baseline,
                     **{f"best/{k}": best_row[k] for k in ("recall@5", "recall@10", "mrr@10", "ndcg@10") if k in best_row},
                     **{f"baseline/{k}": base_row[k] for k in ("recall@5", "recall@10", "mrr@10", "ndcg@10")
                        if k in base_row},
                     "targets_met": sum(t["met"] for t in targets), "targets": len(targets),
                     **({"generation": {g["generator"]: {"em": g["em"], "f1": g["f1"]} for g in generation["rows"]}}
                        if generation else {})})
    ctx.log(f"report: {out_dir / 'report.md'} | best {best_row['system']}: " + ", ".join(f"{k}={v:.3f}" for k, v in headline.items()))


def _rerank(rr, qtexts, cand, corpus, top_n: int, weight: float | None = None):
    """Each query's first-stage top ``top_n`` reordered by the reranker alone, and (with a fusion
    weight) by the fused score; documents past ``top_n`` are dropped."""
    from .fusion import fuse

    alone, fused = [], []
    for qt, h in zip(qtexts, cand):
        top = h[:top_n]
        scores = rr.scores(qt, [corpus[d] for d, _ in top])
        alone.append(sorted(((d, s) for (d, _), s in zip(top, scores)), key=lambda x: -x[1]))
        if weight is not None:
            mixed = fuse([s for _, s in top], scores, weight)
            fused.append(sorted(((d, s) for (d, _), s in zip(top, mixed)), key=lambda x: -x[1]))
    return alone, fused


def _other_first_stages(also: list[str], first_stage: str, base_names: list[str], runs) -> list[str]:
    """The systems named by ``rerank_also`` that were evaluated and are not the main first stage."""
    names = {"base": base_names[0] if base_names else None, "bm25": "bm25"}
    return [n for n in (names[a] for a in also) if n and n in runs and n != first_stage]


def _k10(ks: list[int]) -> int:
    return 10 if 10 in ks else ks[-1]


def _projector(ctx, dense, names, doc_ids, corpus_rows) -> None:
    """Passage embeddings of the base and fine-tuned embedder in TensorBoard's projector."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover
        return
    import torch

    writer = SummaryWriter(str(ctx.tensorboard_dir()))
    try:
        meta = [(corpus_rows[d].get("title") or corpus_rows[d]["text"][:20]).replace("\t", " ") for d in doc_ids]
        for name in names:
            emb = dense[name].doc_embeddings
            if emb is not None:
                writer.add_embedding(torch.as_tensor(emb), metadata=meta, tag=f"passages/{name}".replace(" ", "_"))
    finally:
        writer.close()


def training_curves(inputs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{node: {"series": {tag: [(step, value)]}, "final_loss": x, "steps": n}} from upstream training entries."""
    from .plots import read_scalars

    curves: dict[str, dict[str, Any]] = {}
    for key in ("embedders", "rerankers", "generators"):
        for art in inputs.get(key) or []:
            entry = art.path.parent.parent  # <entry>/outputs/<name>
            series = read_scalars(entry)
            loss = series.get("train/loss") or []
            if not loss:
                continue
            curves[art.meta.get("node", entry.name)] = {
                "series": series, "steps": int(loss[-1][0]), "first_loss": loss[0][1], "final_loss": loss[-1][1],
                **{k.removeprefix("dev/"): v[-1][1] for k, v in series.items()
                   if k.startswith("dev/") and k.split("/")[-1].startswith(("recall@10", "ndcg@10", "mrr@10"))}}
    return curves


# ---------------------------------------------------------------------------------------------
# generation: retrieve, then answer
# ---------------------------------------------------------------------------------------------


def evaluate_generation(gp: GenerationParams, adapters: list[Artifact], test: Artifact, corpus_rows, qids, queries,
                        hits, retriever_name: str, ctx, out_dir: Path) -> dict[str, Any]:
    import torch

    from .lora_sft import generate, prepare_tokenizer
    from .metrics import exact_match, token_f1
    from .models import load_causal_lm, load_tokenizer

    answers = {}
    if (test.path / "answers.jsonl").exists():
        answers = {r["_id"]: r["answers"] for r in read_jsonl(test.path / "answers.jsonl") if r.get("answers")}
    chosen = [(i, q) for i, q in enumerate(qids) if q in answers][: gp.max_queries]
    if not chosen:
        ctx.log("generation skipped: the test set has no reference answers")
        return {"rows": [], "samples": [], "skipped": "no reference answers"}

    def messages(prompt: RagPrompt) -> list[list[dict[str, str]]]:
        return [[{"role": "user", "content": prompt.user_message(
            queries[q], [corpus_rows[d] for d, _ in hits[i][: gp.passages]])}] for i, q in chosen]

    meta_file = adapters[0].path / "orch_base_model.json"
    first_meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    base_ref = gp.base_model or first_meta.get("base_model") or first_meta.get("base_model_path")
    if not base_ref:
        raise ValueError("generation: cannot tell the base model; set generation.base_model")

    class _G:  # the knobs lora_sft.generate reads
        max_length = gp.max_length
        max_new_tokens = gp.max_new_tokens
        generation_batch_size = 4

    def run(model, tokenizer, prompt: RagPrompt) -> list[str]:
        prompts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
                   for m in messages(prompt)]
        return generate(model, tokenizer, prompts, _G)

    torch.manual_seed(ctx.seed)
    tokenizer = load_tokenizer(base_ref)
    prepare_tokenizer(tokenizer)
    model = load_causal_lm(base_ref, compute_dtype=torch.float32)
    model.eval()
    outputs: dict[str, list[str]] = {}
    t0 = time.perf_counter()
    base_prompt = rag_prompt_for(gp, adapters[0].path)  # the base answers the first adapter's prompts: the same inputs
    outputs[f"{base_ref} (base)"] = run(model, tokenizer, base_prompt)
    gen_ms = {f"{base_ref} (base)": 1000 * (time.perf_counter() - t0) / len(chosen)}
    from peft import PeftModel

    for art in adapters:
        name = art.meta.get("node", art.path.name)
        tuned = PeftModel.from_pretrained(model, str(art.path))
        tuned.eval()
        t0 = time.perf_counter()
        outputs[name] = run(tuned, tokenizer, rag_prompt_for(gp, art.path))
        gen_ms[name] = 1000 * (time.perf_counter() - t0) / len(chosen)
        model = tuned.unload()  # back to the plain base for the next adapter
    rows = []
    for name, preds in outputs.items():
        golds = [answers[q] for _, q in chosen]
        em = sum(exact_match(p, g) for p, g in zip(preds, golds)) / len(preds)
        f1 = sum(token_f1(p, g) for p, g in zip(preds, golds)) / len(preds)
        rows.append({"generator": name, "em": em, "f1": f1, "queries": len(preds), "ms_per_answer": gen_ms[name]})
        ctx.log(f"generation {name}: EM {em:.3f} F1 {f1:.3f} ({gen_ms[name]:.0f} ms/answer)")
        ctx.log_metrics({f"test/generation/{name}/em": em, f"test/generation/{name}/f1": f1})
    samples = []
    for j, (i, q) in enumerate(chosen):
        samples.append({"query": queries[q], "reference": answers[q][0], "retrieved": [d for d, _ in hits[i][: gp.passages]],
                        **{name: preds[j] for name, preds in outputs.items()}})
    write_jsonl(out_dir / "answers.jsonl", samples)
    return {"retriever": retriever_name, "rows": rows, "samples": samples[:10], "prompt": asdict(base_prompt)}


def rag_prompt_for(gp: GenerationParams, adapter: Path) -> RagPrompt:
    """The adapter's saved RAG prompt (else the defaults), with what ``gp`` sets on top."""
    saved = RagPrompt.load(adapter) or RagPrompt()
    window = saved.passage_window if gp.passage_window is None else (gp.passage_window or None)
    return RagPrompt(gp.instruction if gp.instruction is not None else saved.instruction,
                     gp.input_template if gp.input_template is not None else saved.input_template, window)
