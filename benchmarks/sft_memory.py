"""LoRA vs QLoRA on a Qwen3-8B-shaped model: peak GPU memory and tokens/s, next to lora_sft's estimate.

    python benchmarks/sft_memory.py                      # needs a CUDA GPU (~20 GiB free; ~16 GB of disk)
    python benchmarks/sft_memory.py --seq 2048 --batch 2 --no-grad-ckpt
    python benchmarks/sft_memory.py --tiny --device cpu  # smoke test of the script itself (numbers meaningless)

The model is built from a Qwen3-8B config (hidden 4096, 36 layers, 32 heads, 8 KV heads,
intermediate 12288, vocab 151936, untied head) with random weights and saved once as bf16
safetensors under --workdir, so that both modes load it through ``components.models.load_causal_lm``
exactly as ``lora_sft`` does (QLoRA: bitsandbytes NF4 with double quantization, bf16 compute).
Each mode runs in its own subprocess (clean CUDA allocator statistics):

- LoRA r=16 (alpha 32) on all linear layers, base weights bf16; QLoRA the same on the 4-bit base;
- gradient checkpointing on (unless --no-grad-ckpt), bf16 autocast, AdamW on the adapter;
- a batch of --batch random sequences of --seq tokens (every token trained), --warmup steps, then
  --steps timed steps. Peak = ``torch.cuda.max_memory_allocated()`` from after loading to the end
  (loaded weights included, load-time transients not); tokens/s = batch x seq x steps / time.

The estimate column is ``components.lora_sft.estimate_memory`` for the same params (what
``orch plan`` shows): the GPU estimate with --device cuda; with --device cpu the CPU one (fp32 base),
set against the process's peak RSS (which also counts the Python and torch runtime).
Results are printed as a table and written as JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

QWEN3_8B = dict(hidden_size=4096, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                intermediate_size=12288, vocab_size=151936, tie_word_embeddings=False, max_position_embeddings=40960,
                rms_norm_eps=1e-6, rope_theta=1000000.0)
TINY = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
            intermediate_size=256, vocab_size=4096, tie_word_embeddings=False, max_position_embeddings=4096)
GIB = 1024**3


def build_model(folder: Path, shape: dict, device: str) -> None:
    """A random-weight Qwen3 of ``shape`` saved as bf16 safetensors (skipped when already there)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    marker = folder / "orch_bench.json"
    if marker.is_file() and json.loads(marker.read_text()) == shape:
        return
    print(f"building a random {shape['num_hidden_layers']}-layer Qwen3 into {folder} ...", flush=True)
    t0 = time.time()
    config = Qwen3Config(**shape, bos_token_id=151643, eos_token_id=151645)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    marker.write_text(json.dumps(shape))
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    print(f"  built and saved in {time.time() - t0:.0f}s", flush=True)


def lora_params(folder: Path, mode: str, args):
    from components.lora_sft import LoraSftParams

    return LoraSftParams(model=str(folder), max_length=args.seq, per_device_batch_size=args.batch,
                         gradient_checkpointing=not args.no_grad_ckpt,
                         quantization={"mode": "4bit" if mode == "qlora" else "none",
                                       "compute_dtype": "bfloat16" if args.device == "cuda" else "float32"},
                         lora={"r": args.r, "alpha": 2 * args.r, "dropout": 0.05, "target_modules": "all-linear"})


