"""LoRA / QLoRA supervised fine-tuning of a causal LM: kind ``lora_sft``.

Trains a PEFT LoRA adapter on instruction data (alpaca or sharegpt ``sft`` records) or on text
classification data (``text_label``: the label is generated as the answer, or predicted by a
classification head). Runs as a Ray Train job: every worker runs ``lora_sft`` with
``ctx.world_rank`` / ``ctx.world_size``; the Hugging Face Trainer does DDP; rank 0 writes outputs.

What it does, in order:

1. loads the train (and optional dev) records and renders each one with the tokenizer's chat
   template (a plain fallback template when the tokenizer has none); the loss covers only the
   assistant tokens (prompt tokens are -100 in ``labels``), over-long examples are truncated (or
   dropped) and counted in the log and the summary, never silently;
2. loads the base model (optionally 4-bit NF4 / 8-bit with bitsandbytes), wraps it in LoRA and
   trains with the Trainer (checkpoints every ``save_steps``, reported to Ray Train through
   ``ctx.report``; a restarted worker group resumes from the last one: adapter, optimizer, LR
   schedule, RNG states, data position and the base model's dev scores; the summary's
   ``resumed_from_step`` says from where, 0 for an uninterrupted run);
3. on rank 0, generates for ``eval_samples`` dev prompts with the adapter disabled (before) and
   enabled (after) and writes ``samples.jsonl`` into the adapter folder; with references it scores
   exact match and token F1 (classification: accuracy and macro-F1);
4. writes the adapter (``PeftModel.from_pretrained`` loads it), the tokenizer, ``orch_base_model.json``
   naming the base model, ``rag_prompt.json`` when the train data came with one (data_prep's RAG
   prompt format, which evaluate and serving reuse), and with ``export_merged`` the merged model in
   ``adapter/merged/``.

Only pydantic and the standard library are imported at module level (``orch validate`` imports it).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestrator.api import Artifact, Input, ModelRef, RunContext, component, read_jsonl, write_jsonl

IGNORE_INDEX = -100
DEFAULT_CLS_PROMPT = "Classify the text. Answer with exactly one of these labels: {labels}.\n\nText: {text}"

# Used when the tokenizer has no chat template: alpaca-style sections, the answer closed by EOS.
FALLBACK_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{{- message['content'] + '\\n\\n' }}"
    "{%- elif message['role'] == 'user' %}{{- '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
    "{%- else %}{{- '### Response:\\n' + message['content'] + (eos_token or '') + '\\n\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '### Response:\\n' }}{%- endif %}"
)


# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraSpec(_Strict):
    """The LoRA adapter."""

    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA alpha; the update is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the input of the LoRA branch.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt (e.g. [q_proj, v_proj]), or 'all-linear': every linear "
                                  "layer except the output head.")
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases to train as well.")
    modules_to_save: list[str] = Field(
        default_factory=list, description="Modules trained in full and saved with the adapter (e.g. [embed_tokens, "
                                          "lm_head] after adding tokens). The classification head ('score') is "
                                          "always included with classification_head.")


class QuantizationSpec(_Strict):
    """How the frozen base model is held in memory. A plain string ('4bit') sets ``mode``."""

    mode: Literal["none", "4bit", "8bit"] = Field(
        "none", description="none: the base in compute_dtype (LoRA); 4bit: bitsandbytes 4-bit (QLoRA); 8bit: LLM.int8.")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type: nf4 (QLoRA's NormalFloat) or fp4.")
    double_quant: bool = Field(True, description="4-bit: quantize the quantization constants too (~0.4 bit/param less).")
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype of the base model's unquantized weights and of the 4-bit matmuls. auto: float32 "
                            "on CPU (bf16 is many times slower there), bfloat16 on GPUs that have it, else float16.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"mode": value}
        return value


class LoraSftParams(_Strict):
    """LoRA / QLoRA supervised fine-tuning of a causal LM on sft or text_label data."""

    model: ModelRef = Field("smollm2-135m-instruct", description="Base model: an alias (smollm2-135m-instruct, "
                                                                 "tiny-qwen3), a local folder or a hub id.")
    trust_remote_code: bool = Field(False, description="Run Python code shipped with the model (needed by some hub "
                                                       "models). Off unless asked; a warning is logged when on.")
    data_format: Literal["auto", "alpaca", "sharegpt", "classification"] = Field(
        "auto", description="auto: classification for text_label inputs; per record alpaca {instruction, input, "
                            "output[, system, history]} or sharegpt {conversations[, system]} for sft inputs.")
    task: Literal["auto", "generate", "classify"] = Field(
        "auto", description="generate: free answers, scored by exact match / token F1. classify: the answer is a "
                            "label, scored by accuracy / macro-F1. auto: classify for classification data.")
    classification_head: bool = Field(
        False, description="classify only: a sequence-classification head (AutoModelForSequenceClassification) "
                           "plus LoRA instead of generating the label as text.")
    cls_prompt: str = Field(DEFAULT_CLS_PROMPT, description="classify (generative): the user turn built from a "
                                                            "{text, label} record; {labels} and {text} are filled in.")
    system: str = Field("", description="System prompt for records without one ('' = none, or the template's own).")
    max_length: int = Field(1024, ge=16, le=131072, description="Tokens per training example (prompt + answer).")
    truncation: Literal["truncate", "drop"] = Field(
        "truncate", description="Over-long examples: truncate (the answer keeps its start; a long prompt loses its "
                                "middle, keeping its beginning and its end with the question) or drop. Counted "
                                "either way in the log and the summary.")
    packing: bool = Field(False, description="Padding-free packing: each batch is one row of concatenated examples "
                                             "with restarting position ids (attention does not cross examples).")
    mask_history: bool = Field(False, description="Multi-turn records: train only on the last answer (default: on "
                                                  "every assistant turn).")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="The LoRA adapter.")
    quantization: QuantizationSpec = Field(default_factory=QuantizationSpec,
                                           description="Base model precision / quantization (QLoRA with 4bit).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass (less memory, "
                                                            "~30% slower).")
    per_device_batch_size: int = Field(4, ge=1, description="Examples per worker per step.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    lr: float = Field(2e-4, gt=0, lt=1, description="Peak learning rate (AdamW).")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule after warm-up.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Fraction of steps of linear warm-up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    epochs: float = Field(3.0, gt=0, description="Passes over the training data (ignored when max_steps is set).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimiser steps.")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="GPU only: auto picks bf16 where supported, else fp16. CPU training is always fp32.")
    eval_steps: int | None = Field(None, ge=1, description="Dev loss every N steps (default: about 4 times per run). "
                                                           "Needs the dev input.")
    save_steps: int | None = Field(None, ge=1, description="Checkpoint every N steps (default: about 4 per run); a "
                                                           "restarted worker resumes from the last one.")
    logging_steps: int = Field(5, ge=1, description="Log loss / lr / speed every N steps.")
    eval_samples: int = Field(20, ge=0, description="Dev prompts answered before and after training (samples.jsonl, "
                                                    "EM / F1 or accuracy / macro-F1); 0 = none.")
    max_new_tokens: int = Field(64, ge=1, description="Generation length for the before/after samples.")
    generation_batch_size: int = Field(8, ge=1, description="Prompts per generate() call for the samples.")
    export_merged: bool = Field(False, description="Also write the base model with the adapter merged in, to "
                                                   "adapter/merged/ (a plain model folder; from a full-precision base).")
    seed: int | None = Field(None, ge=0, description="Training seed; the recipe's seed when unset.")

    @model_validator(mode="after")
    def _consistent(self):
        if self.classification_head and self.task == "generate":
            raise ValueError("classification_head needs task: classify (or auto with classification data)")
        if self.classification_head and self.packing:
            raise ValueError("packing applies to generative training, not to classification_head")
        return self


# ---------------------------------------------------------------------------------------------
# Memory estimate for `orch plan` (no torch)
# ---------------------------------------------------------------------------------------------

_LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GIB = 1024**3


def estimate_memory(params: LoraSftParams, resources: Any = None, recipe_dir: Path | None = None) -> dict[str, Any] | None:
    """Peak memory per worker (GiB) from the model's config.json: weights, LoRA + AdamW, activations.

    Reads only config.json (aliases use known shapes); None for a hub id not cached locally. A model
    folder relative to the recipe is found only when ``recipe_dir`` is given (or from the working
    directory).
    Weights: 2 bytes/param in bf16/fp16, 4 in fp32, ~0.52 in 4-bit NF4 with double quantization (the
    embeddings and the output head stay in compute dtype), ~1 in 8-bit. Trainable parameters (LoRA and
    modules_to_save) cost 16 bytes each (fp32 weight, gradient, two AdamW moments). Activations:
    batch x seq x (14 hidden + 2 kv + 5 intermediate) per layer, or one hidden state per layer plus one
    layer's worth with gradient checkpointing; plus the logits (batch x seq x vocab, ~10 bytes each:
    the compute-dtype logits, their fp32 copy for the loss and its gradient); plus 0.5 GiB of slack.
    """
    from .models import model_config_dict

    cfg = model_config_dict(params.model, recipe_dir)
    if not cfg or not cfg.get("hidden_size"):
        return None
    gpu = bool(resources is not None and (getattr(resources, "gpus_per_worker", 0) or getattr(resources, "gpus", 0)))
    if params.quantization.compute_dtype == "auto":
        wbytes = 2 if gpu else 4
    else:
        wbytes = 4 if params.quantization.compute_dtype == "float32" else 2
    abytes = 4 if (not gpu or params.mixed_precision == "no") and wbytes == 4 else 2

    h = int(cfg["hidden_size"])
    layers = int(cfg.get("num_hidden_layers") or cfg.get("n_layer") or 0)
    heads = int(cfg.get("num_attention_heads") or 1)
    kv = int(cfg.get("num_key_value_heads") or heads)
    hd = int(cfg.get("head_dim") or h // heads)
    inter = int(cfg.get("intermediate_size") or 4 * h)
    vocab = int(cfg.get("vocab_size") or 0)
    tied = bool(cfg.get("tie_word_embeddings", False))
    shapes = {"q_proj": (h, heads * hd), "k_proj": (h, kv * hd), "v_proj": (h, kv * hd), "o_proj": (heads * hd, h),
              "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}
    linear = layers * sum(i * o for i, o in shapes.values())
    embed = vocab * h
    head = 0 if tied else vocab * h
    notes = []
    if cfg.get("num_experts") or cfg.get("num_local_experts"):
        notes.append("MoE counted as dense")

    mode = params.quantization.mode
    if mode == "4bit":
        per = 0.5 + (0.0159 if params.quantization.double_quant else 0.0625)
        weights = linear * per + (embed + head) * wbytes
        wdesc = "4-bit"
    elif mode == "8bit":
        weights = linear * 1.0 + layers * 7 * h * 4 + (embed + head) * wbytes
        wdesc = "8-bit"
    else:
        weights = (linear + embed + head) * wbytes
        wdesc = {2: "bf16", 4: "fp32"}[wbytes]

    targets = params.lora.target_modules
    if targets == "all-linear":
        chosen = list(_LINEAR_NAMES)
    else:
        chosen = [n for n in _LINEAR_NAMES if any(n == t or n.endswith(t) or t.endswith(n) for t in targets)]
        if not chosen:
            chosen = list(_LINEAR_NAMES)
            notes.append("target_modules not recognised: counted as all-linear")
    lora_params = layers * sum(params.lora.r * (shapes[n][0] + shapes[n][1]) for n in chosen)
    full = 0
    for name in params.lora.modules_to_save:
        if name in ("embed_tokens", "wte"):
            full += embed
        elif name == "lm_head":
            full += embed if tied else head
    trainable = lora_params + full
    optim = trainable * 16 + full * wbytes  # a modules_to_save copy also keeps the frozen original

    b, s = params.per_device_batch_size, params.max_length
    per_layer = b * s * abytes * (14 * h + 2 * kv * hd + 5 * inter)
    if params.gradient_checkpointing:
        acts = layers * b * s * h * abytes + per_layer
    else:
        acts = layers * per_layer
    logits = 0 if params.classification_head else b * s * vocab * (abytes + 8)
    slack = 0.5 * GIB
    total = weights + optim + acts + logits + slack
    key = "gpu_memory_gb" if gpu else "cpu_memory_gb"
    detail = (f"GiB/worker: weights {weights / GIB:.2f} ({wdesc}) + LoRA/AdamW {optim / GIB:.2f} "
              f"({trainable / 1e6:.1f}M trainable) + activations {acts / GIB:.2f} + logits {logits / GIB:.2f} "
              f"+ slack 0.5; seq {s} x batch {b}" + (", grad ckpt" if params.gradient_checkpointing else "")
              + ("; " + "; ".join(notes) if notes else ""))
    return {key: round(total / GIB, 2), "detail": detail}


# ---------------------------------------------------------------------------------------------
# The component
# ---------------------------------------------------------------------------------------------


@component(
    "lora_sft",
    params=LoraSftParams,
    inputs={"train": Input("sft", "text_label", description="Training records."),
            "dev": Input("sft", "text_label", optional=True,
                         description="Held-out records: dev loss, and the before/after samples.")},
    outputs={"adapter": "lora_adapter"},
    runs_as="train",
    version="1",
    estimate=estimate_memory,
)
def lora_sft(params: LoraSftParams, inputs: dict[str, Artifact], ctx: RunContext) -> None:
    """LoRA / QLoRA SFT of a causal LM on sft (alpaca / sharegpt) or text_label data -> a PEFT adapter.

    The loss covers only the answers (prompt tokens are masked); over-long examples are truncated or
    dropped and counted. Rank 0 answers ``eval_samples`` dev prompts with the base model (adapter
    disabled) and the tuned one, writes them to adapter/samples.jsonl and scores them (exact match
    and token F1, or accuracy and macro-F1 for classification). Checkpoints every ``save_steps`` go
    to Ray Train; a restarted worker resumes from the last one (``resumed_from_step`` in the summary).
    """
    import torch

    from .models import load_tokenizer, resolve_model
    from .training import make_callback, resume_checkpoint, seed_everything

    started = time.time()
    seed = params.seed if params.seed is not None else ctx.seed
    seed_everything(seed)
    warnings.filterwarnings("ignore", message=".*MatMul8bitLt: inputs will be cast.*")
    main = ctx.world_rank == 0

    data = load_sft_data(params, inputs)
    if main:
        ctx.log(f"data: {len(data.train)} train, {len(data.dev)} dev records ({data.family}, task {data.task}"
                + (", classification head" if data.head else "") + ")"
                + (f"; labels {', '.join(data.labels)}" if data.labels else ""))

    model_path = resolve_model(params.model, getattr(ctx, "recipe_dir", None))
    tokenizer = load_tokenizer(model_path, trust_remote_code=params.trust_remote_code)
    template_source = prepare_tokenizer(tokenizer)
    if main:
        ctx.log(f"base model {params.model} -> {model_path}; chat template: {template_source}")

    stats = Counter()
    if data.head:
        label_ids = {label: i for i, label in enumerate(data.labels)}
        train_rows = encode_classification(tokenizer, data.train, label_ids, params, stats, "train")
        dev_rows = encode_classification(tokenizer, data.dev, label_ids, params, stats, "dev")
    else:
        train_rows = [r for r in (encode_chat(tokenizer, ex["messages"], params, stats, "train") for ex in data.train) if r]
        dev_rows = [r for r in (encode_chat(tokenizer, ex["messages"], params, stats, "dev") for ex in data.dev) if r]
    if not train_rows:
        raise ValueError(f"no training example left after encoding ({dict(stats)}); raise max_length?")
    if main:
        _log_encoding(ctx, stats, params)
    tokens_per_sample = sum(len(r["input_ids"]) for r in train_rows) / len(train_rows)

    model, precision, bf16, fp16 = _load_model(params, model_path, data, tokenizer, ctx)
    peft_model, trainable, total = _wrap_lora(params, model, data)
    if main:
        ctx.log(f"LoRA r={params.lora.r} alpha={params.lora.alpha} on {params.lora.target_modules}: "
                f"{trainable:,} trainable of {total:,} parameters ({100 * trainable / max(total, 1):.3f}%); "
                f"{precision}")

    eval_before: dict[str, float] = {}
    trainer, total_steps = _make_trainer(params, ctx, peft_model, tokenizer, train_rows, dev_rows, data,
                                         seed, tokens_per_sample, make_callback, bf16, fp16, eval_before)
    resume = resume_checkpoint(ctx)
    resumed_from = _start_step(resume)
    if resume is not None:
        # the base model's dev scores travel with every checkpoint (_BaselineCallback): a resumed run
        # still reports its before/after comparison without evaluating the tuned adapter as "before"
        eval_before.update(_read_baseline(resume))
    elif dev_rows:
        eval_before.update(trainer.evaluate())
    if main:
        ctx.log(f"training {total_steps} steps ({params.per_device_batch_size} x {params.grad_accum} accum x "
                f"{ctx.world_size} workers per step), ~{tokens_per_sample:.0f} tokens/example")
        if resume:
            ctx.log(f"resumed from step {resumed_from} of {total_steps}: checkpoint {resume} (adapter, optimizer, "
                    f"scheduler, RNG and data position restored)")
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=resume)
    train_seconds = time.time() - t0
    eval_after: dict[str, float] = {}
    if dev_rows:
        last = trainer.state.log_history[-2:] if trainer.state.log_history else []
        done = [e for e in last if "eval_loss" in e and e.get("step") == trainer.state.global_step]
        eval_after = dict(done[-1]) if done else trainer.evaluate()  # no second pass right after an eval step

    summary: dict[str, Any] = {
        "base_model": params.model,
        "task": data.task + ("/head" if data.head else ""),
        "train/records": len(data.train),
        "train/examples": len(train_rows),
        "dev/examples": len(dev_rows),
        "truncated": stats["train/truncated"] + stats["dev/truncated"],
        "dropped_too_long": stats["train/dropped_too_long"] + stats["dev/dropped_too_long"],
        "trainable_params": trainable,
        "total_params": total,
        "steps": trainer.state.global_step,
        "train_loss": float(result.metrics.get("train_loss", float("nan"))),
        "train_seconds": round(train_seconds, 1),
        "seconds_per_step": round(train_seconds / max(1, trainer.state.global_step - resumed_from), 3),
        "resumed_from_step": resumed_from,  # 0: trained from the start; N: restarted from checkpoint-N
        "quantization": params.quantization.mode,
    }
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    if losses:
        summary["train_loss_first"], summary["train_loss_last"] = float(losses[0]), float(losses[-1])
    for name, ev in (("before", eval_before), ("after", eval_after)):
        for k, v in ev.items():
            if k in ("eval_loss", "eval_accuracy", "eval_macro_f1"):
                summary[f"eval_{k.removeprefix('eval_')}_{name}"] = float(v)
    if "eval_loss_after" in summary:
        summary["eval_loss"] = summary["eval_loss_after"]
    summary.update({k: float(v) for k, v in _peak_memory().items()})

    if main:
        out = ctx.output_dir("adapter")
        peft_model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        base_info = {
            "base_model": params.model, "base_model_path": model_path,
            "auto_class": "AutoModelForSequenceClassification" if data.head else "AutoModelForCausalLM",
            "task": data.task, "labels": data.labels, "chat_template": template_source,
            "quantization": params.quantization.mode, "max_length": params.max_length,
            "merged": "merged" if params.export_merged else None,
        }
        (out / "orch_base_model.json").write_text(json.dumps(base_info, indent=2, ensure_ascii=False) + "\n",
                                                  encoding="utf-8")
        from .rag_prompt import RagPrompt

        prompt = RagPrompt.load(inputs["train"].path)  # data_prep's RAG format: evaluate / serving reuse it
        if prompt is not None:
            prompt.save(out)
        samples = data.dev[: params.eval_samples]
        if samples:
            t1 = time.time()
            scores = before_after(peft_model, tokenizer, samples, data, params, out / "samples.jsonl")
            summary.update(scores)
            ctx.log(f"before/after on {len(samples)} dev prompts ({time.time() - t1:.0f}s): "
                    + ", ".join(f"{k} {v:.3f}" for k, v in scores.items() if isinstance(v, float)))
            ctx.log_metrics({f"samples/{k}": v for k, v in scores.items() if isinstance(v, float)},
                            step=trainer.state.global_step)
        elif params.eval_samples:
            ctx.log("no dev input: no before/after samples")
        if params.export_merged:
            _export_merged(params, model_path, out, data, tokenizer, ctx)
        summary["total_seconds"] = round(time.time() - started, 1)
        ctx.set_summary(summary)
        ctx.log("done: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                     for k, v in summary.items() if k.startswith(("train_loss", "eval_loss", "em_",
                                                                                  "f1_", "accuracy_", "macro_f1_"))))
    final = {k: float(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    ctx.report({"step": float(trainer.state.global_step), **{k: v for k, v in final.items()
                                                             if k.startswith(("train_loss", "eval_"))}})
    del trainer, peft_model, model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# Data: records -> chat messages
# ---------------------------------------------------------------------------------------------


@dataclass
class SftData:
    family: str  # "sft" | "classification"
    task: str  # "generate" | "classify"
    head: bool
    train: list[dict[str, Any]]  # {"messages": [...], "reference": str} or {"text", "label"} for the head
    dev: list[dict[str, Any]]
    labels: list[str] = field(default_factory=list)


def load_sft_data(params: LoraSftParams, inputs: dict[str, Artifact]) -> SftData:
    train_art = inputs["train"]
    dev_art = inputs.get("dev")
    family = _family(train_art, params)
    if dev_art is not None and _family(dev_art, params) != family:
        raise ValueError(f"train is {family} data but dev is {_family(dev_art, params)} data: give both the same kind")
    task = params.task if params.task != "auto" else ("classify" if family == "classification" else "generate")
    if params.classification_head and task != "classify":
        raise ValueError("classification_head needs task classify")
    train_raw = read_jsonl(train_art.main_file)
    dev_raw = read_jsonl(dev_art.main_file) if dev_art is not None else []
    if not train_raw:
        raise ValueError(f"the train input is empty ({train_art.main_file})")

    if family == "classification":
        for where, rows in (("train", train_raw), ("dev", dev_raw)):
            for i, row in enumerate(rows):
                if "text" not in row or "label" not in row:
                    raise ValueError(f"{where} record {i}: text_label records need 'text' and 'label', got "
                                     f"{sorted(row)}")
        labels = _label_list(train_art, train_raw + dev_raw)
        if params.classification_head:
            conv = lambda r: {"text": str(r["text"]), "label": str(r["label"]), "reference": str(r["label"])}  # noqa: E731
        else:
            conv = lambda r: _cls_messages(r, labels, params)  # noqa: E731
        return SftData(family, task, params.classification_head, [conv(r) for r in train_raw],
                       [conv(r) for r in dev_raw], labels)

    train = [_sft_messages(r, i, "train", params) for i, r in enumerate(train_raw)]
    dev = [_sft_messages(r, i, "dev", params) for i, r in enumerate(dev_raw)]
    labels: list[str] = []
    if task == "classify":
        labels = sorted({ex["reference"] for ex in train + dev})
        if params.classification_head:
            train = [{"text": _prompt_text(ex["messages"]), "label": ex["reference"], "reference": ex["reference"]}
                     for ex in train]
            dev = [{"text": _prompt_text(ex["messages"]), "label": ex["reference"], "reference": ex["reference"]}
                   for ex in dev]
    return SftData(family, task, params.classification_head, train, dev, labels)


def _family(art: Artifact, params: LoraSftParams) -> str:
    if art.kind == "text_label":
        if params.data_format in ("alpaca", "sharegpt"):
            raise ValueError(f"data_format {params.data_format} but the input is text_label (classification) data")
        return "classification"
    if params.data_format == "classification":
        raise ValueError("data_format classification needs a text_label input, the input is sft records")
    return "sft"


def _label_list(art: Artifact, rows: list[dict[str, Any]]) -> list[str]:
    labels_file = art.path / "labels.json"
    if labels_file.is_file():
        labels = [str(x) for x in json.loads(labels_file.read_text(encoding="utf-8"))]
        extra = sorted({str(r["label"]) for r in rows} - set(labels))
        return labels + extra
    return sorted({str(r["label"]) for r in rows})


def _cls_messages(row: dict[str, Any], labels: list[str], params: LoraSftParams) -> dict[str, Any]:
    user = params.cls_prompt.format(labels=", ".join(labels), text=row["text"])
    messages = ([{"role": "system", "content": params.system}] if params.system else [])
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": str(row["label"])}]
    return {"messages": messages, "reference": str(row["label"])}


_USER, _ASSISTANT = ("human", "user"), ("gpt", "assistant", "model", "bot")


def _sft_messages(row: dict[str, Any], i: int, where: str, params: LoraSftParams) -> dict[str, Any]:
    """An alpaca or sharegpt record -> chat messages ending with the assistant's answer."""
    is_sharegpt = "conversations" in row or "messages" in row
    if params.data_format == "alpaca" and is_sharegpt:
        raise ValueError(f"{where} record {i}: data_format alpaca, but the record is a sharegpt conversation")
    if params.data_format == "sharegpt" and not is_sharegpt:
        raise ValueError(f"{where} record {i}: data_format sharegpt, but the record has no 'conversations'")
    system = str(row.get("system") or "") or params.system
    messages: list[dict[str, str]] = []
    if is_sharegpt:
        turns = row.get("conversations") or row.get("messages") or []
        for j, turn in enumerate(turns):
            role = str(turn.get("from", turn.get("role", ""))).lower()
            content = turn.get("value", turn.get("content"))
            if content is None:
                raise ValueError(f"{where} record {i}: turn {j} has no value/content")
            if role == "system":
                system = str(content) or system
                continue
            role = "user" if role in _USER else "assistant" if role in _ASSISTANT else role
            if role not in ("user", "assistant"):
                raise ValueError(f"{where} record {i}: turn {j} has unknown role {role!r}")
            messages.append({"role": role, "content": str(content)})
    else:
        if "instruction" not in row or "output" not in row:
            raise ValueError(f"{where} record {i}: alpaca records need 'instruction' and 'output', got {sorted(row)}")
        for pair in row.get("history") or []:
            messages += [{"role": "user", "content": str(pair[0])}, {"role": "assistant", "content": str(pair[1])}]
        prompt = str(row["instruction"]) + ("\n" + str(row["input"]) if row.get("input") else "")
        messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": str(row["output"])}]
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError(f"{where} record {i}: the conversation must end with an assistant turn")
    if system:
        messages.insert(0, {"role": "system", "content": system})
    return {"messages": messages, "reference": messages[-1]["content"]}


