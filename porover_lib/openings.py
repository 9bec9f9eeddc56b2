"""Training on the decision: answers cut to their first tokens, with no end of turn after them.

Whether a student refuses or answers shows in an answer's first few tokens ("I can't ..." against "To
kill a process ..."), a few percent of a whole answer's loss. Cut each answer to its opening, so that the
loss falls on the decision, and leave its end-of-turn out, so that no early end is taught: the model still
writes full answers, which it learnt before (the diagnostic in issue 31 found that cutting answers *with* an
end of turn taught ten-word answers). Works on token ids the trainers have already built, so the chat template,
the prompt and the tokenisation stay exactly TRL's:

* SFT: examples of input_ids + labels (-100 = no loss; `derta.mle_example` and its kin) keep their prompt
  and the first `k` labelled answer tokens before any end token;
* DPO family: TRL's tokenised rows (`prompt_ids`, `chosen_ids`, `rejected_ids`) keep the first `k` tokens
  of each side before any end token, both sides cut alike.
"""
from __future__ import annotations

from .derta import IGNORE_INDEX


def opening(ids: list[int], k: int, stop_ids: set[int]) -> list[int]:
    """The first `k` tokens of a completion, cut before its first end token (end of turn, EOS)."""
    end = next((i for i, t in enumerate(ids) if t in stop_ids), len(ids))
    return list(ids[:min(k, end)])


def cut_example(example: dict, k: int, stop_ids: set[int]) -> dict:
    """An SFT example (input_ids, labels) up to its `k`-th labelled token, never reaching a labelled end token.
    An example whose loss span opens with an end token (nothing to answer) is returned unchanged."""
    labels, kept, cut = example["labels"], 0, len(example["labels"])
    for i, label in enumerate(labels):
        if label == IGNORE_INDEX:
            continue
        if label in stop_ids or kept == k:
            cut = i
            break
        kept += 1
    if kept == 0:
        return example
    return {**example, "input_ids": example["input_ids"][:cut], "labels": labels[:cut]}


def cut_pair(row: dict, k: int, stop_ids: set[int]) -> dict:
    """A tokenised preference row with both completions cut to their openings."""
    return {**row, "chosen_ids": opening(row["chosen_ids"], k, stop_ids),
            "rejected_ids": opening(row["rejected_ids"], k, stop_ids)}
