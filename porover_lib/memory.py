"""GPU memory estimate for QLoRA SFT / DPO of a Llama-style student, to pick settings for a 24 GiB card.

total = weights + LoRA + optimizer + activations + LM head + overhead, where (T = batch x seq tokens,
doubled for DPO since chosen and rejected go through one forward; h, i, kv = hidden, intermediate and
key/value widths; L layers; V vocab; r LoRA rank):

* weights: linear layers in nf4 with double quantisation, 0.5 byte/param + 0.127 bit/param of
  constants (fp32 absmax per 64 weights, re-quantised to 8 bit with one fp32 per 256 blocks);
  embeddings, untied lm_head and norms at 4 bytes, since `peft.prepare_model_for_kbit_training`
  upcasts every non-4-bit parameter to fp32 (`upcast_fp32=False`: 2 bytes, bf16).
* LoRA: r x (in + out) per adapted linear, bf16 weights + bf16 grads (TRL casts QLoRA adapters to
  bf16); DPO keeps a frozen bf16 copy as the reference adapter.
* optimizer: paged 8-bit AdamW, 2 bytes/adapter param (two 8-bit moments); fp32 AdamW: 8 bytes.
* activations, bf16: with gradient checkpointing the L layer inputs (T x h each) plus one layer's
  full activations while it is recomputed, ~(17h + 3kv + 5i) values/token (norm inputs and fp32
  statistics, q/k/v and their rotations, attention output, the MLP's gate/up/act/product, LoRA
  dropout copies) counted twice for the gradients flowing through it; without checkpointing all L
  layers keep theirs. Attention is SDPA/flash, so there is no seq^2 term. DPO adds the reference
  forward (no grad): one layer's transient working set.
* LM head: TRL 1.16's fused head scores the vocabulary in tiles of <= 4096 tokens x 32768 entries,
  so logits never exist whole: one bf16 tile plus the fp32 gradient of the final hidden states.
  `fused_lm_head=False` gives plain HF: T x V logits in bf16 + fp32 copy + fp32 log-softmax (10 bytes).
* overhead: 0.75 GiB for the CUDA context, cuBLAS workspaces and allocator fragmentation.
"""
from __future__ import annotations

from typing import Any

GIB = 1024**3
NF4_BYTES_PER_PARAM = 0.5 + 0.127 / 8
CUDA_OVERHEAD_GIB = 0.75
FUSED_TOKEN_TILE, FUSED_VOCAB_TILE = 4096, 32768  # trl.kernels.chunked_logprob tile sizes
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# From the public model configs (meta-llama/*/config.json)
LLAMA_CONFIGS: dict[str, dict[str, Any]] = {
    "Llama-3.2-1B": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "Llama-3.2-3B": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "Llama-3.1-8B": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
}


def _cfg(config) -> dict[str, Any]:
    if not isinstance(config, dict):
        config = config.to_dict()
    need = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    missing = [k for k in need if k not in config]
    if missing:
        raise ValueError(f"model config lacks {missing}")
    c = dict(config)
    c.setdefault("num_key_value_heads", c["num_attention_heads"])
    c.setdefault("tie_word_embeddings", False)
    if not c.get("head_dim"):
        c["head_dim"] = c["hidden_size"] // c["num_attention_heads"]
    return c


def linear_shapes(config) -> dict[str, tuple[int, int]]:
    """(in, out) of each linear layer in one decoder layer."""
    c = _cfg(config)
    h, i, q, kv = (c["hidden_size"], c["intermediate_size"], c["num_attention_heads"] * c["head_dim"],
                   c["num_key_value_heads"] * c["head_dim"])
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def count_params(config) -> dict[str, int]:
    """Parameters by kind: linear (quantised by QLoRA), embedding (+ untied lm_head), norm."""
    c = _cfg(config)
    linear = c["num_hidden_layers"] * sum(a * b for a, b in linear_shapes(c).values())
    embedding = c["vocab_size"] * c["hidden_size"] * (1 if c["tie_word_embeddings"] else 2)
    norm = (2 * c["num_hidden_layers"] + 1) * c["hidden_size"]
    return {"linear": linear, "embedding": embedding, "norm": norm, "total": linear + embedding + norm}


def lora_params(config, lora_r: int, target_modules: str | list[str] = "all-linear") -> int:
    modules = LINEAR_MODULES if target_modules == "all-linear" else target_modules
    unknown = set(modules) - set(LINEAR_MODULES)
    if unknown:
        raise ValueError(f"unknown target modules {sorted(unknown)}; known: {LINEAR_MODULES}")
    shapes = linear_shapes(config)
    return _cfg(config)["num_hidden_layers"] * sum(lora_r * sum(shapes[m]) for m in modules)


def estimate_qlora_memory(config, batch_size: int, seq_len: int, lora_r: int, method: str = "sft",
                          gradient_checkpointing: bool = True, optimizer: str = "paged_adamw_8bit",
                          target_modules: str | list[str] = "all-linear", upcast_fp32: bool = True,
                          fused_lm_head: bool = True) -> dict[str, float]:
    """Peak GPU memory of one QLoRA training step, in GiB per part and in total (see module doc)."""
    if method not in ("sft", "dpo"):
        raise ValueError(f"method must be 'sft' or 'dpo', got {method!r}")
    if optimizer not in ("paged_adamw_8bit", "adamw_torch"):
        raise ValueError(f"optimizer must be 'paged_adamw_8bit' or 'adamw_torch', got {optimizer!r}")
    c = _cfg(config)
    h, i, L, V = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    kv = c["num_key_value_heads"] * c["head_dim"]
    n = count_params(c)
    n_lora = lora_params(c, lora_r, target_modules)
    dpo = method == "dpo"
    tokens = batch_size * seq_len * (2 if dpo else 1)

    weights = n["linear"] * NF4_BYTES_PER_PARAM + (n["embedding"] + n["norm"]) * (4 if upcast_fp32 else 2)
    lora = n_lora * (2 + 2 + (2 if dpo else 0))
    optim = n_lora * (2 if optimizer == "paged_adamw_8bit" else 8)
    layer = tokens * 2 * (17 * h + 3 * kv + 5 * i)
    if gradient_checkpointing:
        activations = L * tokens * h * 2 + 2 * layer
    else:
        activations = L * layer + layer
    if dpo:
        activations += tokens * 2 * 2 * (h + i)  # reference forward, no grad: one layer's transient
    if fused_lm_head:
        head = min(tokens, FUSED_TOKEN_TILE) * min(V, FUSED_VOCAB_TILE) * 2 + tokens * h * (2 + 4)
    else:
        head = tokens * V * 10 + tokens * h * 2
    parts = {"weights": weights, "lora": lora, "optimizer": optim, "activations": activations, "lm_head": head}
    out = {k: v / GIB for k, v in parts.items()}
    out["overhead"] = CUDA_OVERHEAD_GIB
    out["total"] = sum(out.values())
    return out
