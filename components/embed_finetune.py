"""embed_finetune: contrastive fine-tuning of a sentence-embedding model, one process per Ray Train worker.

The sentence-transformers trainer runs inside each worker; Ray Train has already set up the process
group (gloo on CPU, nccl on GPU), so the Hugging Face Trainer runs DDP across the workers. With
MultipleNegativesRankingLoss (and its cached variant) ``gather_across_devices`` is on when there is more
than one worker: every query sees the passages of ALL workers' batches as in-batch negatives, so the
effective number of negatives per query is the global batch size, not the per-worker one.

Only pydantic and the standard library are imported at module level.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from orchestrator.api import Artifact, Input, ModelRef, RunContext, component, read_jsonl

from .finetune_common import (TrainLoopParams, apply_lora, extend_vocab_for, precision_flags, schedule,
                              steps_per_run)

LOSSES = ("mnrl", "cached_mnrl", "triplet", "contrastive", "online_contrastive", "cosent", "margin_mse")


class EmbedFinetuneParams(TrainLoopParams):
    model: ModelRef = Field("minilm", description="Starting model: an alias (minilm = all-MiniLM-L6-v2, packaged "
                                                  "offline), a local sentence-transformers folder, or a hub id "
                                                  "(e.g. BAAI/bge-base-zh-v1.5).")
    loss: Literal["mnrl", "cached_mnrl", "triplet", "contrastive", "online_contrastive", "cosent", "margin_mse"] = Field(
        "mnrl", description="mnrl: InfoNCE with in-batch negatives (+ mined negatives when the data has them); "
                            "cached_mnrl: the same with gradient caching (large batches in little memory); "
                            "triplet: margin on (query, positive, negative); contrastive / online_contrastive / "
                            "cosent: labelled (query, doc, label) pairs; margin_mse: distillation from teacher "
                            "score margins (data with pos_score/neg_score).")
    scale: float = Field(20.0, gt=0, description="mnrl / cached_mnrl: similarity scale (1 / temperature).")
    mini_batch_size: int = Field(16, ge=1, description="cached_mnrl: texts per forward pass.")
    margin: float = Field(0.5, gt=0, description="triplet / contrastive / online_contrastive: margin.")
    negatives_per_example: int = Field(
        1, ge=0, le=64, description="ntuples input: mined negatives used per query (columns negative_1..n). 0 uses "
                                    "in-batch negatives only.")
    no_duplicates: bool = Field(True, description="Batches never hold the same text twice (a duplicate would be a "
                                                  "false in-batch negative).")
    query_prompt: str | None = Field(None, description="Prefix of every query, e.g. BGE's "
                                                       "'为这个句子生成表示以用于检索相关文章：'.")
    passage_prompt: str | None = Field(None, description="Prefix of every passage.")
    eval_k: list[int] = Field([1, 5, 10], description="k values of the dev metrics (Recall@k, nDCG@k, MRR@k).")
    eval_max_queries: int | None = Field(None, ge=1, description="Evaluate on at most this many dev queries.")
    seed: int | None = Field(None, description="Overrides the recipe's seed for this node.")

    @model_validator(mode="after")
    def _checks(self):
        if self.loss == "cached_mnrl" and self.mini_batch_size > self.batch_size:
            raise ValueError("mini_batch_size must not exceed batch_size")
        return self


def _estimate(params: EmbedFinetuneParams, resources) -> dict[str, Any]:
    """Rough memory per worker for a MiniLM/BGE-sized encoder (activations dominate)."""
    sizes = {"minilm": (22.7e6, 384, 6)}
    n, hidden, layers = sizes.get(str(params.model).lower(), (110e6, 768, 12))
    workers = max(1, int(getattr(resources, "workers", 1) or 1))
    per_worker = -(-params.batch_size // workers)
    texts = per_worker * (2 + (params.negatives_per_example if params.loss in ("mnrl", "triplet") else 0))
    if params.loss == "cached_mnrl":
        texts = min(texts, params.mini_batch_size)
    weights = n * (4 + 4 + 8) if params.lora is None else n * 4  # weights + grads + Adam (full FT)
    act = texts * params.max_seq_length * hidden * layers * 34 * 2  # ~34 bytes/token/hidden/layer (fp32, attn)
    if params.gradient_checkpointing:
        act /= layers
    gb = (weights + act) / 1024**3
    return {"memory_gb_per_worker": round(gb, 1), "detail": f"{per_worker}/worker x {workers} workers"}


@component(
    "embed_finetune",
    params=EmbedFinetuneParams,
    inputs={
        "train": Input("pairs", "triplets", "ntuples", "labeled_pairs",
                       description="(query, positive) pairs, triplets, FlagEmbedding n-tuples or labelled pairs"),
        "dev": Input("ir_eval_set", optional=True, description="BEIR folder evaluated during training"),
        "corpus": Input("corpus", optional=True,
                        description="the passages you will search: their words join the training text as the "
                                    "source of extend_vocab's new tokens (never trained on)"),
    },
    outputs={"model": "embedding_model"},
    runs_as="train",
    version="1",
    estimate=_estimate,
)
def embed_finetune(params: EmbedFinetuneParams, inputs: dict[str, Artifact], ctx: RunContext) -> None:
    """Fine-tunes a sentence-embedding model contrastively (sentence-transformers trainer, DDP over Ray Train).

    The dev set (a BEIR folder) is evaluated before training (the base model's scores, logged at step
    0), every ``eval_steps`` and at the end: Recall@k, MRR@k, nDCG@k go to TensorBoard as ``dev/...``
    and to Ray Train with each checkpoint, so Ray Tune can stop weak trials early. A restarted worker
    resumes from the last checkpoint. The output folder loads with ``SentenceTransformer(path)``; its
    ``orch_eval.json`` holds base and final dev metrics.
    """
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import (BatchSamplers,
                                                                           SentenceTransformerTrainingArguments)

    from .models import resolve_model
    from .training import common_training_args, make_callback, peak_memory_gb, resume_checkpoint, seed_everything
    from .vocab import input_embedding_name

    seed = params.seed if params.seed is not None else ctx.seed
    seed_everything(seed)
    train_art = inputs["train"]
    dataset, columns = load_training_data(train_art, params)
    n = len(dataset)
    world = max(1, ctx.world_size)
    per_worker = -(-params.batch_size // world)
    total = steps_per_run(n, per_worker * world, params.epochs, params.max_steps, params.grad_accum)
    eval_steps, save_steps = schedule(total, params.eval_steps, params.save_steps)
    ctx.log(f"{n} {train_art.kind} examples (columns {columns}); loss {params.loss}; batch {per_worker}/worker x "
            f"{world} worker(s) = {per_worker * world} global; {total} steps; eval every {eval_steps}, "
            f"checkpoint every {save_steps}")

    model_path = resolve_model(params.model, getattr(ctx, "recipe_dir", None))
    model = SentenceTransformer(model_path, device="cuda" if ctx.num_gpus else "cpu")
    model.max_seq_length = params.max_seq_length
    freeze_unused(model)
    texts = [t for c in columns if c not in ("label", "score") for t in dataset[c] if isinstance(t, str)]
    if inputs.get("corpus") is not None and params.extend_vocab is not None:
        from .retrieval import passage_text

        texts += [passage_text(r) for r in read_jsonl(inputs["corpus"].main_file)]
    added = extend_vocab_for(params, model.tokenizer, model[0].auto_model, texts, seed, ctx.log)
    trainable = None
    if params.lora is not None:
        module = model[0].auto_model
        # New token rows must be trained and saved with the adapter (the base model lacks them).
        peft_model, trainable, total_params = apply_lora(module, params.lora, task_type="FEATURE_EXTRACTION",
                                                         modules_to_save=[input_embedding_name(module)] if added else None)
        model[0].auto_model = peft_model
        ctx.log(f"LoRA r={params.lora.r}: {trainable:,} trainable of {total_params:,} parameters "
                f"({100 * trainable / total_params:.2f}%)")

    loss = build_loss(model, params, world)
    evaluator = dev_evaluator(inputs.get("dev"), params) if inputs.get("dev") is not None else None

    prompts = None
    if params.query_prompt or params.passage_prompt:
        prompts = {c: (params.query_prompt if c == "anchor" else params.passage_prompt) or "" for c in columns
                   if c not in ("label", "score")}
    hf_dir = ctx.work_dir / "hf"
    args = SentenceTransformerTrainingArguments(**common_training_args(
        ctx, hf_dir, seed=seed, lr=params.lr, epochs=params.epochs, max_steps=params.max_steps,
        per_device_batch=per_worker, grad_accum=params.grad_accum, warmup_ratio=params.warmup_ratio,
        weight_decay=params.weight_decay, eval_steps=eval_steps if evaluator else None, save_steps=save_steps,
        logging_steps=params.logging_steps, gradient_checkpointing=params.gradient_checkpointing,
        lr_scheduler=params.lr_scheduler, **precision_flags(params.mixed_precision, ctx.num_gpus),
        extra={"batch_sampler": BatchSamplers.NO_DUPLICATES if params.no_duplicates else BatchSamplers.BATCH_SAMPLER,
               "prompts": prompts, "max_steps": total}))

    base_metrics: dict[str, float] = {}
    resume = resume_checkpoint(ctx)
    if evaluator is not None and resume is None:
        t0 = time.time()
        base_metrics = evaluator(model)
        ctx.log_metrics({f"dev/{k}": v for k, v in base_metrics.items()}, step=0)
        if ctx.world_rank == 0:
            ctx.log(f"base model on dev ({time.time() - t0:.1f}s): " + _fmt(base_metrics))
    if resume:
        ctx.log(f"resuming from checkpoint {Path(resume).name}")
        prev = ctx.work_dir / "base_metrics.json"
        base_metrics = json.loads(prev.read_text()) if prev.exists() else {}
    elif ctx.world_rank == 0:
        (ctx.work_dir / "base_metrics.json").write_text(json.dumps(base_metrics))

    callback = make_callback(ctx, tokens_per_sample=None)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss,
                                         evaluator=evaluator, callbacks=[callback])
    started = time.time()
    out = trainer.train(resume_from_checkpoint=resume)
    train_s = time.time() - started
    final = dict(callback.last_eval)
    if evaluator is not None and trainer.state.global_step % eval_steps != 0:
        final = {f"dev/{k}": v for k, v in evaluator(model).items()}
        ctx.log_metrics(final, step=trainer.state.global_step)
    if ctx.world_rank != 0:
        return
    target = ctx.output_dir("model")
    export_model(model, params, target)
    base = {f"dev/{k}": v for k, v in base_metrics.items()}
    (target / "orch_eval.json").write_text(json.dumps({"base": base, "final": final}, indent=2))
    summary = {"train_loss": float(out.training_loss), "steps": trainer.state.global_step, "examples": n,
               "train_seconds": round(train_s, 1), "samples_per_s": round(n * params.epochs / max(train_s, 1e-9), 2)
               if not params.max_steps else round(trainer.state.global_step * per_worker * world / max(train_s, 1e-9), 2),
               "workers": world, "global_batch": per_worker * world, **peak_memory_gb(), **_headline(final),
               **{f"base_{k}": v for k, v in _headline(base).items()}}
    if trainable is not None:
        summary["trainable_params"] = trainable
    ctx.set_summary(summary)
    ctx.log("final dev: " + _fmt({k.removeprefix("dev/"): v for k, v in final.items()}))


def _headline(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k.split("/")[-1].startswith(("recall@", "mrr@", "ndcg@"))}


def _fmt(metrics: dict[str, float]) -> str:
    keys = [k for k in metrics if k.startswith(("recall@", "ndcg@", "mrr@"))]
    return ", ".join(f"{k}={metrics[k]:.3f}" for k in sorted(keys))


# ---------------------------------------------------------------------------------------------
# data, loss, evaluator, export
# ---------------------------------------------------------------------------------------------


def load_training_data(art: Artifact, params: EmbedFinetuneParams):
    """An HF Dataset whose column order is what the loss expects: anchor, positive, negative_1.. (or label)."""
    from datasets import Dataset

    rows = read_jsonl(art.main_file)
    kind = art.kind
    loss = params.loss
    if not rows:
        raise ValueError(f"{art.main_file} is empty: nothing to train on")
    if loss in ("contrastive", "online_contrastive", "cosent"):
        if kind == "labeled_pairs":
            data = {"sentence1": [r["query"] for r in rows], "sentence2": [r["doc"] for r in rows],
                    "label": [float(r["label"]) for r in rows]}
        elif kind in ("triplets", "ntuples"):
            s1, s2, lab = [], [], []
            for r in rows:
                pos = [r["positive"]] if kind == "triplets" else r["pos"]
                neg = [r["negative"]] if kind == "triplets" else r["neg"][: max(1, params.negatives_per_example)]
                for p in pos:
                    s1.append(r["query"]), s2.append(p), lab.append(1.0)
                for q in neg:
                    s1.append(r["query"]), s2.append(q), lab.append(0.0)
            data = {"sentence1": s1, "sentence2": s2, "label": lab}
        else:
            raise ValueError(f"loss {loss} needs labelled pairs or data with negatives (labeled_pairs, triplets, "
                             f"ntuples from hard_negative_mining); got {kind}: use loss mnrl for plain pairs")
        return Dataset.from_dict(data), list(data)
    if loss == "margin_mse":
        if kind != "triplets" or "pos_score" not in rows[0] or "neg_score" not in rows[0]:
            raise ValueError("loss margin_mse needs triplets with teacher scores (pos_score, neg_score): mine with a "
                             "cross_encoder to get them, or pick loss mnrl")
        data = {"anchor": [r["query"] for r in rows], "positive": [r["positive"] for r in rows],
                "negative": [r["negative"] for r in rows],
                "label": [float(r["pos_score"]) - float(r["neg_score"]) for r in rows]}
        return Dataset.from_dict(data), list(data)
    if loss == "triplet" and kind == "pairs":
        raise ValueError("loss triplet needs negatives: feed triplets or ntuples from hard_negative_mining, "
                         "or use loss mnrl (in-batch negatives) with pairs")
    if kind == "pairs":
        data = {"anchor": [r["query"] for r in rows], "positive": [r["positive"] for r in rows]}
    elif kind == "triplets":
        data = {"anchor": [r["query"] for r in rows], "positive": [r["positive"] for r in rows],
                "negative": [r["negative"] for r in rows]}
    elif kind == "ntuples":
        k = params.negatives_per_example if loss != "triplet" else 1
        keep = [r for r in rows if len(r.get("neg") or []) >= k and r.get("pos")]
        if len(keep) < len(rows):
            print(f"embed_finetune: {len(rows) - len(keep)} of {len(rows)} n-tuples have fewer than {k} negatives "
                  f"and are left out", flush=True)
        data = {"anchor": [r["query"] for r in keep], "positive": [r["pos"][0] for r in keep]}
        for i in range(k):
            data[f"negative_{i + 1}"] = [r["neg"][i] for r in keep]
    else:  # labeled_pairs with a ranking loss: positives only
        pos = [r for r in rows if float(r["label"]) > 0]
        data = {"anchor": [r["query"] for r in pos], "positive": [r["doc"] for r in pos]}
    return Dataset.from_dict(data), list(data)


def build_loss(model, params: EmbedFinetuneParams, world: int):
    from sentence_transformers.sentence_transformer import losses

    gather = world > 1
    if params.loss == "mnrl":
        return losses.MultipleNegativesRankingLoss(model, scale=params.scale, gather_across_devices=gather)
    if params.loss == "cached_mnrl":
        return losses.CachedMultipleNegativesRankingLoss(model, scale=params.scale, mini_batch_size=params.mini_batch_size,
                                                         gather_across_devices=gather)
    if params.loss == "triplet":
        return losses.TripletLoss(model, triplet_margin=params.margin)
    if params.loss == "contrastive":
        return losses.ContrastiveLoss(model, margin=params.margin)
    if params.loss == "online_contrastive":
        return losses.OnlineContrastiveLoss(model, margin=params.margin)
    if params.loss == "cosent":
        return losses.CoSENTLoss(model)
    return losses.MarginMSELoss(model)


def dev_evaluator(art: Artifact, params: EmbedFinetuneParams):
    """InformationRetrievalEvaluator on the dev folder, with metric names recall@k, mrr@k, ndcg@k, map@k."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator, SentenceEvaluator

    from .retrieval import load_ir_set

    corpus, queries, qrels = load_ir_set(art.path, params.eval_max_queries)
    ks = sorted(set(params.eval_k))

    class DevRetrieval(SentenceEvaluator):
        def __init__(self):
            super().__init__()
            self.inner = InformationRetrievalEvaluator(
                queries, corpus, {q: set(d) for q, d in qrels.items()}, mrr_at_k=ks, ndcg_at_k=ks,
                accuracy_at_k=ks, precision_recall_at_k=ks, map_at_k=[max(ks)], name="dev", write_csv=False,
                batch_size=64, query_prompt=params.query_prompt, corpus_prompt=params.passage_prompt)
            self.primary_metric = f"ndcg@{max(ks)}"
            self.greater_is_better = True

        def __call__(self, model, output_path=None, epoch=-1, steps=-1):
            raw = self.inner(model, output_path=None, epoch=epoch, steps=steps)
            out = {}
            for k, v in raw.items():
                name = k.removeprefix("dev_")
                if name.startswith("cosine_") and not name.startswith("cosine_accuracy@"):
                    out[name.removeprefix("cosine_")] = float(v)
            return out

    return DevRetrieval()


def freeze_unused(model) -> None:
    """BERT-style poolers are not used by sentence-transformers' pooling: freeze them, or DDP waits for their
    gradients forever (and find_unused_parameters would cost a graph traversal every step)."""
    for name, param in model.named_parameters():
        if ".pooler." in f".{name}":
            param.requires_grad_(False)


def export_model(model, params: EmbedFinetuneParams, target: Path) -> None:
    """Save a folder that SentenceTransformer(path) loads (adapter merged unless export: adapter)."""
    if params.lora is not None and params.lora.export == "merged":
        model[0].auto_model = model[0].auto_model.merge_and_unload()
    model.save_pretrained(str(target), safe_serialization=True)