def _prompt_text(messages: list[dict[str, str]]) -> str:
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")


# ---------------------------------------------------------------------------------------------
# Tokenization: chat template, prompt masking, truncation
# ---------------------------------------------------------------------------------------------


def prepare_tokenizer(tokenizer) -> str:
    """Pad token and chat template; returns where the template comes from ("model" or "fallback")."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    source = "model"
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
        source = "fallback"
    return source


def _render(tokenizer, messages, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def chat_segments(tokenizer, messages: list[dict[str, str]], mask_history: bool) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, trained) pieces: answers trained, everything else not.

    Each assistant turn is delimited by rendering the conversation up to it (with the generation
    prompt) and through it. Templates that rewrite earlier turns (so that the renderings are not
    prefixes of each other) fall back to training on the last answer only.
    """
    pieces: list[tuple[str, bool]] = []
    done = ""
    answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    for n, i in enumerate(answers):
        before = _render(tokenizer, messages[:i], True)
        through = _render(tokenizer, messages[: i + 1], False)
        if not (before.startswith(done) and through.startswith(before)):
            return _last_turn_segments(tokenizer, messages)
        trained = (n == len(answers) - 1) or not mask_history
        pieces += [(before[len(done):], False), (through[len(before):], trained)]
        done = through
    rest = _render(tokenizer, messages, False)
    if rest.startswith(done) and len(rest) > len(done):
        pieces.append((rest[len(done):], False))
    return pieces


