"""Parameters and helpers shared by the encoder fine-tuning kinds (embedder and reranker).

Pydantic only at import time: ``orch validate`` imports this module.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .vocab import VocabExtension


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraParams(Strict):
    """A LoRA adapter on the encoder instead of full fine-tuning."""

    r: int = Field(8, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(16, ge=1, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA branch.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        ["query", "key", "value", "dense"], description="Module names to adapt, or 'all-linear'.")
    export: Literal["merged", "adapter"] = Field(
        "merged", description="'merged': the output is a plain model with the adapter folded in (loads anywhere); "
                              "'adapter': the output keeps the PEFT adapter separate (small; needs peft to load).")


class TrainLoopParams(Strict):
    """Optimisation knobs common to every trainer."""

    batch_size: int = Field(32, ge=1, description="GLOBAL batch size: summed over all workers. Each worker gets "
                                                  "batch_size / workers (rounded up); the log states both.")
    lr: float = Field(5e-5, gt=0, lt=1, description="Peak learning rate (AdamW).")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Fraction of steps of linear warm-up.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="Learning-rate schedule after warm-up.")
    epochs: float = Field(1.0, gt=0, description="Passes over the training data (ignored when max_steps is set).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimiser steps.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    max_seq_length: int = Field(256, ge=8, le=8192, description="Tokens per text; longer texts are truncated.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory.")
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = Field(
        "auto", description="On GPU: 'auto' picks bf16 where supported, else fp16. Always fp32 on CPU.")
    eval_steps: int | None = Field(None, ge=1, description="Evaluate on the dev set every N steps (default: about "
                                                           "4 times per run, and at the end).")
    save_steps: int | None = Field(None, ge=1, description="Checkpoint every N steps (default: at each evaluation). "
                                                           "A restarted worker resumes from the last one.")
    logging_steps: int = Field(5, ge=1, description="Log loss / lr / speed every N steps.")
    lora: LoraParams | None = Field(None, description="Train a LoRA adapter instead of all weights.")
    extend_vocab: VocabExtension | None = Field(
        VocabExtension(), description="Add the training text's words that the tokenizer can only encode as [UNK] "
                                      "(e.g. most Chinese characters for the English MiniLM) as new tokens before "
                                      "training; null turns it off. Tokenizers without [UNK] (byte-level BPE) "
                                      "add nothing.")

    @model_validator(mode="after")
    def _save_with_eval(self):
        if self.eval_steps and self.save_steps and self.save_steps % self.eval_steps:
            raise ValueError("save_steps must be a multiple of eval_steps (a checkpoint carries the last eval)")
        return self


def precision_flags(mixed_precision: str, num_gpus: int) -> dict[str, bool]:
    """bf16/fp16 TrainingArguments flags; CPU training stays in fp32."""
    if num_gpus == 0 or mixed_precision == "no":
        return {"bf16": False, "fp16": False}
    if mixed_precision == "auto":
        import torch

        bf16 = torch.cuda.is_bf16_supported()
        return {"bf16": bf16, "fp16": not bf16}
    return {"bf16": mixed_precision == "bf16", "fp16": mixed_precision == "fp16"}


def schedule(total_steps: int, eval_steps: int | None, save_steps: int | None) -> tuple[int, int]:
    """Eval / save cadence: about 4 evaluations per run unless given; saves on evaluations."""
    ev = eval_steps or max(1, -(-total_steps // 4))
    sv = save_steps or ev
    return ev, sv


def steps_per_run(n_examples: int, global_batch: int, epochs: float, max_steps: int | None, grad_accum: int = 1) -> int:
    if max_steps:
        return max_steps
    per_epoch = max(1, -(-n_examples // (global_batch * grad_accum)))
    return max(1, int(per_epoch * epochs + 0.999))


def apply_lora(module, lora: LoraParams, task_type: str | None = None, modules_to_save: list[str] | None = None):
    """Wrap a transformers model in a PEFT LoRA model; returns (model, trainable, total)."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                     target_modules=lora.target_modules, task_type=task_type, modules_to_save=modules_to_save)
    peft_model = get_peft_model(module, cfg)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    return peft_model, trainable, total


def extend_vocab_for(params: TrainLoopParams, tokenizer, model, texts, seed: int, log) -> int:
    """Apply ``params.extend_vocab`` (see components/vocab.py) and log what it added."""
    if params.extend_vocab is None:
        return 0
    from .vocab import extend_vocabulary

    added = extend_vocabulary(tokenizer, model, texts, params.extend_vocab, seed=seed)
    if added:
        log(f"vocabulary: +{added} tokens for words the tokenizer could only encode as [UNK] "
            f"(min_freq {params.extend_vocab.min_freq}; extend_vocab: null turns this off)")
    return added
