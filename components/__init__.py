"""Built-in orch components. Each module registers its kinds with ``@component``.

Modules here must import quickly: torch, transformers, sentence-transformers and friends are
imported inside the functions that need them, so `orch validate` and `orch plan` stay fast.
"""

BUILTIN_MODULES = (
    "components.data_prep",
    "components.mining",
    "components.embed_finetune",
    "components.reranker_finetune",
    "components.lora_sft",
    "components.evaluate",
)
