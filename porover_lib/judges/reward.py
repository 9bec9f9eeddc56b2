"""Reward judges: a sequence-classification reward model, and an offline heuristic."""
from __future__ import annotations

import re
from typing import Any

from ..config import ModelParams
from .base import Judgement, check_pairs, load_judge_model, model_spec, pad_id

# Reward models whose modelling code lives in their hub repository.
_REMOTE_CODE_MODELS = ("armorm",)


class HFRewardModelJudge:
    """A sequence-classification reward model (e.g. Skywork-Reward-Llama-3.1-8B-v0.2):
    score = logits[0] of [user prompt, assistant response] in the model's chat template.

    ArmoRM (RLHFlow/ArmoRM-Llama3-8B-v0.1) runs custom code from its repository, so it is
    loaded only when ``trust_remote_code=True`` is passed explicitly; its ``score`` output
    (the gated preference score) is used instead of the raw logits.
    """

    name = "hf_reward_model"
    kind = "reward"
    roles = None
    default_model = "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2"

    def __init__(self, model: ModelParams | str | Any = default_model, *, tokenizer: Any = None,
                 batch_size: int = 8, max_length: int | None = None):
        if isinstance(model, (ModelParams, str)):
            spec = model_spec(model)
            if any(k in spec.name.lower() for k in _REMOTE_CODE_MODELS) and not spec.trust_remote_code:
                raise ValueError(
                    f"reward model {spec.name!r} runs custom code from its repository; set trust_remote_code=True "
                    "(CLI: --trust-remote-code, params: model.trust_remote_code) if you trust it")
        self.model, self.tokenizer = load_judge_model(model, tokenizer, "classifier")
        if self.model.config.pad_token_id is None:  # needed to find each row's last token in a padded batch
            self.model.config.pad_token_id = pad_id(self.tokenizer)
        self.batch_size, self.max_length = batch_size, max_length

    def judge(self, prompts: list[str], responses: list[str]) -> list[Judgement]:
        check_pairs(prompts, responses)
        texts = [
            self.tokenizer.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}], tokenize=False)
            for p, r in zip(prompts, responses)
        ]
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            scores += self._score(texts[start : start + self.batch_size])
        return [Judgement("scored", s, "reward model logit", self.name) for s in scores]

    def _score(self, texts: list[str]) -> list[float]:
        import torch

        enc = self.tokenizer(texts, padding=True, truncation=self.max_length is not None, max_length=self.max_length,
                             padding_side="right", add_special_tokens=False, return_tensors="pt")
        with torch.inference_mode():
            out = self.model(**enc.to(self.model.device))
        score = getattr(out, "score", None)
        values = score if score is not None else out.logits
        return values.float().reshape(len(texts), -1)[:, 0].tolist()


class HeuristicRewardJudge:
    """Offline reward for picking among completions: fluent, non-repetitive, finished.

    score = base - REPETITION_WEIGHT * repeated_trigram_share - TRUNCATION_PENALTY * truncated

    * base: with a scoring causal LM (model params or a name, or a ``model`` object + ``tokenizer``),
      the mean log-likelihood per token of the response after the chat-templated prompt,
      floored at LOGLIK_FLOOR; with no model, a text-only length term min(words, 100) / 100
      (the name then says "text-only").
    * repeated_trigram_share: share of word 3-grams that already occurred earlier.
    * truncated: taken from ``truncated=`` when given (e.g. finish_reason == "length"), else
      guessed: the text does not end with sentence punctuation, a bracket/quote or a code fence.
    * empty or whitespace-only responses get EMPTY_SCORE, below any other score.
    """

    kind = "reward"
    roles = None
    REPETITION_WEIGHT = 2.0
    TRUNCATION_PENALTY = 1.0
    LOGLIK_FLOOR = -20.0
    EMPTY_SCORE = -100.0
    _FINISHED = re.compile(r"(?:[.!?…。！？\"')\]}*>]|```)\s*$")

    def __init__(self, model: ModelParams | str | Any = None, tokenizer: Any = None, batch_size: int = 16):
        if model is not None:
            model, tokenizer = load_judge_model(model, tokenizer, "causal")
        elif tokenizer is not None:
            raise ValueError("heuristic reward got a tokenizer but no model; pass both, or neither for text-only")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.name = "heuristic_reward" if model is not None else "heuristic_reward(text-only)"

    def judge(self, prompts: list[str], responses: list[str], truncated: list[bool] | None = None) -> list[Judgement]:
        check_pairs(prompts, responses)
        if truncated is not None and len(truncated) != len(responses):
            raise ValueError(f"got {len(truncated)} truncated flags for {len(responses)} responses")
        responses = [r or "" for r in responses]
        scored = [i for i, r in enumerate(responses) if r.strip()]
        logliks = {}
        if self.model is not None:
            logliks = dict(zip(scored, self._mean_logliks([prompts[i] for i in scored], [responses[i] for i in scored])))
        out = []
        for i, response in enumerate(responses):
            if not response.strip():
                out.append(Judgement("scored", self.EMPTY_SCORE, "empty response", self.name))
                continue
            cut = truncated[i] if truncated is not None else not self._FINISHED.search(response)
            repetition = repeated_trigram_share(response)
            if self.model is not None:
                base, base_name = max(logliks[i], self.LOGLIK_FLOOR), "loglik"
            else:
                base, base_name = min(len(response.split()), 100) / 100, "length"
            score = base - self.REPETITION_WEIGHT * repetition - self.TRUNCATION_PENALTY * float(cut)
            reason = f"{base_name}={base:.3f} repetition={repetition:.2f} truncated={bool(cut)}"
            out.append(Judgement("scored", score, reason, self.name))
        return out

    def _mean_logliks(self, prompts: list[str], responses: list[str]) -> list[float]:
        """Mean log-likelihood per response token after its chat-templated prompt, in length-sorted batches.

        Right padding keeps every real token at its unpadded position, so a row scores as it would
        alone; logits are computed only from the batch's earliest response position on.
        """
        import torch

        tok, device = self.tokenizer, self.model.device
        contexts = [tok(tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                tokenize=False), add_special_tokens=False)["input_ids"] for p in prompts]
        answers = [tok(r, add_special_tokens=False)["input_ids"] for r in responses]
        order = sorted(range(len(answers)), key=lambda i: len(contexts[i]) + len(answers[i]))
        out = [0.0] * len(answers)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            seqs = [contexts[i] + answers[i] for i in rows]
            width = max(map(len, seqs))
            ids = torch.full((len(rows), width), pad_id(tok), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, seq in enumerate(seqs):
                ids[r, : len(seq)], mask[r, : len(seq)] = torch.tensor(seq), 1
            first = min(len(contexts[i]) for i in rows) - 1  # logit of the earliest response token
            with torch.inference_mode():
                logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device),
                                    logits_to_keep=width - first).logits
            for r, i in enumerate(rows):  # fp32 one row at a time: a 128k vocabulary makes a batch large
                at = torch.arange(len(answers[i]), device=device) + len(contexts[i]) - 1 - first
                targets = torch.tensor(answers[i], device=device)[:, None]
                out[i] = float(logits[r, at].float().log_softmax(-1).gather(1, targets).mean())
        return out


def repeated_trigram_share(text: str) -> float:
    """Share of word 3-grams that repeat an earlier one (0 = none, ->1 = a loop)."""
    words = text.lower().split()
    grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0
