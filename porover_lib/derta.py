"""DeRTa training examples (Yuan et al. 2024, "Refuse Whenever You Feel Unsafe"), as token ids + labels.

DeRTa changes only *what* is trained on, so it enters TRL's `SFTTrainer` as a pre-tokenised dataset
(`input_ids`, `labels`; -100 = no loss) padded by TRL's own collator. Two kinds of harmful example:

* **MLE with a harmful response prefix** -- the assistant turn is `<first k words of a harmful
  response> <safe response>`, k uniform in 1..len(words)-2, none for a `no_prefix_share` of rows (a
  third, as in the paper's code). The prefix is input only: labels start at the first token of the
  safe response.
* **Reinforced Transition Optimisation (RTO)** -- the assistant turn is the full harmful response and
  every label over it is the first token of the safe response. Labels are set on every token of the
  harmful response *and* on the token right after it (the end-of-turn token). A causal LM predicts the
  label at position t from position t-1, so the model learns "refuse next" from the last prompt
  token (before any harm) and from every harmful token, the last one included -- as in the paper's code,
  which relabels the whole response span, EOS included. With `rto_positions` = k, only k positions
  drawn at random carry that label (None, the default: every position, as in the paper).

  The target is the token that the prefix-MLE examples continue: the safe response's first token as it
  opens the turn (predicted from the last prompt token) and as it follows a harmful word after a space
  (everywhere else). A transition token that no safe response starts with is never continued in
  training, and a small model then repeats it ("SorrySorrySorry..."), so a fixed `refusal_text` must
  open every safe response.

Every other row is an ordinary example: loss on the assistant turn and its end-of-turn tokens, the
same labels TRL builds for a prompt/completion row. Sequences are rendered with the student's own chat
template and tokenised once; spans are located with the tokenizer's character offsets, so the token
sequence is exactly what the template produces.
"""
from __future__ import annotations

import random
import re

from .config import SFTParams

IGNORE_INDEX = -100


def split_row(row: dict) -> tuple[list[dict], str]:
    """(prompt messages, assistant answer) of an SFT row whose last message is the assistant's."""
    messages = row.get("messages")
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError(f"SFT row {row.get('id')!r}: 'messages' must end with an assistant message, "
                         f"got roles {[m.get('role') for m in messages or []]}")
    return [dict(m) for m in messages[:-1]], messages[-1]["content"]


def refusal_token_id(tokenizer, refusal_text: str) -> int:
    """The first token of `refusal_text` as it starts an assistant turn."""
    ids = tokenizer.encode(refusal_text, add_special_tokens=False)
    if not ids:
        raise ValueError(f"refusal text {refusal_text!r} encodes to no tokens")
    return ids[0]


def after_word_token_id(tokenizer, text: str) -> int:
    """The first token of `text` where it follows a word and a space, as in a prefix-MLE example: the token
    that reaches into `text`, read from the tokenizer's offsets in context. Encoding " " + text alone is not
    the same: a SentencePiece/Metaspace tokenizer makes the lone space a "▁" piece of its own there."""
    probe = "word " + text.lstrip()
    enc = tokenizer(probe, add_special_tokens=False, return_offsets_mapping=True)
    start = len("word ")
    for token, (_, end) in zip(enc["input_ids"], enc["offset_mapping"]):
        if end > start:
            return token
    raise ValueError(f"refusal text {text!r} encodes to no tokens after a word")


def transition_ids(tokenizer, refusal_text: str) -> tuple[int, int]:
    """RTO's targets: the first token of `refusal_text` opening the turn, and after a harmful word
    (joined by a space, exactly as a prefix-MLE example joins prefix and safe response)."""
    return refusal_token_id(tokenizer, refusal_text), after_word_token_id(tokenizer, refusal_text)


def harmful_prefix(harmful: str, rng: random.Random, no_prefix_share: float) -> tuple[str, int]:
    """A prefix of whole words of `harmful` (original spacing kept) and its word count.

    As in DeRTa's code: a `no_prefix_share` of calls (a third there) return no prefix; otherwise the count
    is uniform in 1..len(words)-2, so a prefix is never empty and never (nearly) the whole response.
    """
    words = list(re.finditer(r"\S+", harmful))
    if rng.random() < no_prefix_share or len(words) < 3:
        return "", 0
    k = rng.randint(1, len(words) - 2)
    return harmful[: words[k - 1].end()], k


def _render(tokenizer, prompt: list[dict], content: str) -> tuple[list[int], list[tuple[int, int]], int]:
    """Token ids and character offsets of prompt + assistant `content`, and where `content` starts."""
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": content}], tokenize=False)
    start = full_text.find(content, len(prompt_text)) if full_text.startswith(prompt_text) else -1
    if start < 0:
        raise ValueError("the chat template does not render the assistant text verbatim after the generation "
                         "prompt, so the loss span cannot be located; DeRTa needs a template that does")
    enc = tokenizer(full_text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]], start