def _last_turn_segments(tokenizer, messages) -> list[tuple[str, bool]]:
    prompt = _render(tokenizer, messages[:-1], True)
    full = _render(tokenizer, messages, False)
    if full.startswith(prompt):
        return [(prompt, False), (full[len(prompt):], True)]
    return [(prompt, False), (messages[-1]["content"] + (tokenizer.eos_token or ""), True)]


def encode_chat(tokenizer, messages, params: LoraSftParams, stats: Counter, split: str) -> dict[str, list[int]] | None:
    """input_ids / labels (prompt tokens -100) for one conversation, truncated to max_length; None if dropped."""
    ids: list[int] = []
    labels: list[int] = []
    last_answer_start = 0
    for text, trained in chat_segments(tokenizer, messages, params.mask_history):
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        if trained:
            last_answer_start = len(ids)
        ids += piece
        labels += piece if trained else [IGNORE_INDEX] * len(piece)
    if not any(label != IGNORE_INDEX for label in labels):
        stats[f"{split}/dropped_empty_answer"] += 1
        return None
    if len(ids) > params.max_length:
        stats[f"{split}/truncated"] += 1
        if params.truncation == "drop":
            stats[f"{split}/dropped_too_long"] += 1
            return None
        answer_end = max(i for i, label in enumerate(labels) if label != IGNORE_INDEX) + 1
        source = slice(0, last_answer_start)
        target = slice(last_answer_start, answer_end)
        src_ids, src_labels = ids[source], labels[source]
        tgt_ids, tgt_labels = ids[target], labels[target]
        new_src, new_tgt = _split_budget(len(src_ids), len(tgt_ids), params.max_length)
        if new_tgt == 0:
            stats[f"{split}/dropped_too_long"] += 1
            return None
        src_ids, src_labels = _cut_middle(src_ids, new_src), _cut_middle(src_labels, new_src)
        ids, labels = src_ids + tgt_ids[:new_tgt], src_labels + tgt_labels[:new_tgt]
    stats[f"{split}/tokens"] += len(ids)
    stats[f"{split}/answer_tokens"] += sum(1 for label in labels if label != IGNORE_INDEX)
    return {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}


