"""What every judge shares: the verdict type, the label sets, and loading a judge's model."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

from ..config import ModelParams

REFUSAL_LABELS = ("compliance", "refusal", "partial_refusal")
SAFETY_LABELS = ("safe", "unsafe")


@dataclass(frozen=True)
class Judgement:
    """One verdict. ``score`` is P(refusal) for refusal judges, P(unsafe) for safety
    judges and a real-valued reward (higher is better) for reward judges."""

    label: str
    score: float
    reason: str
    judge: str


@runtime_checkable
class Judge(Protocol):
    """``roles``: the prompt roles the judge has meaning on (None: all), e.g. ("harmful",)."""

    name: str
    kind: str  # "refusal" | "safety" | "reward"
    roles: tuple[str, ...] | None

    def judge(self, prompts: list[str], responses: list[str]) -> list[Judgement]: ...


def is_refusal(j: Judgement) -> bool:
    """Partial refusals count as refusals, as in XSTest and OR-Bench."""
    return j.label in ("refusal", "partial_refusal")


def check_pairs(prompts: Sequence[str], responses: Sequence[str]) -> None:
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses; they must pair up")


def snippet(text: str | None, limit: int = 80) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_backend(backend: Any) -> Any:
    if not callable(getattr(backend, "chat", None)):
        raise TypeError(
            f"backend {backend!r} has no chat(messages_list, max_new_tokens, temperature) method; "
            "pass a porover_lib.generation backend")
    return backend


def chat(backend: Any, conversations: list[list[dict]], max_new_tokens: int) -> list[str]:
    replies = backend.chat(conversations, max_new_tokens=max_new_tokens, temperature=0.0)
    if len(replies) != len(conversations):
        raise RuntimeError(f"backend {backend!r} returned {len(replies)} replies for {len(conversations)} conversations")
    return replies


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def model_spec(model: ModelParams | str) -> ModelParams:
    """A judge's model as params; a bare name loads in the dtype the hardware suits."""
    return ModelParams(name=model, dtype="auto") if isinstance(model, str) else model


def load_judge_model(model: ModelParams | str | Any, tokenizer: Any, head: str):
    """(model, tokenizer) from model params (or a name), or passed-in objects (tests pass tiny models)."""
    if not isinstance(model, (ModelParams, str)):
        if tokenizer is None:
            raise ValueError("pass tokenizer= together with a model object")
        return model.eval(), tokenizer
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from ..models import load_model, load_tokenizer

    spec = model_spec(model)
    model_class = AutoModelForCausalLM if head == "causal" else AutoModelForSequenceClassification
    return load_model(spec, model_class).eval(), tokenizer or load_tokenizer(spec)
