"""Judges that label (prompt, response) pairs for filtering and evaluation.

POROver needs three kinds of verdict on a completion:

* refusal -- did the model refuse? (over-refusal metrics, filtering teacher completions)
* safety  -- is the response to a harmful prompt unsafe? (safety metrics, filtering)
* reward  -- how good is the response? (picking chosen/rejected pairs)

Every judge returns one :class:`Judgement` per pair, so callers never need to know which judge
produced it; :func:`make_judge` builds a judge from a (kind, name) pair so that params and the
CLI can name judges as strings. One module per family: `keyword`, `llm` (refusal), `safety`,
`reward`; `base` holds what they share.
"""
from __future__ import annotations

from typing import Any

from .base import REFUSAL_LABELS, SAFETY_LABELS, Judge, Judgement, is_refusal
from .keyword import KeywordRefusalJudge, split_sentences
from .llm import ORBENCH_PROMPT, LLMRefusalJudge, parse_orbench_reply
from .reward import HeuristicRewardJudge, HFRewardModelJudge, repeated_trigram_share
from .safety import LlamaGuardJudge, RefusalProxySafetyJudge, parse_llama_guard, verdict_token_ids

__all__ = [
    "REFUSAL_LABELS", "SAFETY_LABELS", "Judge", "Judgement", "is_refusal", "judge_class", "judge_names", "make_judge",
    "KeywordRefusalJudge", "split_sentences", "ORBENCH_PROMPT", "LLMRefusalJudge", "parse_orbench_reply",
    "RefusalProxySafetyJudge", "LlamaGuardJudge", "parse_llama_guard", "verdict_token_ids",
    "HFRewardModelJudge", "HeuristicRewardJudge", "repeated_trigram_share",
]

_JUDGES: dict[tuple[str, str], Any] = {
    ("refusal", "keyword"): KeywordRefusalJudge,
    ("refusal", "llm"): LLMRefusalJudge,
    ("safety", "refusal_proxy"): RefusalProxySafetyJudge,
    ("safety", "llama_guard"): LlamaGuardJudge,
    ("reward", "hf_reward_model"): HFRewardModelJudge,
    ("reward", "heuristic"): HeuristicRewardJudge,
}


def judge_names(kind: str | None = None) -> list[str]:
    """Judge kinds (no argument) or the judge names of one kind, for help texts and errors."""
    if kind is None:
        return sorted({k for k, _ in _JUDGES})
    return sorted(n for k, n in _JUDGES if k == kind)


def judge_class(kind: str, name: str) -> type:
    """The class registered as (kind, name), with an error listing what is allowed."""
    if kind not in judge_names():
        raise ValueError(f"unknown judge kind {kind!r}; allowed: {', '.join(judge_names())}")
    if (kind, name) not in _JUDGES:
        raise ValueError(f"unknown {kind} judge {name!r}; allowed: {', '.join(judge_names(kind))}")
    return _JUDGES[(kind, name)]


def make_judge(kind: str, name: str, **options: Any) -> Judge:
    """Build a judge from config strings, e.g. make_judge("safety", "refusal_proxy")."""
    return judge_class(kind, name)(**options)