def _split_budget(source_len: int, target_len: int, cutoff: int) -> tuple[int, int]:
    """How many prompt and answer tokens to keep (LLaMA-Factory's rule): a short answer is kept whole."""
    if target_len * 2 < cutoff:
        max_target = cutoff
    elif source_len * 2 < cutoff:
        max_target = cutoff - source_len
    else:
        max_target = int(cutoff * target_len / (source_len + target_len))
    new_target = min(max_target, target_len)
    new_source = min(max(cutoff - new_target, 0), source_len)
    return new_source, new_target


def _cut_middle(seq: list[int], keep: int) -> list[int]:
    """Keep the first third and the last two thirds of a ``keep`` budget (the header and the question)."""
    if len(seq) <= keep:
        return list(seq)
    if keep <= 0:
        return []
    head = keep // 3
    return list(seq[:head]) + list(seq[len(seq) - (keep - head):])


def encode_classification(tokenizer, rows, label_ids: dict[str, int], params: LoraSftParams, stats: Counter,
                          split: str) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        ids = tokenizer(row["text"], add_special_tokens=True)["input_ids"]
        if len(ids) > params.max_length:
            stats[f"{split}/truncated"] += 1
            if params.truncation == "drop":
                stats[f"{split}/dropped_too_long"] += 1
                continue
            ids = ids[: params.max_length]
        if row["label"] not in label_ids:
            raise ValueError(f"{split}: label {row['label']!r} is not among the training labels {list(label_ids)}")
        stats[f"{split}/tokens"] += len(ids)
        out.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": label_ids[row["label"]]})
    return out


