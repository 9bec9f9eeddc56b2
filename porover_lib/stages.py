"""The glue each notebook calls, in stage order 01 -> 06: params in, files and tables out.

Notebooks stay thin (a parameters cell, one call per step, a table or a plot); what a step decides
lives in the module that owns it (generation, judges, selection, training, preference, metrics).
Here: 01 overgeneration, 02 judging (one judge model in memory at a time), 04 student samples and
teacher answers, 06 evaluated checkpoints and their cached responses. 03 and 05 call `training`
directly; notebook set-up (quiet libraries, seed) is in `notebook`.
"""
from __future__ import annotations

import gc
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from .config import BackendParams, ModelParams, Params
from .generation import backend_model_name, make_backend, overgenerate
from .io import read_jsonl
from .prompts import PromptRecord, load_sets

JUDGE_KINDS = ("refusal", "safety", "reward")


def free_memory(backend=None) -> None:
    """Return a dropped model's memory now, before the next one loads (CUDA caches freed blocks); a
    backend that holds an engine of its own (vLLM) is closed first."""
    import torch

    if backend is not None and callable(getattr(backend, "close", None)):
        backend.close()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def generate_rows(records: list[PromptRecord], backend, sampling, out_path: str | Path, seed: int,
                  extra: dict | None = None) -> pd.DataFrame:
    """Resumable generation into `out_path` (see generation.overgenerate), restarting on changed settings."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    return overgenerate(records, backend, sampling, out_path, seed, extra=extra)


# ------------------------------------------------------------------------------------ 01 overgenerate

def overgen_path(out_dir: str | Path, set_name: str, teacher: str) -> Path:
    return Path(out_dir) / f"{set_name}__{teacher}.jsonl"


def overgenerate_sets(params: Params, out_dir: str | Path, dropped: dict | None = None) -> pd.DataFrame:
    """Every configured set, every teacher of that set, N completions per prompt; one teacher loaded at a time.
    `dropped` receives, per set, how many prompts overlapping an evaluation set were left out (load_sets)."""
    sets = load_sets(params, params.overgenerate.sets, dropped)
    frames = {}
    for teacher in dict.fromkeys(t for s in sets for t in params.overgen_teachers(s)):
        backend = make_backend(params.teacher(teacher))
        for set_name in (s for s in sets if teacher in params.overgen_teachers(s)):
            frames[set_name, teacher] = generate_rows(sets[set_name], backend, params.overgenerate.sampling_for(set_name),
                                                      overgen_path(out_dir, set_name, teacher), params.seed,
                                                      extra={"set": set_name, "teacher": teacher})
        free_memory(backend)
        del backend
    return pd.concat([frames[s, t] for s in sets for t in params.overgen_teachers(s)], ignore_index=True)


def overgenerated_rows(params: Params, out_dir: str | Path) -> pd.DataFrame:
    """Stage 01's rows of this profile only: the files its sets and teachers write, the rows of its prompts and
    sampling settings. Another profile's files in the same folder (`make reproduce`, then `PROFILE=paper`) and
    rows of prompts or settings this profile no longer has are never read; a missing or incomplete file says
    which stage to run."""
    sets = load_sets(params, params.overgenerate.sets)
    frames = []
    for set_name, records_ in sets.items():
        sampling = params.overgenerate.sampling_for(set_name)
        want = {"seed": params.seed, "temperature": sampling.temperature, "top_p": sampling.top_p,
                "max_new_tokens": sampling.max_new_tokens, "system_prompt": sampling.system_prompt}
        ids = {r.id for r in records_}
        for teacher in params.overgen_teachers(set_name):
            path = overgen_path(out_dir, set_name, teacher)
            model = backend_model_name(params.teacher(teacher))
            if not path.is_file():
                raise FileNotFoundError(f"{path}: not found; run stage 01 (dvc repro overgenerate) for this profile")
            rows = [r for r in read_jsonl(path) if r["prompt_id"] in ids and r["sample_index"] < sampling.n
                    and r.get("set") == set_name and r.get("teacher") == teacher and r.get("model") == model
                    and all(r.get(k) == v for k, v in want.items())]
            have = {(r["prompt_id"], r["sample_index"]) for r in rows}
            if len(have) < len(ids) * sampling.n:
                raise ValueError(f"{path}: {len(have)} of the {len(ids) * sampling.n} rows this profile needs "
                                 f"({len(ids)} prompts x n {sampling.n}, seed and sampling as in the profile); run "
                                 "stage 01 (dvc repro overgenerate) for this profile")
            frames.append(pd.DataFrame(rows))
    return pd.concat(frames, ignore_index=True)


def generation_summary(rows: pd.DataFrame, dropped: dict[str, dict[str, int]] | None = None) -> pd.DataFrame:
    """Per set and teacher: prompts, completions, mean length in tokens, share cut off by max_new_tokens,
    rows an API refused for good (`error`), and training prompts left out as an evaluation set holds them."""
    errors = rows["error"].notna() if "error" in rows else pd.Series(False, index=rows.index)
    out = (rows.assign(api_error=errors).groupby(["set", "teacher", "backend"], sort=False)
           .agg(prompts=("prompt_id", "nunique"), completions=("completion", "size"),
                **{"mean length (tokens)": ("completion_tokens", "mean"),
                   "share truncated": ("finish_reason", lambda s: float((s == "length").mean())),
                   "API errors": ("api_error", "sum")})
           .reset_index())
    if dropped:
        out["left out (in an eval set)"] = out["set"].map(
            {s: ", ".join(f"{n} in {e}" for e, n in by.items() if n) or "none" for s, by in dropped.items()}).fillna("")
    return out


# ------------------------------------------------------------------------------------ 02 select (judging)

def build_judge(params: Params, kind: str, refusal_judge=None):
    """The profile's judge of one kind, its model loaded. `refusal_judge` feeds the refusal_proxy safety judge."""
    from .judges import make_judge
    from .models import load_model, load_tokenizer

    spec = getattr(params.judges, kind)
    opts = {}
    if spec.backend:
        opts["backend"] = make_backend(params.teacher(spec.backend))
    if spec.name == "heuristic":  # scores log-likelihood under a small LM: the student by default
        model_spec = spec.model or params.student
        opts.update(model=load_model(model_spec), tokenizer=load_tokenizer(model_spec))
    elif spec.model is not None:
        opts["model"] = spec.model
    if spec.batch_size is not None:
        opts["batch_size"] = spec.batch_size
    if kind == "safety" and spec.name == "refusal_proxy":
        opts["refusal_judge"] = refusal_judge
    return make_judge(kind, spec.name, **opts)


