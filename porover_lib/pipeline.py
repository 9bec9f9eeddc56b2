"""The glue each notebook calls: one function per step of the method, wiring params to the modules.

Notebooks stay thin (a parameters cell, one call per step, a table or a plot); everything that
decides what happens lives here or in the module that owns the concern.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .config import ModelParams, Params
from .generation import make_backend, overgenerate
from .io import read_jsonl, write_jsonl
from .prompts import PromptRecord, load_sets
from .training import versions  # noqa: F401  (provenance for metrics.json)

log = logging.getLogger(__name__)
JUDGE_COLUMNS = ("refusal_label", "refusal_score", "refusal_reason", "refusal_judge", "safety_label",
                 "safety_score", "safety_reason", "safety_judge", "reward", "reward_judge")


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def write_json(path: str | Path, obj) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


# ------------------------------------------------------------------------------------ generation

class Backends:
    """Backends by teacher name, loaded once per notebook (a model is not loaded twice)."""

    def __init__(self, params: Params):
        self.params, self._cache = params, {}

    def __call__(self, name: str):
        if name not in self._cache:
            self._cache[name] = make_backend(self.params.teacher(name))
        return self._cache[name]


def generate_rows(records: list[PromptRecord], backend, sampling, out_path: str | Path, seed: int,
                  extra: dict | None = None) -> pd.DataFrame:
    """Resumable generation into `out_path` (see generation.overgenerate), restarting on changed settings."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    return overgenerate(records, backend, sampling, out_path, seed, extra=extra)


def overgenerate_sets(params: Params, out_dir: str | Path) -> pd.DataFrame:
    """Stage 01: every configured set, every teacher of that set, N completions per prompt."""
    backends = Backends(params)
    sets = load_sets(params, params.overgenerate.sets)
    frames = []
    for set_name, records in sets.items():
        for teacher in params.overgen_teachers(set_name):
            path = Path(out_dir) / f"{set_name}__{teacher}.jsonl"
            frames.append(generate_rows(records, backends(teacher), params.overgenerate.sampling, path,
                                        params.seed, extra={"set": set_name, "teacher": teacher}))
    return pd.concat(frames, ignore_index=True)


def read_rows(folder: str | Path, pattern: str = "*.jsonl") -> pd.DataFrame:
    files = sorted(Path(folder).glob(pattern))
    if not files:
        raise FileNotFoundError(f"{folder}: no {pattern} files; run the previous stage first")
    return pd.DataFrame([row for f in files for row in read_jsonl(f)])


def generation_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per set and teacher: prompts, completions, mean length, share cut off by max_new_tokens."""
    return (rows.groupby(["set", "teacher", "backend"], sort=False)
            .agg(prompts=("prompt_id", "nunique"), completions=("completion", "size"),
                 mean_tokens=("completion_tokens", "mean"),
                 truncated=("finish_reason", lambda s: float((s == "length").mean())))
            .reset_index())


# ------------------------------------------------------------------------------------ judging

def build_judges(params: Params, backends: Backends | None = None) -> dict:
    """The refusal, safety and reward judges the profile names, with their models loaded once."""
    from .judges import make_judge
    from .models import load_model, load_tokenizer

    backends = backends or Backends(params)

    def options(spec, kind: str) -> dict:
        opts = {}
        if spec.backend:
            opts["backend"] = backends(spec.backend)
        if spec.name == "heuristic":  # scores log-likelihood under a small LM: the student by default
            model_spec = spec.model or params.student
            opts.update(model=load_model(model_spec), tokenizer=load_tokenizer(model_spec, padding_side="right"))
        elif spec.model is not None:
            opts.update(model=spec.model.name, revision=spec.model.revision,
                        trust_remote_code=spec.model.trust_remote_code, dtype=spec.model.dtype,
                        device=spec.model.device)
        return opts

    refusal = make_judge("refusal", params.judges.refusal.name, **options(params.judges.refusal, "refusal"))
    safety_opts = options(params.judges.safety, "safety")
    if params.judges.safety.name == "refusal_proxy":
        safety_opts["refusal_judge"] = refusal
    safety = make_judge("safety", params.judges.safety.name, **safety_opts)
    reward = make_judge("reward", params.judges.reward.name, **options(params.judges.reward, "reward"))
    return {"refusal": refusal, "safety": safety, "reward": reward}


def judge_rows(rows: pd.DataFrame, judges: dict, response_column: str = "completion") -> pd.DataFrame:
    """Every judge's label, score and reason on every row.

    The `refusal_proxy` safety judge only has meaning on harmful prompts (safe iff refused); on benign
    prompts it would call every helpful answer unsafe, so there the verdict is `safe` and says why.
    """
    out = rows.copy()
    prompts, responses = out["prompt"].tolist(), out[response_column].fillna("").tolist()
    for kind in ("refusal", "safety", "reward"):
        judge = judges[kind]
        todo = np.arange(len(out))
        if kind == "safety" and judge.name.startswith("refusal_proxy"):
            todo = np.flatnonzero(out["role"].to_numpy() == "harmful")
        verdicts = judge.judge([prompts[i] for i in todo], [responses[i] for i in todo]) if len(todo) else []
        labels = ["safe"] * len(out) if kind == "safety" else [None] * len(out)
        scores = [0.0] * len(out) if kind == "safety" else [None] * len(out)
        reasons = ["benign prompt: the refusal proxy judges harmful prompts only"] * len(out)
        names = [judge.name] * len(out)
        for i, v in zip(todo, verdicts):
            labels[i], scores[i], reasons[i], names[i] = v.label, v.score, v.reason, v.judge
        if kind == "reward":
            out["reward"], out["reward_judge"] = scores, names
        else:
            out[f"{kind}_label"], out[f"{kind}_score"] = labels, scores
            out[f"{kind}_reason"], out[f"{kind}_judge"] = reasons, names
    return out


def records(df: pd.DataFrame) -> list[dict]:
    """DataFrame rows as plain dicts (NaN -> None) for the selection and preference code."""
    return json.loads(df.to_json(orient="records"))


def teacher_completions(params: Params, sets: dict[str, list[PromptRecord]], judged_path: str | Path,
                        out_dir: str | Path, judges: dict) -> pd.DataFrame:
    """Judged teacher completions for the preference prompts: stage 01's where it wrote them,
    otherwise new ones from `preference.teacher`."""
    wanted = {r.id for records_ in sets.values() for r in records_}
    have = pd.DataFrame(read_jsonl(judged_path)) if Path(judged_path).is_file() else pd.DataFrame()
    frames = [have[have["prompt_id"].isin(wanted)]] if len(have) else []
    covered = set(frames[0]["prompt_id"]) if frames else set()
    backends = Backends(params)
    for set_name, records_ in sets.items():
        todo = [r for r in records_ if r.id not in covered]
        if not todo:
            continue
        if params.preference.teacher is None:
            raise ValueError(f"preference.sets: {len(todo)} prompts of {set_name!r} were not overgenerated in "
                             "stage 01 and preference.teacher is not set to write their chosen answers")
        rows = generate_rows(todo, backends(params.preference.teacher), params.overgenerate.sampling,
                             Path(out_dir) / f"teacher__{set_name}.jsonl", params.seed,
                             extra={"set": set_name, "teacher": params.preference.teacher})
        frames.append(judge_rows(rows, judges))
    return pd.concat(frames, ignore_index=True)


# ------------------------------------------------------------------------------------ checkpoints

def fingerprint(*parts) -> str:
    """A short stable hash of settings and files: a cache key that changes when any of them does."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path) and part.is_dir():
            for f in sorted(part.rglob("*")):
                if f.is_file() and f.suffix in (".safetensors", ".json", ".bin"):
                    h.update(f.name.encode())
                    h.update(f.read_bytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:12]


