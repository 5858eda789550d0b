"""reranker_finetune: a cross-encoder reranker trained on (query, doc, label), one process per Ray Train worker.

sentence-transformers' CrossEncoderTrainer runs inside each worker (DDP over the process group Ray
Train set up). Negatives come from the data (hard negatives from ``hard_negative_mining``) and/or are
sampled at random from a corpus (``random_negatives``), so a recipe can train both and compare.

Only pydantic and the standard library are imported at module level.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from orchestrator.api import Artifact, Input, ModelRef, RunContext, component, read_jsonl

from .finetune_common import (TrainLoopParams, apply_lora, extend_vocab_for, precision_flags, schedule,
                              steps_per_run)

POINTWISE = ("bce", "mse")
LISTWISE = ("lambda", "listnet", "ranknet")


class RerankerFinetuneParams(TrainLoopParams):
    model: ModelRef = Field("minilm", description="Starting model: a cross-encoder (e.g. BAAI/bge-reranker-base) or "
                                                  "an encoder that gets a new 1-logit head (minilm: all-MiniLM-L6-v2, "
                                                  "packaged offline; no pretrained reranker ships offline).")
    loss: Literal["bce", "mse", "ranknet", "lambda", "listnet", "mnrl"] = Field(
        "bce", description="bce: binary labels (pointwise); mse: graded scores (pointwise, labels scaled to 0..1 by "
                           "label_max); ranknet: pairwise; lambda (LambdaLoss, NDCG-weighted) / listnet: listwise "
                           "over each query's documents; mnrl: softmax of the positive against its negatives.")
    label_max: float = Field(1.0, gt=0, description="Largest label value (3 for graded 0-3 labels): mse / listwise "
                                                    "losses divide labels by it.")
    random_negatives: int = Field(0, ge=0, le=64, description="Random negatives per query sampled from the `corpus` "
                                                              "input (never a positive of that query), added to "
                                                              "the data's own negatives.")
    max_negatives: int = Field(7, ge=1, le=128, description="At most this many negatives per query from the data.")
    first_stage: Literal["bm25", "dense"] = Field(
        "bm25", description="Dev evaluation: how the candidates to rerank are retrieved (unless a `retriever` "
                            "embedding model is connected, which is then used).")
    rerank_top_k: int = Field(20, ge=2, le=1000, description="Dev evaluation: candidates reranked per query.")
    eval_k: int = Field(10, ge=1, description="Dev evaluation: MRR@k and nDCG@k cut-off.")
    eval_max_queries: int | None = Field(None, ge=1, description="Evaluate on at most this many dev queries.")
    passage_window: int | None = Field(None, ge=16, description="Characters of each passage the cross-encoder "
                                                            "reads: its title plus the window of this many "
                                                            "characters sharing the most words with the query, "
                                                            "instead of the passage's start (cut at "
                                                            "max_seq_length). Saved with the model; evaluate and "
                                                            "serving apply it. null: the whole passage.")
    fusion: bool = Field(True, description="After training, choose on the dev queries the weight w of "
                                           "w * rerank + (1 - w) * first-stage score (min-max per query; w = 1: "
                                           "the reranker alone) and save it as fusion.json next to the model, "
                                           "where evaluate and serving apply it. Needs the `dev` input.")
    warm_start: bool = Field(False, description="Start from the connected `retriever` embedder's encoder (already "
                                                "tuned to this domain, with a new 1-logit head) instead of `model`.")
    seed: int | None = Field(None, description="Overrides the recipe's seed for this node.")
    batch_size: int = Field(32, ge=1, description="GLOBAL batch size (query-document pairs for bce/mse; queries for "
                                                  "listwise losses and mnrl), summed over workers.")
    lr: float = Field(5e-5, gt=0, lt=1, description="Peak learning rate (the new head learns fast at 5e-5..1e-4).")

    @model_validator(mode="after")
    def _checks(self):
        if self.rerank_top_k < self.eval_k:
            raise ValueError("rerank_top_k must be >= eval_k")
        return self


@component(
    "reranker_finetune",
    params=RerankerFinetuneParams,
    inputs={
        "train": Input("labeled_pairs", "ntuples", "triplets", "pairs",
                       description="(query, doc, label) pairs, n-tuples or triplets with negatives, or plain pairs "
                                   "(then random_negatives > 0 and a corpus are needed)"),
        "corpus": Input("corpus", optional=True, description="source of random negatives and of extend_vocab's "
                                                             "new tokens"),
        "dev": Input("ir_eval_set", optional=True, description="BEIR folder: rerank evaluation during training"),
        "retriever": Input("embedding_model", optional=True,
                           description="first stage of the dev evaluation (default: `first_stage`)"),
    },
    outputs={"model": "reranker_model"},
    runs_as="train",
    version="1",
)
def reranker_finetune(params: RerankerFinetuneParams, inputs: dict[str, Artifact], ctx: RunContext) -> None:
    """Trains a cross-encoder reranker (sentence-transformers CrossEncoderTrainer, DDP over Ray Train).

    Evaluates on the dev set before training, every ``eval_steps`` and at the end by reranking each dev
    query's top ``rerank_top_k`` first-stage candidates (positives are NOT forced into the list, so the
    numbers are what a user gets): MRR@k / nDCG@k after reranking, next to the first stage's own
    (``dev/first_stage_mrr@k``). Checkpoints and resumes like the embedder. The output loads with
    ``CrossEncoder(path)``.
    """
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments

    from .models import resolve_model
    from .training import common_training_args, make_callback, peak_memory_gb, resume_checkpoint, seed_everything

    seed = params.seed if params.seed is not None else ctx.seed
    seed_everything(seed)
    groups = load_groups(inputs["train"], inputs.get("corpus"), params, seed)
    dataset, columns, stats = to_dataset(groups, params)
    world = max(1, ctx.world_size)
    per_worker = -(-params.batch_size // world)
    total = steps_per_run(len(dataset), per_worker * world, params.epochs, params.max_steps, params.grad_accum)
    evaluator = None
    if inputs.get("dev") is not None:
        evaluator = rerank_evaluator(inputs["dev"], inputs.get("retriever"), params, ctx)
    eval_steps, save_steps = schedule(total, params.eval_steps, params.save_steps)
    ctx.log(f"{stats['queries']} queries, {stats['positives']} positives, {stats['hard_negatives']} negatives from "
            f"the data + {stats['random_negatives']} random; {len(dataset)} examples ({columns}); loss {params.loss}; "
            f"batch {per_worker}/worker x {world} = {per_worker * world}; {total} steps")

    start = resolve_model(params.model, getattr(ctx, "recipe_dir", None))
    if params.warm_start:
        if inputs.get("retriever") is None:
            raise ValueError("warm_start needs the `retriever` input (an embed_finetune model): connect it, or set "
                             "warm_start: false")
        start = encoder_folder(inputs["retriever"].path)
        ctx.log(f"warm start from the embedder's encoder ({start})")
    model = CrossEncoder(start, num_labels=1,
                         max_length=params.max_seq_length, device="cuda" if ctx.num_gpus else "cpu")
    texts = [text for q, g in groups.items() for text in (q, *g["pos"], *g["neg"], *g["random"])]
    if inputs.get("corpus") is not None and params.extend_vocab is not None:
        from .retrieval import passage_text

        texts += [passage_text(r) for r in read_jsonl(inputs["corpus"].main_file)]
    added = extend_vocab_for(params, model.tokenizer, model.model, texts, seed, ctx.log)
    if params.lora is not None:
        from .vocab import input_embedding_name

        model.model, trainable, n_params = apply_lora(
            model.model, params.lora, task_type="SEQ_CLS",
            modules_to_save=[input_embedding_name(model.model)] if added else None)
        ctx.log(f"LoRA r={params.lora.r}: {trainable:,} trainable of {n_params:,} parameters")
    loss = build_loss(model, params)

    args = CrossEncoderTrainingArguments(**common_training_args(
        ctx, ctx.work_dir / "hf", seed=seed, lr=params.lr, epochs=params.epochs, max_steps=params.max_steps,
        per_device_batch=per_worker, grad_accum=params.grad_accum, warmup_ratio=params.warmup_ratio,
        weight_decay=params.weight_decay, eval_steps=eval_steps if evaluator else None, save_steps=save_steps,
        logging_steps=params.logging_steps, gradient_checkpointing=params.gradient_checkpointing,
        lr_scheduler=params.lr_scheduler, **precision_flags(params.mixed_precision, ctx.num_gpus),
        extra={"max_steps": total}))

    resume = resume_checkpoint(ctx)
    base: dict[str, float] = {}
    if evaluator is not None and resume is None:
        t0 = time.time()
        base = evaluator(model)
        ctx.log_metrics({f"dev/{k}": v for k, v in base.items()}, step=0)
        if ctx.world_rank == 0:
            ctx.log(f"before training ({time.time() - t0:.1f}s): " + _fmt(base))
            (ctx.work_dir / "base_metrics.json").write_text(json.dumps(base))
    elif resume:
        ctx.log(f"resuming from checkpoint {Path(resume).name}")
        prev = ctx.work_dir / "base_metrics.json"
        base = json.loads(prev.read_text()) if prev.exists() else {}

    callback = make_callback(ctx)
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=dataset, loss=loss, evaluator=evaluator,
                                  callbacks=[callback])
    started = time.time()
    out = trainer.train(resume_from_checkpoint=resume)
    train_s = time.time() - started
    final = dict(callback.last_eval)
    if evaluator is not None and (not final or trainer.state.global_step % eval_steps):
        final = {f"dev/{k}": v for k, v in evaluator(model).items()}
        ctx.log_metrics(final, step=trainer.state.global_step)
    if ctx.world_rank != 0:
        return
    target = ctx.output_dir("model")
    if params.lora is not None and params.lora.export == "merged":
        model.model = model.model.merge_and_unload()
    model.save_pretrained(str(target), safe_serialization=True)
    from .rerank import save_config

    save_config(target, passage_window=params.passage_window)
    (target / "orch_eval.json").write_text(json.dumps({"base": {f"dev/{k}": v for k, v in base.items()},
                                                       "final": final}, indent=2))
    fusion = {}
    if params.fusion and evaluator is not None:
        fusion = tune_fusion(model, evaluator, params, target, ctx)
    summary = {"train_loss": float(out.training_loss), "steps": trainer.state.global_step, "examples": len(dataset),
               "train_seconds": round(train_s, 1), "workers": world, "global_batch": per_worker * world,
               **{k: v for k, v in stats.items() if k != "queries_without_negative_ids"}, **peak_memory_gb(),
               **{k: v for k, v in final.items() if "@" in k},
               **{f"base_dev/{k}": v for k, v in base.items() if "@" in k and not k.startswith("first_stage")},
               **fusion}
    ctx.set_summary(summary)
    ctx.log("final dev: " + _fmt({k.removeprefix("dev/"): v for k, v in final.items()}))


def tune_fusion(model, evaluator, params: RerankerFinetuneParams, target: Path, ctx) -> dict[str, float]:
    """Choose and save the two-stage fusion weight on the dev candidates (see components/fusion.py)."""
    from .fusion import choose_weight, save_fusion

    samples, first = evaluator.samples, evaluator.first_stage_scores
    rerank = [[float(x) for x in model.predict([(s["query"], d) for d in s["documents"]], batch_size=64,
                                               show_progress_bar=False)] if s["documents"] else []
              for s in samples]
    relevant = [{i for i, d in enumerate(s["documents"]) if d in set(s["positive"])} for s in samples]
    weight, by_weight = choose_weight(first, rerank, relevant, params.eval_k)
    save_fusion(target, weight, by_weight, k=params.eval_k, queries=len(samples))
    k = params.eval_k
    ctx.log(f"fusion weight on {len(samples)} dev queries: w={weight} (dev MRR@{k}: first stage "
            f"{by_weight[0.0]:.3f}, reranker alone {by_weight[1.0]:.3f}, fused {by_weight[weight]:.3f})")
    return {"fusion_weight": weight, f"dev/fused_mrr@{k}": by_weight[weight]}


def encoder_folder(st_folder: Path) -> str:
    """The transformers folder inside a sentence-transformers model (its first module), for a warm start."""
    modules = st_folder / "modules.json"
    if modules.exists():
        for m in json.loads(modules.read_text()):
            if m.get("type", "").endswith("Transformer"):
                sub = st_folder / m.get("path", "")
                if (sub / "config.json").exists():
                    return str(sub)
    return str(st_folder)


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.3f}" for k, v in sorted(metrics.items()) if "@" in k)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------


def load_groups(art: Artifact, corpus: Artifact | None, params: RerankerFinetuneParams, seed: int):
    """{query: {"pos": {doc: label}, "neg": [doc, ...], "random": [doc, ...]}} from any supported input."""
    rows = read_jsonl(art.main_file)
    if not rows:
        raise ValueError(f"{art.main_file} is empty: nothing to train on")
    groups: dict[str, dict[str, Any]] = {}

    def group(q: str) -> dict[str, Any]:
        return groups.setdefault(q, {"pos": {}, "neg": [], "random": []})

    for r in rows:
        g = group(r["query"])
        if art.kind == "labeled_pairs":
            if float(r["label"]) > 0:
                g["pos"][r["doc"]] = float(r["label"])
            else:
                g["neg"].append(r["doc"])
        elif art.kind == "ntuples":
            for p in r.get("pos") or []:
                g["pos"][p] = 1.0
            g["neg"].extend(r.get("neg") or [])
        elif art.kind == "triplets":
            g["pos"][r["positive"]] = float(r.get("label", 1.0))
            g["neg"].append(r["negative"])
        else:  # pairs
            g["pos"][r["positive"]] = 1.0
    for g in groups.values():
        g["neg"] = [d for d in dict.fromkeys(g["neg"]) if d not in g["pos"]][: params.max_negatives]
    if params.random_negatives:
        if corpus is None:
            raise ValueError("random_negatives needs the `corpus` input: connect a corpus (e.g. prep.corpus)")
        from .retrieval import passage_text

        docs = [passage_text(r) for r in read_jsonl(corpus.main_file)]
        rng = random.Random(seed)
        for q, g in groups.items():
            taken = set(g["pos"]) | set(g["neg"])
            pool = [d for d in rng.sample(docs, min(len(docs), params.random_negatives * 3 + len(taken)))
                    if d not in taken]
            g["random"] = pool[: params.random_negatives]
    missing = [q for q, g in groups.items() if not g["neg"] and not g["random"]]
    if len(missing) == len(groups):
        raise ValueError(f"no negatives in {art.kind} data: set random_negatives (with a corpus input) or feed "
                         "labeled_pairs / ntuples from hard_negative_mining")
    groups = {q: g for q, g in groups.items() if g["pos"]}
    return groups


def to_dataset(groups: dict[str, dict[str, Any]], params: RerankerFinetuneParams):
    from datasets import Dataset

    from .rerank import windowed

    if params.passage_window:  # what the model will read at inference: each query's best window
        groups = {q: {"pos": dict(zip(windowed(q, list(g["pos"]), params.passage_window), g["pos"].values())),
                      "neg": windowed(q, g["neg"], params.passage_window),
                      "random": windowed(q, g["random"], params.passage_window)} for q, g in groups.items()}

    stats = {"queries": len(groups), "positives": sum(len(g["pos"]) for g in groups.values()),
             "hard_negatives": sum(len(g["neg"]) for g in groups.values()),
             "random_negatives": sum(len(g["random"]) for g in groups.values()),
             "queries_without_negative": sum(1 for g in groups.values() if not g["neg"] and not g["random"])}
    scale = params.label_max
    if params.loss in POINTWISE:
        q, d, lab = [], [], []
        for query, g in groups.items():
            for doc, label in g["pos"].items():
                q.append(query), d.append(doc), lab.append(label / scale if params.loss == "mse" else min(1.0, label))
            for doc in g["neg"] + g["random"]:
                q.append(query), d.append(doc), lab.append(0.0)
        data = {"query": q, "document": d, "label": lab}
    elif params.loss in LISTWISE:
        q, docs, labels = [], [], []
        for query, g in groups.items():
            negs = g["neg"] + g["random"]
            if not negs:
                continue
            q.append(query)
            docs.append(list(g["pos"]) + negs)
            labels.append([v / scale for v in g["pos"].values()] + [0.0] * len(negs))
        data = {"query": q, "docs": docs, "labels": labels}
    else:  # mnrl: (query, positive, negative_1..n); n = the smallest count available
        usable = [(query, g) for query, g in groups.items() if g["neg"] or g["random"]]
        n = min(len(g["neg"] + g["random"]) for _, g in usable)
        data = {"query": [], "positive": []}
        for i in range(n):
            data[f"negative_{i + 1}"] = []
        for query, g in usable:
            negs = g["neg"] + g["random"]
            for doc in g["pos"]:
                data["query"].append(query), data["positive"].append(doc)
                for i in range(n):
                    data[f"negative_{i + 1}"].append(negs[i])
    return Dataset.from_dict(data), list(data), stats


def build_loss(model, params: RerankerFinetuneParams):
    from sentence_transformers.cross_encoder import losses

    if params.loss == "bce":
        return losses.BinaryCrossEntropyLoss(model)
    if params.loss == "mse":
        return losses.MSELoss(model)
    if params.loss == "ranknet":
        return losses.RankNetLoss(model)
    if params.loss == "lambda":
        return losses.LambdaLoss(model)
    if params.loss == "listnet":
        return losses.ListNetLoss(model)
    return losses.MultipleNegativesRankingLoss(model)


# ---------------------------------------------------------------------------------------------
# dev evaluation: rerank first-stage candidates
# ---------------------------------------------------------------------------------------------


def first_stage_candidates(dev: Artifact, retriever: Artifact | None, params: RerankerFinetuneParams, ctx):
    """Dev samples {query, positive: [texts], documents: [candidates in first-stage order]}, and the
    first stage's scores of those candidates."""
    from .rerank import windowed
    from .retrieval import BM25Retriever, DenseRetriever, load_ir_set, load_model

    corpus, queries, qrels = load_ir_set(dev.path, params.eval_max_queries)
    ids = list(corpus)
    if retriever is not None or params.first_stage == "dense":
        ref = str(retriever.path) if retriever is not None else "minilm"
        r = DenseRetriever(load_model(ref, getattr(ctx, "recipe_dir", None)))
    else:
        r = BM25Retriever()
    r.index(ids, [corpus[i] for i in ids])
    qids = list(queries)
    hits = r.search([queries[q] for q in qids], params.rerank_top_k)
    samples, scores = [], []
    for q, h in zip(qids, hits):
        samples.append({"query": queries[q],
                        "positive": windowed(queries[q], [corpus[d] for d in qrels[q] if d in corpus],
                                             params.passage_window),
                        "documents": windowed(queries[q], [corpus[d] for d, _ in h], params.passage_window)})
        scores.append([float(s) for _, s in h])
    return samples, scores


def rerank_evaluator(dev: Artifact, retriever: Artifact | None, params: RerankerFinetuneParams, ctx):
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

    samples, first_scores = first_stage_candidates(dev, retriever, params, ctx)
    inner = CrossEncoderRerankingEvaluator(samples, at_k=params.eval_k, always_rerank_positives=False, name="dev",
                                           write_csv=False, batch_size=64)

    from sentence_transformers.base.evaluation.evaluator import BaseEvaluator

    class DevRerank(BaseEvaluator):
        """Wraps the evaluator: metric names mrr@k / ndcg@k / map, and first_stage_* for the candidates' order."""

        def __init__(self):
            super().__init__()
            self.primary_metric = f"ndcg@{params.eval_k}"
            self.greater_is_better = True
            self.samples, self.first_stage_scores = samples, first_scores

        def __call__(self, model, output_path=None, epoch=-1, steps=-1):
            raw = inner(model, output_path=None, epoch=epoch, steps=steps)
            return {k.removeprefix("dev_").replace("base_", "first_stage_"): float(v) for k, v in raw.items()}

    return DevRerank()
