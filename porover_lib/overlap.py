"""Text overlap between prompt sets: a training prompt that an evaluation set also holds leaks the evaluation.

Ids cannot tell (hub sets number their rows per config, and OR-Bench-Hard-1K was selected *from*
OR-Bench-80K), so prompts are compared by their text. Two prompts overlap when, lower-cased and cut into
words of letters, digits and apostrophes, their word sets have Jaccard >= JACCARD or they share a run of
RUN consecutive words; identical texts always do. The same rule keeps the embedded sets apart from the
benchmark files (tests/novelty.py).
"""
from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable

JACCARD = 0.7
RUN = 8
WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower().replace("\u2019", "'"))


class Index:
    """Finds, for a query prompt, indexed prompts with word-set Jaccard >= JACCARD or a shared RUN-word run.

    Jaccard candidates come from prefix filtering: with each word set ordered rarest word first, two sets
    with Jaccard >= t share a word among the first |x| - ceil(t |x|) + 1 words of each, so only those
    words are indexed and looked up; every candidate is then checked exactly.
    """

    def __init__(self, prompts: Iterable[tuple[str, str]]):
        self.items = []  # (label, text, word set)
        self.freq: dict[str, int] = defaultdict(int)
        self.by_prefix: dict[str, set[int]] = defaultdict(set)
        self.by_run: dict[tuple[str, ...], set[int]] = defaultdict(set)
        for label, text in prompts:
            w = words(text)
            self.items.append((label, text, set(w)))
            for word in set(w):
                self.freq[word] += 1
            for i in range(len(w) - RUN + 1):
                self.by_run[tuple(w[i:i + RUN])].add(len(self.items) - 1)
        for k, (_, _, ws) in enumerate(self.items):
            for word in self._prefix(ws):
                self.by_prefix[word].add(k)

    def _prefix(self, ws: set[str]) -> list[str]:
        ordered = sorted(ws, key=lambda word: (self.freq.get(word, 0), word))
        return ordered[:len(ordered) - math.ceil(JACCARD * len(ordered)) + 1]

    def matches(self, text: str) -> list[tuple[str, str, str]]:
        """(label, matched prompt, why) for every near duplicate of `text`."""
        w = words(text)
        ws = set(w)
        hits = {}
        for k in {k for word in self._prefix(ws) for k in self.by_prefix.get(word, ())}:
            other = self.items[k][2]
            jaccard = len(ws & other) / len(ws | other)
            if jaccard >= JACCARD:
                hits[k] = "identical text" if jaccard == 1.0 else f"word-set Jaccard {jaccard:.2f}"
        for i in range(len(w) - RUN + 1):
            for k in self.by_run.get(tuple(w[i:i + RUN]), ()):
                hits.setdefault(k, f"shares the {RUN}-word run {' '.join(w[i:i + RUN])!r}")
        return [(self.items[k][0], self.items[k][1], why) for k, why in sorted(hits.items())]


def overlapping(prompts: list[str], others: Iterable[str]) -> list[tuple[int, str, str]]:
    """(position in `prompts`, the other prompt it overlaps, why) for each prompt that one of `others` holds."""
    index = Index((text, text) for text in others)
    out = []
    for i, text in enumerate(prompts):
        hits = index.matches(text)
        if hits:
            out.append((i, hits[0][1], hits[0][2]))
    return out