def mle_example(tokenizer, prompt: list[dict], answer: str, prefix: str = "") -> dict:
    """Loss on `answer` and the end-of-turn tokens; `prefix` (if any) sits before it, unlabelled."""
    content = f"{prefix} {answer}" if prefix else answer
    ids, offsets, start = _render(tokenizer, prompt, content)
    loss_from = start + (len(prefix) + 1 if prefix else 0)  # first character of the answer
    # a token belongs to the answer if it ends inside it (" I" = joining space + first answer char)
    labels = [tok if end > loss_from else IGNORE_INDEX for tok, (_, end) in zip(ids, offsets)]
    return {"input_ids": ids, "labels": labels}


def rto_example(tokenizer, prompt: list[dict], harmful: str, refusal_ids: tuple[int, int],
                positions: int | None = None, rng: random.Random | None = None) -> dict:
    """Labels: the opening refusal token on the first harmful-response token, the mid-text one on every
    later harmful token and on the token after the response (see module doc); with `positions`, only
    that many of those positions, drawn with `rng`."""
    ids, offsets, start = _render(tokenizer, prompt, harmful)
    end = start + len(harmful)
    span = [i for i, (a, b) in enumerate(offsets) if b > start and a < end]
    if not span or span[-1] + 1 >= len(ids):
        raise ValueError("RTO needs a non-empty harmful response followed by an end-of-turn token")
    labelled = span + [span[-1] + 1]
    if positions is not None and positions < len(labelled):
        labelled = sorted((rng or random.Random(0)).sample(labelled, positions))
    labels = [IGNORE_INDEX] * len(ids)
    opening, mid = refusal_ids
    for i in labelled:
        labels[i] = opening if i == span[0] else mid
    return {"input_ids": ids, "labels": labels}


def build_derta_examples(rows: list[dict], tokenizer, params: SFTParams, seed: int) -> list[dict]:
    """Tokenised DeRTa training examples: one per row, plus RTO examples for harmful rows.

    A harmful row with a `harmful_response` gives one prefix-MLE example (safe response after a
    random harmful prefix) and `rto_share` RTO examples on average (the fractional part is drawn).
    Other rows train normally. Each example: input_ids, labels, kind ("sft"|"prefix"|"rto"),
    source_id, prefix_words. Deterministic for a given seed.
    """
    derta = params.derta
    rng = random.Random(seed)
    whole, frac = divmod(derta.rto_share, 1.0)
    fixed_refusal = None if derta.refusal_text is None else transition_ids(tokenizer, derta.refusal_text)
    if fixed_refusal is not None:
        _check_refusal_text(rows, tokenizer, derta.refusal_text, fixed_refusal[0])
    out = []
    for row in rows:
        prompt, answer = split_row(row)
        harmful = row.get("harmful_response") if row.get("role") == "harmful" else None
        meta = {"source_id": row.get("id")}
        if not harmful:
            out.append({**mle_example(tokenizer, prompt, answer), "kind": "sft", "prefix_words": 0, **meta})
            continue
        prefix, k = harmful_prefix(harmful, rng, derta.no_prefix_share)
        out.append({**mle_example(tokenizer, prompt, answer, prefix), "kind": "prefix", "prefix_words": k, **meta})
        refusal = fixed_refusal or transition_ids(tokenizer, answer)
        for _ in range(int(whole) + (rng.random() < frac)):
            example = rto_example(tokenizer, prompt, harmful, refusal, derta.rto_positions, rng)
            out.append({**example, "kind": "rto", "prefix_words": 0, **meta})
    return out


def labelled_tokens(examples: list[dict]) -> dict[str, int]:
    """Tokens carrying a label, per kind of example ("sft", "prefix", "rto"): each kind's share of the loss.
    RTO labels every position of a harmful answer with one token, so its share grows with the answers' length
    while the other kinds' shrink when they are cut to their openings."""
    counts: dict[str, int] = {}
    for e in examples:
        counts[e["kind"]] = counts.get(e["kind"], 0) + sum(label != IGNORE_INDEX for label in e["labels"])
    return counts


def _check_refusal_text(rows: list[dict], tokenizer, refusal_text: str, opening: int) -> None:
    """A fixed RTO target must open every safe response, or RTO trains a token nothing continues."""
    answers = [split_row(r)[1] for r in rows if r.get("role") == "harmful" and r.get("harmful_response")]
    off = [a for a in answers if refusal_token_id(tokenizer, a) != opening]
    if off:
        raise ValueError(f"sft.derta.refusal_text {refusal_text!r} does not open {len(off)} of the {len(answers)} "
                         f"safe responses (e.g. {off[0][:60]!r}); RTO would teach a transition token that no "
                         "training example continues. Set sft.derta.refusal_text: null to use each response's "
                         "own first token")