def _log_encoding(ctx, stats: Counter, params: LoraSftParams) -> None:
    for split in ("train", "dev"):
        n_trunc = stats[f"{split}/truncated"]
        if n_trunc:
            how = "dropped" if params.truncation == "drop" else "truncated"
            ctx.log(f"{split}: {n_trunc} example(s) longer than max_length {params.max_length} were {how}")
        if stats[f"{split}/dropped_empty_answer"]:
            ctx.log(f"{split}: {stats[f'{split}/dropped_empty_answer']} example(s) with an empty answer were dropped")
    if stats["train/tokens"]:
        ctx.log(f"train: {stats['train/tokens']} tokens, {stats['train/answer_tokens']} of them trained (answers)")


# ---------------------------------------------------------------------------------------------
# Model, LoRA, Trainer
# ---------------------------------------------------------------------------------------------


def _gpu_device_map(ctx) -> Any:
    import os

    import torch

    if not torch.cuda.is_available() or ctx.num_gpus == 0:
        return None
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return {"": local if local < torch.cuda.device_count() else torch.cuda.current_device()}


def _precision(params: LoraSftParams, ctx) -> tuple[Any, bool, bool]:
    """(dtype of the base weights, bf16 flag, fp16 flag). CPU: fp32 training, weights float32 unless asked."""
    import torch

    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    asked = params.quantization.compute_dtype
    if not (ctx.num_gpus > 0 and torch.cuda.is_available()):
        if params.mixed_precision in ("bf16", "fp16"):
            ctx.log(f"mixed_precision {params.mixed_precision} ignored on CPU: training in fp32")
        return names.get(asked, torch.float32), False, False
    mp = params.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = names[asked] if asked != "auto" else {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}[mp]
    return dtype, mp == "bf16", mp == "fp16"


