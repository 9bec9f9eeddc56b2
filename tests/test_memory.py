"""QLoRA memory estimate: published parameter counts, real bitsandbytes storage, monotonicity, 24 GiB sanity."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from porover_lib.memory import GIB, LLAMA_CONFIGS, count_params, estimate_qlora_memory, lora_params

L8B = LLAMA_CONFIGS["Llama-3.1-8B"]


@pytest.mark.parametrize("name, billions", [("Llama-3.2-1B", 1.236), ("Llama-3.2-3B", 3.213), ("Llama-3.1-8B", 8.030)])
def test_configs_give_the_published_parameter_counts(name, billions):
    assert count_params(LLAMA_CONFIGS[name])["total"] / 1e9 == pytest.approx(billions, rel=0.002)


def test_lora_count_by_hand():
    # 8B, r=16, all 7 linears: 16 * (q 8192 + k 5120 + v 5120 + o 8192 + 3 * 18432) per layer, 32 layers
    assert lora_params(L8B, 16) == 32 * 16 * (8192 + 5120 + 5120 + 8192 + 3 * 18432)
    assert lora_params(L8B, 16, ["q_proj", "v_proj"]) == 32 * 16 * (8192 + 5120)
    with pytest.raises(ValueError, match="unknown target modules"):
        lora_params(L8B, 16, ["lm_head"])


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_monotonic_in_batch_seq_and_rank(method):
    def total(**kw):
        return estimate_qlora_memory(L8B, **{"batch_size": 1, "seq_len": 1024, "lora_r": 16, **kw}, method=method)["total"]

    assert total(batch_size=1) < total(batch_size=2) < total(batch_size=4)
    assert total(seq_len=512) < total(seq_len=1024) < total(seq_len=2048)
    assert total(lora_r=8) < total(lora_r=16) < total(lora_r=64)


def test_8b_qlora_sft_fits_24gib_and_what_would_not():
    sft = estimate_qlora_memory(L8B, batch_size=1, seq_len=1024, lora_r=16, method="sft")
    assert 6 < sft["total"] < 24
    n = count_params(L8B)["total"]
    assert 14 < n * 2 / GIB < 16  # bf16 weights alone: ~15 GiB, 2x the 4-bit model's weights
    assert sft["weights"] < 0.5 * n * 2 / GIB
    assert n * 16 / GIB > 24  # full fine-tuning (bf16 weights + grads, fp32 master + Adam) would not fit


def test_dpo_costs_more_than_sft_and_options_move_the_right_way():
    kw = dict(batch_size=2, seq_len=2048, lora_r=16)
    sft, dpo = estimate_qlora_memory(L8B, method="sft", **kw), estimate_qlora_memory(L8B, method="dpo", **kw)
    assert dpo["activations"] > 2 * sft["activations"] - 1e-9 and dpo["lora"] > sft["lora"]
    unfused = estimate_qlora_memory(L8B, method="sft", fused_lm_head=False, **kw)
    assert unfused["lm_head"] == pytest.approx(2 * 2048 * 128256 * 10 / GIB, rel=0.01)  # whole T x V logits
    assert sft["lm_head"] < 0.15 * unfused["lm_head"]  # TRL's fused head scores the vocabulary in tiles
    no_checkpointing = estimate_qlora_memory(L8B, method="sft", gradient_checkpointing=False, **kw)
    assert no_checkpointing["activations"] > 5 * sft["activations"]
    fp32_adam = estimate_qlora_memory(L8B, method="sft", optimizer="adamw_torch", **kw)
    assert fp32_adam["optimizer"] == pytest.approx(4 * sft["optimizer"])
    bf16 = estimate_qlora_memory(L8B, method="sft", upcast_fp32=False, **kw)
    assert sft["weights"] - bf16["weights"] == pytest.approx(count_params(L8B)["embedding"] * 2 / GIB, rel=0.01)


def test_accepts_a_pretrained_config():
    from transformers import LlamaConfig

    assert estimate_qlora_memory(LlamaConfig(**L8B), 1, 1024, 16) == estimate_qlora_memory(L8B, 1, 1024, 16)
    with pytest.raises(ValueError, match="method"):
        estimate_qlora_memory(L8B, 1, 1024, 16, method="ppo")


def test_weight_bytes_match_real_bitsandbytes_nf4_storage(tmp_path):
    """Load a small Llama in 4 bit on CPU, prepare it for QLoRA, and count the bytes actually held."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import LlamaConfig, LlamaForCausalLM

    from porover_lib.config import ModelParams
    from porover_lib.models import load_model

    cfg = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=512, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**cfg)).save_pretrained(tmp_path)
    model = load_model(ModelParams(name=str(tmp_path), load_in_4bit=True, device="cpu", dtype="bfloat16"))
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    held = 0
    for p in model.parameters():
        held += p.numel() * p.element_size()
        qs = getattr(p, "quant_state", None)
        if qs is not None:
            assert qs.nested and qs.blocksize == 64  # double quantisation, 64-weight blocks
            held += qs.absmax.numel() * qs.absmax.element_size() + qs.code.numel() * qs.code.element_size()
            held += qs.state2.absmax.numel() * 4 + qs.state2.code.numel() * 4
        else:
            assert p.dtype == torch.float32  # prepare_model_for_kbit_training upcast it
    assert estimate_qlora_memory(cfg, 1, 16, 8)["weights"] * GIB == pytest.approx(held, rel=0.02)
