"""Judges' verdicts that survive a crash: each chunk is appended (fsynced) as it is judged, and a rerun
judges only what is missing.

Stages 02, 04 and 06 judge every row with up to three judges; on the paper profile that is hundreds of
thousands of rows through 8B models, hours that a crash at the end would otherwise throw away. A
verdict is keyed by the judged text (prompt and response) and stored in one file per judge setting
(`<kind>__<fingerprint of the judge's params>.jsonl`), so a changed judge, model or revision starts a
file of its own and a changed response gets a new key: nothing stale is ever read back, nothing is
judged twice, and a torn last line (a kill inside a write) is cut off before the next append.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .io import append_jsonl, read_jsonl, repair_jsonl_tail

CHUNK = 256  # verdicts per append: what a kill can lose at most (and judge again)


def text_key(prompt: str, response: str) -> str:
    return hashlib.sha256(json.dumps([prompt, response]).encode()).hexdigest()[:24]


class VerdictStore:
    """The verdicts of one judge setting under `folder` (None: kept in memory only)."""

    def __init__(self, folder: str | Path | None, kind: str, setting: dict):
        digest = hashlib.sha256(json.dumps(setting, sort_keys=True, default=str).encode()).hexdigest()[:12]
        self.path = Path(folder) / f"{kind}__{digest}.jsonl" if folder is not None else None
        self.verdicts: dict[str, dict] = {}
        if self.path is not None and self.path.is_file():
            repair_jsonl_tail(self.path)
            for row in read_jsonl(self.path):
                self.verdicts.setdefault(row["key"], row)  # a key is written once; first wins if ever twice

    def missing(self, keys: list[str]) -> list[str]:
        """Keys without a verdict, each once, in order."""
        return [k for k in dict.fromkeys(keys) if k not in self.verdicts]

    def add(self, keys: list[str], judgements) -> None:
        rows = [{"key": k, "label": j.label, "score": j.score, "reason": j.reason, "judge": j.judge}
                for k, j in zip(keys, judgements)]
        if self.path is not None:
            append_jsonl(self.path, rows)
        for row in rows:
            self.verdicts.setdefault(row["key"], row)

    def as_judge(self, kind: str, name: str):
        """A judge that answers from the stored verdicts: the refusal proxy reads the refusal pass's verdicts
        rather than judging every harmful answer a second time."""
        return StoredJudge(self, kind, name)

    def judge_missing(self, judge, keys: list[str], texts: dict[str, tuple[str, str]], progress=None) -> int:
        """Judge every block of CHUNK distinct keys that lacks a verdict and store the block's missing ones;
        how many were stored. Blocks are cut from all of `keys`, not from the missing ones, and judged whole,
        so a batched judge sees the same batches after a crash as without one (the same scores, bit for bit)."""
        distinct, stored = list(dict.fromkeys(keys)), 0
        for start in range(0, len(distinct), CHUNK):
            block = distinct[start:start + CHUNK]
            missing = [k for k in block if k not in self.verdicts]
            if not missing:
                continue
            verdicts = dict(zip(block, judge.judge([texts[k][0] for k in block], [texts[k][1] for k in block])))
            self.add(missing, [verdicts[k] for k in missing])
            stored += len(missing)
            if progress is not None:
                progress(len(missing))
        return stored

class StoredJudge:
    """Stored verdicts behind the judge interface; a pair without one is an error, never a silent default."""

    roles = None

    def __init__(self, store: VerdictStore, kind: str, name: str):
        self.store, self.kind, self.name = store, kind, name

    def judge(self, prompts: list[str], responses: list[str]):
        from .judges.base import Judgement

        out = []
        for prompt, response in zip(prompts, responses):
            v = self.store.verdicts.get(text_key(prompt, response))
            if v is None:
                raise KeyError(f"no stored {self.kind} verdict for the response {response[:60]!r}")
            out.append(Judgement(v["label"], v["score"], v["reason"], v["judge"]))
        return out