def _load_model(params: LoraSftParams, model_path: str, data: SftData, tokenizer, ctx):
    from .models import load_causal_lm, load_sequence_classifier

    dtype, bf16, fp16 = _precision(params, ctx)
    quant = None if params.quantization.mode == "none" else params.quantization.mode
    common = dict(quantization=quant, compute_dtype=dtype, device_map=_gpu_device_map(ctx) if quant else None,
                  trust_remote_code=params.trust_remote_code, quant_type=params.quantization.quant_type,
                  double_quant=params.quantization.double_quant)
    if data.head:
        model = load_sequence_classifier(model_path, num_labels=len(data.labels),
                                         id2label=dict(enumerate(data.labels)),
                                         label2id={label: i for i, label in enumerate(data.labels)}, **common)
        model.config.pad_token_id = tokenizer.pad_token_id
    else:
        model = load_causal_lm(model_path, **common)
    model.config.use_cache = False  # training; packed batches need it off (see masking_utils)
    if quant == "4bit" and ctx.num_gpus == 0:
        # bitsandbytes (0.50) repacks 4-bit weights for an AVX512-BF16 inference kernel the first time a
        # layer runs in eval mode without grad (our dev evaluation), never unpacks them for training, and
        # that kernel has no autograd: gradients through the frozen layers would be wrong. Keep the
        # training kernel throughout.
        for module in model.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    mp = "bf16" if bf16 else "fp16" if fp16 else "fp32"
    precision = f"base weights {str(dtype).removeprefix('torch.')}" + (f" ({quant})" if quant else "") + f", {mp} training"
    return model, precision, bf16, fp16