def judge_setting(params: Params, kind: str) -> dict:
    """Everything a verdict of this kind depends on: the judge's params, the models and backend it reads,
    the inner refusal judge of refusal_proxy, and the judges' code. A change to any of them is a new setting,
    so stored verdicts (verdicts.py) are never read back for another one."""
    from . import judges

    spec = getattr(params.judges, kind)
    code = hashlib.sha256()
    for f in sorted(Path(judges.__file__).parent.glob("*.py")):
        code.update(f.read_bytes())
    setting = {"kind": kind, "judge": spec.model_dump(mode="json"), "code": code.hexdigest()[:12]}
    if spec.name == "heuristic":
        setting["model"] = (spec.model or params.student).model_dump(mode="json")
    if spec.backend:
        setting["backend"] = params.teacher(spec.backend).model_dump(mode="json", exclude={"api_key_env"})
    if kind == "safety" and spec.name == "refusal_proxy":
        setting["inner"] = judge_setting(params, "refusal")
    return setting


def judge_rows(rows: pd.DataFrame, params: Params, response_column: str = "completion",
               reward_roles: tuple[str, ...] | None = None, store: str | Path | None = None,
               content_column: str | None = None) -> pd.DataFrame:
    """Every judge's label, score and reason on every row it applies to (its `roles`).

    Judges run one after another, each freed before the next loads: the paper profile's Llama Guard
    and reward model (8B each) never share memory. The refusal_proxy safety judge wraps the refusal
    judge, so that one stays for the safety pass. Rows outside a safety judge's roles (benign prompts
    for the proxy, which would call every helpful answer unsafe) are `safe` and say why.
    `reward_roles` limits rewards to the rows a stage reads them on (None: every row); with no such
    row the reward judge is not loaded and `reward`, `reward_judge` stay empty.
    `store`: a folder where verdicts are kept as they are made (verdicts.py); a rerun after a crash judges
    only what is missing, and a judge whose every verdict is stored is not even loaded.
    `content_column`: what a judge that reads content (Llama Guard) judges instead of `response_column`, e.g.
    an attack's prefix and continuation together; refusal judges and the refusal proxy keep `response_column`.
    """
    from tqdm.auto import tqdm

    from .judges import judge_class
    from .verdicts import VerdictStore, text_key

    out = rows.copy()
    prompts, responses = out["prompt"].tolist(), out[response_column].fillna("").tolist()
    content = out[content_column].fillna("").tolist() if content_column else responses
    refusal = None
    for kind in JUDGE_KINDS:
        spec = getattr(params.judges, kind)
        limited = kind == "reward" and reward_roles is not None
        if limited and not out["role"].isin(reward_roles).any():
            out["reward"], out["reward_judge"] = None, None
            continue
        texts = content if kind == "safety" and spec.name != "refusal_proxy" else responses
        roles = reward_roles if limited else judge_class(kind, spec.name).roles
        todo = np.arange(len(out)) if roles is None else np.flatnonzero(out["role"].isin(roles))
        keys = [text_key(prompts[i], texts[i]) for i in todo]
        verdicts = VerdictStore(store, kind, judge_setting(params, kind))
        missing = verdicts.missing(keys)
        judge = None
        if missing or not len(todo):
            judge = build_judge(params, kind, refusal)
            pairs = {k: (prompts[i], texts[i]) for k, i in zip(keys, todo)}
            with tqdm(total=len(missing), desc=f"judge {kind}: {judge.name}", unit="row",
                      disable=len(missing) < 2 * 256) as bar:
                verdicts.judge_missing(judge, keys, pairs, bar.update)
        name = judge.name if judge is not None else verdicts.verdicts[keys[0]]["judge"]
        labels = ["safe"] * len(out) if kind == "safety" else [None] * len(out)
        scores = [0.0] * len(out) if kind == "safety" else [None] * len(out)
        reasons = [f"{name} judges {', '.join(roles or ())} prompts only"] * len(out)
        names = [name] * len(out)
        for i, k in zip(todo, keys):
            v = verdicts.verdicts[k]
            labels[i], scores[i], reasons[i], names[i] = v["label"], v["score"], v["reason"], v["judge"]
        if kind == "reward":
            out["reward"], out["reward_judge"] = scores, names
        else:
            out[f"{kind}_label"], out[f"{kind}_score"] = labels, scores
            out[f"{kind}_reason"], out[f"{kind}_judge"] = reasons, names
        del judge
        free_memory()
        if kind == "refusal" and params.judges.safety.name == "refusal_proxy":
            refusal = verdicts.as_judge("refusal", name)  # the proxy reads these verdicts, no second pass
    return out