def run_mode(folder: Path, mode: str, args) -> dict:
    """One mode, in this process: load, wrap, train; returns the measurements."""
    import torch

    from components.lora_sft import SftData, _wrap_lora
    from components.models import load_causal_lm

    cuda = args.device == "cuda"
    params = lora_params(folder, mode, args)
    t0 = time.time()
    model = load_causal_lm(str(folder), quantization="4bit" if mode == "qlora" else None,
                           compute_dtype=torch.bfloat16 if cuda else torch.float32,  # fp32: CPU smoke test
                           device_map={"": 0} if cuda else None)
    load_s = time.time() - t0
    model.config.use_cache = False
    model, trainable, total = _wrap_lora(params, model, SftData("sft", "generate", False, [], []))
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    model.train()
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                              fused=cuda or None)
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    device = "cuda" if cuda else "cpu"

    def step() -> float:
        ids = torch.randint(0, vocab, (args.batch, args.seq), generator=gen).to(device)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=cuda):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        return float(loss)

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    t1 = time.time()
    losses = [step() for _ in range(args.steps)]
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.time() - t1
    out = {
        "mode": mode, "trainable_params": trainable, "total_params": total, "load_s": round(load_s, 1),
        "s_per_step": elapsed / args.steps, "tokens_per_s": args.batch * args.seq * args.steps / elapsed,
        "loss_first": losses[0], "loss_last": losses[-1],
    }
    if cuda:
        out["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / GIB
        out["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
        out["gpu"] = torch.cuda.get_device_name(0)
    else:
        import resource

        out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seq", type=int, default=1024, help="tokens per sequence")
    ap.add_argument("--batch", type=int, default=1, help="sequences per step")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--r", type=int, default=16, help="LoRA rank (alpha = 2r)")
    ap.add_argument("--modes", default="lora,qlora", help="comma-separated: lora, qlora")
    ap.add_argument("--no-grad-ckpt", action="store_true", help="train without gradient checkpointing")
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "orch_sft_memory",
                    help="where the random bf16 model is saved (about 16 GB for the 8B shape)")
    ap.add_argument("--out", type=Path, help="also write the results as JSON here")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: smoke test only (with --tiny)")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer, hidden-128 model instead of the 8B shape")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("sft_memory: no CUDA GPU here (torch.cuda.is_available() is False). This benchmark measures GPU "
              "memory; run it on a machine with an NVIDIA GPU (about 20 GiB free for the default 8B shape), or "
              "pass --tiny --device cpu for a smoke test of the script.", file=sys.stderr)
        return 2
    if args.device == "cpu" and not args.tiny:
        print("sft_memory: --device cpu is a smoke test of the script and needs --tiny (the 8B shape would need "
              "~34 GiB of RAM in fp32 (orch plan's estimate) and a very long time per step on a CPU).", file=sys.stderr)
        return 2
    shape = TINY if args.tiny else QWEN3_8B
    folder = args.workdir / ("qwen3-tiny" if args.tiny else "qwen3-8b-shape")

    if args.child:
        result = run_mode(folder, args.child, args)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    folder.mkdir(parents=True, exist_ok=True)
    build_model(folder, shape, args.device)
    from components.lora_sft import estimate_memory
    from orchestrator.recipe.schema import Resources

    # the estimate for the device measured: GPU (bf16 base) or CPU (fp32 base, fp32 training, `cpu_memory_gb`)
    res = Resources(workers=1, gpus_per_worker=1) if args.device == "cuda" else Resources()
    est_key = "gpu_memory_gb" if args.device == "cuda" else "cpu_memory_gb"
    rows = []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        est = estimate_memory(lora_params(folder, mode, args), res)
        cmd = [sys.executable, __file__, "--child", mode] + [a for a in sys.argv[1:] if a != "--child"]
        print(f"running {mode} ...", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"{mode} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}", file=sys.stderr)
            rows.append({"mode": mode, "error": proc.stderr.strip().splitlines()[-1:] or ["?"],
                         "estimate_gib": est and est.get(est_key)})
            continue
        result = json.loads(lines[-1][len("RESULT "):])
        result["estimate_gib"] = est[est_key] if est else None
        result["estimate_detail"] = est["detail"] if est else None
        rows.append(result)

    peak_key = "peak_allocated_gib" if args.device == "cuda" else "peak_rss_gib"
    print(f"\nQwen3{'(tiny)' if args.tiny else '-8B shape'}, seq {args.seq} x batch {args.batch}, LoRA r={args.r} "
          f"all-linear, grad ckpt {'off' if args.no_grad_ckpt else 'on'}, {args.steps} steps after {args.warmup} "
          f"warm-up ({rows[0].get('gpu', args.device) if rows else args.device})")
    peak_name = "peak alloc GiB" if args.device == "cuda" else "peak RSS GiB"
    header = f"{'mode':6} | {'estimate GiB':>12} | {peak_name:>14} | {'peak reserved GiB':>17} | " \
             f"{'tokens/s':>9} | {'s/step':>7} | {'trainable':>10} | loss first->last"
    print(header)
    print("-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['mode']:6} | {r['estimate_gib'] or '-':>12} | failed: {r['error'][0][:80]}")
            continue
        print(f"{r['mode']:6} | {r['estimate_gib'] if r['estimate_gib'] is not None else '-':>12} | "
              f"{r[peak_key]:>14.2f} | {r.get('peak_reserved_gib', float('nan')):>17.2f} | {r['tokens_per_s']:>9.0f} | "
              f"{r['s_per_step']:>7.3f} | {r['trainable_params'] / 1e6:>9.1f}M | {r['loss_first']:.3f}->{r['loss_last']:.3f}")
    for r in rows:
        if r.get("estimate_detail"):
            print(f"  estimate {r['mode']}: {r['estimate_detail']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
