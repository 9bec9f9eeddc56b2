"""Tiny random-weight models of the embedded architecture: unit tests run in seconds, not minutes."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from porover_lib.models import _gguf_location, cache_root


@lru_cache(maxsize=1)
def embedded_tokenizer():
    """The real SmolLM2 tokenizer (from the cache if converted, else straight from the GGUF)."""
    from transformers import AutoTokenizer

    cached = cache_root() / "models" / "smollm2-135m-instruct"
    if (cached / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(cached)
    else:
        folder, filename = _gguf_location("smollm2-135m-instruct")
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    tokenizer.padding_side = "left"
    return tokenizer


def tiny_model(tokenizer=None, layers: int = 2, hidden: int = 64, seed: int = 0, model_class=None):
    """A random-weight Llama with the embedded model's tokenizer and vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or embedded_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=2048, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id, num_labels=1,
    )
    model = (model_class or LlamaForCausalLM)(config)
    if getattr(model, "generation_config", None) is not None:  # classifiers have none
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def save_tiny_model(path: str | Path, **kwargs) -> Path:
    """Write a tiny model + tokenizer to `path`, so code that loads by path can be tested."""
    model, tokenizer = tiny_model(**kwargs)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)