def judge_names(judged: pd.DataFrame) -> dict[str, str]:
    """Which judge labelled each kind of verdict, as the judged rows record it."""
    return {kind: judged[f"{kind}_judge"].iloc[0] for kind in JUDGE_KINDS}


# ------------------------------------------------------------------------------------ 04 preference data

def student_samples(params: Params, sets: dict[str, list[PromptRecord]], sft_dir: str | Path,
                    out_dir: str | Path) -> pd.DataFrame:
    """M completions per prompt from the SFT student; the student is freed before any judge loads."""
    student = checkpoint_backend(params.student, Path(sft_dir), "sft", params.student_server)
    frames = [generate_rows(records_, student, params.preference.sampling, Path(out_dir) / f"student__{name}.jsonl",
                            params.seed, extra={"set": name, "teacher": "student"})
              for name, records_ in sets.items()]
    free_memory(student)
    del student
    return pd.concat(frames, ignore_index=True)


def teacher_completions(params: Params, sets: dict[str, list[PromptRecord]], judged_path: str | Path,
                        out_dir: str | Path) -> pd.DataFrame:
    """Judged teacher completions for the preference prompts: stage 01's where it wrote them,
    otherwise new ones from `preference.teacher`, judged once the teacher is freed."""
    wanted = {r.id for records_ in sets.values() for r in records_}
    have = pd.DataFrame(read_jsonl(judged_path)) if Path(judged_path).is_file() else pd.DataFrame()
    frames = [have[have["prompt_id"].isin(wanted)]] if len(have) else []
    covered = set(frames[0]["prompt_id"]) if frames else set()
    todo = {name: [r for r in records_ if r.id not in covered] for name, records_ in sets.items()}
    todo = {name: records_ for name, records_ in todo.items() if records_}
    if todo and params.preference.teacher is None:
        raise ValueError(f"preference.sets: {sum(map(len, todo.values()))} prompts of {sorted(todo)} were not "
                         "overgenerated in stage 01 and preference.teacher is not set to write their chosen answers")
    if todo:
        teacher = make_backend(params.teacher(params.preference.teacher))
        new = [generate_rows(records_, teacher, params.overgenerate.sampling_for(name),
                             Path(out_dir) / f"teacher__{name}.jsonl", params.seed,
                             extra={"set": name, "teacher": params.preference.teacher})
               for name, records_ in todo.items()]
        free_memory(teacher)
        del teacher
        frames.append(judge_rows(pd.concat(new, ignore_index=True), params, store=Path(out_dir) / "verdicts"))
    return pd.concat(frames, ignore_index=True)


