"""The embedded model: converted once from the installed GGUF, cached, reused, and it answers."""
import time

import pytest
import torch

from porover_lib.config import ModelParams
from porover_lib.models import (cache_root, load_model, load_tokenizer, pick_dtype, prepare_embedded,
                                quantization_config, resolve_path)
from tiny import save_tiny_model, tiny_model


@pytest.mark.slow
def test_embedded_model_converts_once_answers_and_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("POROVER_CACHE", str(tmp_path))
    started = time.time()
    folder = prepare_embedded("smollm2-135m-instruct")
    first = time.time() - started
    assert folder == cache_root() / "models" / "smollm2-135m-instruct"
    weights = folder / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    print(f"\nembedded model preparation (GGUF -> safetensors): {first:.1f} s")

    spec = ModelParams(name="embedded:smollm2-135m-instruct", dtype="bfloat16", device="cpu")
    model, tokenizer = load_model(spec), load_tokenizer(spec)
    assert weights.stat().st_mtime_ns == stamp  # loaded from the cache, not converted again
    assert not getattr(model, "is_quantized", False)  # trainers accept it
    assert model.config.num_hidden_layers == 30 and model.dtype == torch.bfloat16

    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert answer.strip() and "Paris" in answer


def test_unknown_embedded_model_is_named():
    with pytest.raises(ValueError, match="embedded:nope"):
        resolve_path("embedded:nope")


def test_hub_ids_and_paths_pass_through_untouched(tmp_path):
    assert resolve_path("meta-llama/Llama-3.1-8B-Instruct") == "meta-llama/Llama-3.1-8B-Instruct"
    assert resolve_path(str(tmp_path)) == str(tmp_path)


def test_dtype_and_quantisation_from_params():
    assert pick_dtype(ModelParams(dtype="float32", device="cpu")) == torch.float32
    assert quantization_config(ModelParams()) is None
    q = quantization_config(ModelParams(load_in_4bit=True))
    assert q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16


def test_cuda_request_without_gpu_is_clear():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from porover_lib.models import pick_device

    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        pick_device(ModelParams(device="cuda"))


def test_tiny_model_has_the_embedded_architecture_and_tokenizer(tokenizer, tmp_path):
    model, tok = tiny_model(tokenizer)
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tokenizer)
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    path = save_tiny_model(tmp_path / "tiny", tokenizer=tokenizer)
    reloaded = load_model(ModelParams(name=str(path), dtype="float32", device="cpu"))
    ids = tok("hello", return_tensors="pt")["input_ids"]
    assert torch.allclose(model(ids).logits, reloaded(ids).logits, atol=1e-5)


# --- several GPUs: FSDP-QLoRA (issue 29.7) -----------------------------------------------------------------

def test_each_rank_loads_its_4bit_student_on_its_own_gpu(monkeypatch):
    """Under `accelerate launch` every rank once got device_map {"": "cuda"}, i.e. all on cuda:0."""
    from porover_lib.models import load_kwargs

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    spec = ModelParams(name="meta-llama/Llama-3.1-8B-Instruct", device="cuda", load_in_4bit=True)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert load_kwargs(spec)["device_map"] == {"": "cuda"}
    for rank in (0, 3):
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        assert load_kwargs(spec)["device_map"] == {"": f"cuda:{rank}"}
    quant = load_kwargs(spec)["quantization_config"]
    assert quant.bnb_4bit_quant_storage == torch.bfloat16  # FSDP shards parameters of one dtype only


def test_under_fsdp_the_4bit_base_keeps_one_dtype(tmp_path, monkeypatch):
    from porover_lib.training import _prepare_base

    path = save_tiny_model(tmp_path / "tiny")
    spec = ModelParams(name=str(path), dtype="bfloat16", device="cpu", load_in_4bit=True)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    model = _prepare_base(load_model(spec), spec, gradient_checkpointing=True, log=lambda line: None)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in model.parameters())
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")  # one GPU: PEFT's preparation, norms in fp32
    single = _prepare_base(load_model(spec), spec, gradient_checkpointing=True, log=lambda line: None)
    assert torch.float32 in {p.dtype for p in single.parameters()}