def _wrap_lora(params: LoraSftParams, model, data: SftData):
    from peft import LoraConfig, get_peft_model

    if params.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    modules_to_save = list(params.lora.modules_to_save)
    if data.head and "score" not in modules_to_save:
        modules_to_save.append("score")
    config = LoraConfig(r=params.lora.r, lora_alpha=params.lora.alpha, lora_dropout=params.lora.dropout,
                        target_modules=params.lora.target_modules, bias=params.lora.bias,
                        modules_to_save=modules_to_save or None,
                        task_type="SEQ_CLS" if data.head else "CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    return peft_model, trainable, total


class _ListDataset:
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def _make_trainer(params, ctx, model, tokenizer, train_rows, dev_rows, data: SftData, seed, tokens_per_sample,
                  make_callback, bf16: bool, fp16: bool, baseline: dict[str, float] | None = None):
    from transformers import (DataCollatorForSeq2Seq, DataCollatorWithFlattening, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    from .training import common_training_args

    if params.max_steps:
        total_steps = params.max_steps
    else:
        total_steps = max(1, math.ceil(math.ceil(len(train_rows) / (params.per_device_batch_size * max(1, ctx.world_size)))
                                       / params.grad_accum * params.epochs))
    cadence = max(1, math.ceil(total_steps / 4))
    eval_steps = (params.eval_steps or cadence) if dev_rows else None
    save_steps = params.save_steps or eval_steps or cadence
    kwargs = common_training_args(
        ctx, ctx.work_dir / "checkpoints", seed=seed, lr=params.lr, epochs=params.epochs, max_steps=params.max_steps,
        per_device_batch=params.per_device_batch_size, grad_accum=params.grad_accum, warmup_ratio=params.warmup_ratio,
        weight_decay=params.weight_decay, eval_steps=eval_steps, save_steps=save_steps,
        logging_steps=params.logging_steps, bf16=bf16, fp16=fp16, gradient_checkpointing=False,
        lr_scheduler=params.lr_scheduler,
        extra={"per_device_eval_batch_size": params.per_device_batch_size, "label_names": ["labels"],
               "remove_unused_columns": False, "save_only_model": False})
    _fit_training_args(kwargs, TrainingArguments)
    args = TrainingArguments(**kwargs)
    if data.head:
        collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if ctx.num_gpus else None)
        compute_metrics = _cls_compute_metrics(len(data.labels))
    elif params.packing:
        collator = _FlattenCollator(DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX))
        compute_metrics = None
    else:
        collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX,
                                          pad_to_multiple_of=8 if ctx.num_gpus else None)
        compute_metrics = None
    trainer = Trainer(model=model, args=args, data_collator=collator, train_dataset=_ListDataset(train_rows),
                      eval_dataset=_ListDataset(dev_rows) if dev_rows else None, processing_class=tokenizer,
                      compute_metrics=compute_metrics,
                      callbacks=[_baseline_callback(ctx, baseline if baseline is not None else {}),
                                 make_callback(ctx, tokens_per_sample=tokens_per_sample)])
    return trainer, total_steps


BASELINE_FILE = "orch_eval_before.json"