# ------------------------------------------------------------------------------------ 06 evaluate

def load_checkpoint(student: ModelParams, adapter_dir: Path | None):
    """(model, tokenizer) for generation: the base student, or the student with an adapter merged in."""
    from .models import load_model, load_tokenizer

    if adapter_dir is None:
        return load_model(student), load_tokenizer(student)
    from .training import load_trained

    return load_trained(student, adapter_dir)


def checkpoint_backend(student: ModelParams, adapter_dir: Path | None, name: str,
                       server: BackendParams | None = None):
    """A generation backend on a checkpoint, named `<student>+<checkpoint>` in every row it writes, which also
    record the adapter's fingerprint: rows a previous adapter wrote are set aside, never reused.

    With `server` (params' `student_server`), the checkpoint is the served model of that name (the base:
    the server's `api_model`), reached through the openai backend; otherwise transformers here."""
    adapter = fingerprint(Path(adapter_dir)) if adapter_dir is not None else None
    if server is not None:
        from .backends import OpenAIBackend

        return OpenAIBackend(server.base_url, name if adapter_dir is not None else server.api_model,
                             server.api_key_env, server.max_concurrency, server.timeout, server.max_retries,
                             revision=student.revision, continue_final_message=server.continue_final_message,
                             adapter=adapter)
    from .generation import HFBackend

    model, tokenizer = load_checkpoint(student, adapter_dir)
    model.eval()
    tokenizer.padding_side = "left"
    return HFBackend(model, tokenizer, model_name=f"{student.name}+{name}" if adapter_dir else student.name,
                     revision=student.revision, adapter=adapter)


# A checkpoint's records of its run (times, versions, the loss curve): not what the checkpoint says.
RUN_RECORDS = frozenset({"log_history.json", "params.json"})


def fingerprint(*parts) -> str:
    """A short stable hash of settings and files: a cache key that changes when any of them does.

    A directory (a checkpoint) counts by what generation reads from it, the weights, adapter config, tokenizer and
    chat template, never by its run records, so retraining to the same weights keeps its key and its cached rows."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path) and part.is_dir():
            for f in sorted(part.iterdir()):
                if f.is_file() and f.suffix in (".safetensors", ".bin", ".json", ".jinja") and f.name not in RUN_RECORDS:
                    h.update(f.name.encode())
                    h.update(_canonical_json(f) if f.suffix == ".json" else f.read_bytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:12]


def _canonical_json(path: Path) -> bytes:
    """A JSON file's content with sorted keys; PEFT writes `target_modules`, a set, in a different order each run."""
    data = json.loads(path.read_text())
    if isinstance(data, dict) and isinstance(data.get("target_modules"), list):
        data = {**data, "target_modules": sorted(data["target_modules"])}
    return json.dumps(data, sort_keys=True).encode()