def checkpoint_dirs(params: Params, sft_dir: str | Path = "checkpoints/sft",
                    po_dir: str | Path = "checkpoints/po") -> dict[str, Path | None]:
    """Name -> adapter folder: `base` is the untrained student, `sft` the SFT adapter, any other
    name a preference-optimisation variant under `po_dir`."""
    out = {}
    for name in params.evaluate.checkpoints:
        if name == "base":
            out[name] = None
        elif name == "sft":
            out[name] = Path(sft_dir)
        else:
            if name not in params.po.variants:
                raise ValueError(f"evaluate.checkpoints: {name!r} is neither base, sft nor a po.variants name "
                                 f"({sorted(params.po.variants)})")
            out[name] = Path(po_dir) / name
        if out[name] is not None and not out[name].is_dir():
            raise FileNotFoundError(f"checkpoint {name!r}: {out[name]} not found; run its training stage first")
    return out


def load_checkpoint(student: ModelParams, adapter_dir: Path | None):
    """(model, tokenizer) for generation: the base student, or the student with an adapter merged in."""
    from .models import load_model, load_tokenizer

    if adapter_dir is None:
        return load_model(student), load_tokenizer(student)
    from .training import load_trained

    return load_trained(student, adapter_dir)


def checkpoint_backend(student: ModelParams, adapter_dir: Path | None, name: str):
    from .generation import HFBackend

    model, tokenizer = load_checkpoint(student, adapter_dir)
    model.eval()
    tokenizer.padding_side = "left"
    return HFBackend(model, tokenizer, model_name=f"{student.name}+{name}" if adapter_dir else student.name,
                     revision=student.revision)


def write_rows(path: str | Path, rows) -> Path:
    rows = records(rows) if isinstance(rows, pd.DataFrame) else rows
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, rows)
    return path



def evaluation_responses(params: Params, checkpoints: dict[str, Path | None], sets: dict[str, list[PromptRecord]],
                         cache_dir: str | Path) -> pd.DataFrame:
    """Responses per (checkpoint, prompt set), generated once and cached.

    The cache key covers the student, the adapter's files, the sampling settings and the seed, so a
    retrained checkpoint regenerates and an added checkpoint generates only its own responses.
    """
    sampling, frames = params.evaluate.sampling, []
    for name, adapter in checkpoints.items():
        key = fingerprint(params.student.model_dump(), adapter, sampling.model_dump(), params.seed)
        paths = {s: Path(cache_dir) / f"{name}__{s}__{key}.jsonl" for s in sets}
        missing = [s for s, path in paths.items() if not _complete(path, sets[s], sampling.n)]
        backend = checkpoint_backend(params.student, adapter, name) if missing else None
        for set_name, records_ in sets.items():
            if set_name in missing:
                generate_rows(records_, backend, sampling, paths[set_name], params.seed,
                              extra={"set": set_name, "checkpoint": name})
            frames.append(pd.DataFrame(read_jsonl(paths[set_name])))
        del backend
    return pd.concat(frames, ignore_index=True)


def _complete(path: Path, records_: list[PromptRecord], n: int) -> bool:
    if not path.is_file():
        return False
    done = {(r["prompt_id"], r["sample_index"]) for r in read_jsonl(path)}
    return all((r.id, i) in done for r in records_ for i in range(n))