def _baseline_callback(ctx, baseline: dict[str, float]):
    """Writes the base model's dev scores (``baseline``, filled after the Trainer is built) into every
    checkpoint on rank 0. Listed before OrchCallback, whose on_save hands the checkpoint to Ray Train."""
    from transformers import TrainerCallback

    class _BaselineCallback(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ctx.world_rank == 0 and folder.is_dir():
                (folder / BASELINE_FILE).write_text(json.dumps({k: float(v) for k, v in baseline.items()
                                                                if isinstance(v, (int, float))}))

    return _BaselineCallback()


def _read_baseline(checkpoint: str) -> dict[str, float]:
    try:
        return {k: float(v) for k, v in json.loads((Path(checkpoint) / BASELINE_FILE).read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


class _FlattenCollator:
    """DataCollatorWithFlattening without the attention_mask it would ignore anyway."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, features):
        return self.inner([{k: v for k, v in f.items() if k != "attention_mask"} for f in features])


def _fit_training_args(kwargs: dict[str, Any], cls) -> None:
    """Adapt common_training_args' keywords to this transformers version (5.x folded warmup_ratio into
    warmup_steps: a float < 1 there is a ratio)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    if "warmup_ratio" in kwargs and "warmup_ratio" not in names:
        ratio = kwargs.pop("warmup_ratio")
        if ratio and not kwargs.get("warmup_steps"):
            kwargs["warmup_steps"] = float(ratio)


def _cls_compute_metrics(num_labels: int):
    def compute(pred) -> dict[str, float]:
        import numpy as np

        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        guess = np.asarray(logits).argmax(-1).tolist()
        gold = np.asarray(pred.label_ids).tolist()
        return classification_scores(gold, guess, list(range(num_labels)))

    return compute


def _start_step(resume: str | None) -> int:
    if not resume:
        return 0
    try:
        return int(json.loads((Path(resume) / "trainer_state.json").read_text())["global_step"])
    except (OSError, ValueError, KeyError):
        return 0


def _peak_memory() -> dict[str, float]:
    from .training import peak_memory_gb

    return peak_memory_gb()


# ---------------------------------------------------------------------------------------------
# Before / after samples and their scores
# ---------------------------------------------------------------------------------------------


def before_after(model, tokenizer, samples, data: SftData, params: LoraSftParams, path: Path) -> dict[str, Any]:
    """Answers of the base (adapter disabled) and tuned model for ``samples``; writes samples.jsonl."""
    import torch

    model.eval()
    if data.head:
        prompts = [s["text"] for s in samples]
        with torch.no_grad():
            with model.disable_adapter():
                before = _classify(model, tokenizer, prompts, data.labels, params)
            after = _classify(model, tokenizer, prompts, data.labels, params)
    else:
        prompts = [_render(tokenizer, s["messages"][:-1], True) for s in samples]
        with model.disable_adapter():
            before = generate(model, tokenizer, prompts, params)
        after = generate(model, tokenizer, prompts, params)
    references = [s["reference"] for s in samples]
    shown = prompts if data.head else [_prompt_text(s["messages"]) for s in samples]
    write_jsonl(path, ({"prompt": p, "reference": r, "before": b, "after": a}
                       for p, r, b, a in zip(shown, references, before, after)))
    scores: dict[str, Any] = {"samples": len(samples)}
    if data.task == "classify":
        for name, guesses in (("before", before), ("after", after)):
            pred = [_match_label(g, data.labels) for g in guesses]
            for k, v in classification_scores(references, pred, data.labels).items():
                scores[f"{k}_{name}"] = v
    else:
        for name, guesses in (("before", before), ("after", after)):
            em, f1 = _qa_scores(guesses, references)
            scores[f"em_{name}"], scores[f"f1_{name}"] = em, f1
    return scores


def generate(model, tokenizer, prompts: list[str], params: LoraSftParams) -> list[str]:
    """Greedy answers for rendered chat prompts (left padding, batched)."""
    import torch

    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    eos = set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for e in (gen_eos if isinstance(gen_eos, list) else [gen_eos]):
        if e is not None:
            eos.add(int(e))
    if tokenizer.eos_token_id is not None:
        eos.add(int(tokenizer.eos_token_id))
    budget = max(8, params.max_length - params.max_new_tokens)
    out: list[str] = []
    try:
        for i in range(0, len(prompts), params.generation_batch_size):
            batch = prompts[i: i + params.generation_batch_size]
            encoded = [_cut_middle(tokenizer(p, add_special_tokens=False)["input_ids"], budget) for p in batch]
            padded = tokenizer.pad({"input_ids": encoded}, padding=True, return_tensors="pt").to(device)
            with torch.no_grad():
                gen = model.generate(**padded, max_new_tokens=params.max_new_tokens, do_sample=False,
                                     num_beams=1, use_cache=True, pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=sorted(eos) or None)
            for row in gen[:, padded["input_ids"].shape[1]:]:
                # A byte-level tokenizer cut at max_new_tokens can end inside a multi-byte character:
                # drop the undecodable tail ("�") rather than show it.
                out.append(tokenizer.decode(row, skip_special_tokens=True).rstrip("\ufffd").strip())
    finally:
        tokenizer.padding_side = side
    return out


def _classify(model, tokenizer, texts: list[str], labels: list[str], params: LoraSftParams) -> list[str]:
    device = next(model.parameters()).device
    out: list[str] = []
    for i in range(0, len(texts), params.generation_batch_size):
        batch = tokenizer(texts[i: i + params.generation_batch_size], truncation=True, max_length=params.max_length,
                          padding=True, return_tensors="pt").to(device)
        logits = model(**batch).logits
        out += [labels[j] for j in logits.argmax(-1).tolist()]
    return out


def _match_label(answer: str, labels: list[str]) -> str:
    """The label a generated answer names: exact (normalised) match, else the longest label it starts with,
    else the first label mentioned in it; '' when none."""
    norm = _normalize(answer)
    by_norm = {_normalize(label): label for label in labels}
    if norm in by_norm:
        return by_norm[norm]
    for n, label in sorted(by_norm.items(), key=lambda kv: -len(kv[0])):
        if n and norm.startswith(n):
            return label
    hits = [(norm.find(n), label) for n, label in by_norm.items() if n and n in norm]
    return min(hits)[1] if hits else ""


def classification_scores(gold: list, pred: list, labels: list) -> dict[str, float]:
    """Accuracy and macro-F1 (over ``labels``; a label never predicted nor present scores 0 only if present)."""
    n = len(gold)
    acc = sum(1 for g, p in zip(gold, pred) if g == p) / n if n else 0.0
    f1s = []
    for label in labels:
        tp = sum(1 for g, p in zip(gold, pred) if g == label and p == label)
        fp = sum(1 for g, p in zip(gold, pred) if g != label and p == label)
        fn = sum(1 for g, p in zip(gold, pred) if g == label and p != label)
        if tp + fp + fn == 0:
            continue  # absent from both: not counted
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return {"accuracy": float(acc), "macro_f1": float(sum(f1s) / len(f1s)) if f1s else 0.0}


def _normalize(text: str) -> str:
    from .metrics import normalize_answer

    return normalize_answer(text)


def _qa_scores(predictions: list[str], references: list[str]) -> tuple[float, float]:
    """Mean exact match and token F1 (components.metrics: CJK characters are tokens; punctuation,
    case and English articles ignored), the same definitions as the evaluation stage."""
    from .metrics import exact_match, token_f1

    if not references:
        return 0.0, 0.0
    em = sum(exact_match(p, r) for p, r in zip(predictions, references))
    f1 = sum(token_f1(p, r) for p, r in zip(predictions, references))
    return em / len(references), f1 / len(references)


# ---------------------------------------------------------------------------------------------
# Merged export
# ---------------------------------------------------------------------------------------------


def _export_merged(params: LoraSftParams, model_path: str, out: Path, data: SftData, tokenizer, ctx) -> None:
    """Base (full precision, never quantized) + adapter, merged, saved to out/merged."""
    import torch
    from peft import PeftModel

    from .models import load_causal_lm, load_sequence_classifier

    dtype, _, _ = _precision(params, ctx)
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        dtype = torch.float32
    if data.head:
        base = load_sequence_classifier(model_path, num_labels=len(data.labels), compute_dtype=dtype,
                                        id2label=dict(enumerate(data.labels)),
                                        label2id={label: i for i, label in enumerate(data.labels)},
                                        trust_remote_code=params.trust_remote_code)
        base.config.pad_token_id = tokenizer.pad_token_id
    else:
        base = load_causal_lm(model_path, compute_dtype=dtype, trust_remote_code=params.trust_remote_code)
    merged = PeftModel.from_pretrained(base, str(out)).merge_and_unload()
    target = out / "merged"
    merged.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    ctx.log(f"merged model written to {target}")
    del base, merged