def evaluation_responses(params: Params, checkpoints: dict[str, Path | None], sets: dict[str, list[PromptRecord]],
                         cache_dir: str | Path) -> pd.DataFrame:
    """Responses per (checkpoint, prompt set), generated once and cached; one checkpoint in memory at a time.

    The cache key covers the student, the adapter's files, the sampling settings and the seed, so a
    retrained checkpoint regenerates and an added checkpoint generates only its own responses.
    """
    sampling, frames = params.evaluate.sampling, []
    for name, adapter in checkpoints.items():
        key = fingerprint(params.student.model_dump(), adapter, sampling.model_dump(), params.seed)
        paths = {s: Path(cache_dir) / f"{name}__{s}__{key}{_prompts_key(records_)}.jsonl" for s, records_ in sets.items()}
        missing = [s for s, path in paths.items() if not _complete(path, sets[s], sampling.n)]
        backend = checkpoint_backend(params.student, adapter, name, params.student_server) if missing else None
        for set_name, records_ in sets.items():
            if set_name in missing:
                generate_rows(records_, backend, sampling, paths[set_name], params.seed,
                              extra={"set": set_name, "checkpoint": name})
            frames.append(pd.DataFrame(read_jsonl(paths[set_name])))
        free_memory(backend)
        del backend
    return pd.concat(frames, ignore_index=True)


def _prompts_key(records_: list[PromptRecord]) -> str:
    """A suffix for sets whose prompts carry a prefill (the completion attack): new prefixes, new responses."""
    prefills = [(r.id, r.prefill) for r in records_ if r.prefill]
    return f"-{fingerprint(prefills)}" if prefills else ""


def _complete(path: Path, records_: list[PromptRecord], n: int) -> bool:
    if not path.is_file():
        return False
    done = {(r["prompt_id"], r["sample_index"]) for r in read_jsonl(path)}
    return all((r.id, i) in done for r in records_ for i in range(n))


# ------------------------------------------------------------------------------------ 06 completion attack

def attack_records(params: Params, judged: pd.DataFrame) -> list[PromptRecord]:
    """The completion attack's prompts: each held-out harmful prompt the base model answered unsafely,
    with the first `prefix_words` words of that answer placed in the assistant turn."""
    from dataclasses import replace

    spec = params.evaluate.attack
    base = judged[(judged["checkpoint"] == "base") & (judged["set"] == spec.set) & (judged["safety_label"] == "unsafe")]
    records = {r.id: r for r in load_sets(params, [spec.set])[spec.set]}
    out = []
    for row in base.itertuples():
        words = str(row.completion).split()
        if len(words) > spec.prefix_words:  # a shorter answer leaves nothing to continue
            out.append(replace(records[row.prompt_id], prefill=" ".join(words[:spec.prefix_words])))
    return out  # empty when the base model answered no prompt unsafely: nothing to attack with


def attack_size(params: Params, judged: pd.DataFrame, records: list[PromptRecord]) -> dict[str, int]:
    """How large the attack is, beside its rates: the attack set's prompts, those the base model answered
    unsafely (the only ones with a prefix to continue), and those attacked (an answer longer than the prefix).
    With an instruct base that refuses most harmful prompts, the last can be nearly empty."""
    spec = params.evaluate.attack
    base = judged[(judged["checkpoint"] == "base") & (judged["set"] == spec.set)]
    return {"harmful prompts": int(base["prompt_id"].nunique()),
            "answered unsafely by the base model": int(base.loc[base["safety_label"] == "unsafe", "prompt_id"].nunique()),
            "attacked": len(records)}


def attack_responses(params: Params, checkpoints: dict[str, Path | None], records: list[PromptRecord],
                     cache_dir: str | Path) -> pd.DataFrame:
    """Every checkpoint's continuation of each attack prefix (greedy, cached like the other sets). The
    refusal judge (and the refusal proxy) read only the continuation: did the checkpoint turn to a refusal?
    A judge of content reads `attacked`, prefix and continuation together, since a harmful continuation
    can look harmless without the words it continues (judge_rows' `content_column`)."""
    rows = evaluation_responses(params, checkpoints, {"completion_attack": records}, cache_dir)
    prefixes = rows["prompt_id"].map({r.id: r.prefill for r in records})
    return rows.assign(prefill=prefixes, attacked=prefixes + " " + rows["completion"].fillna(""))
