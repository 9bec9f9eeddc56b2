"""Soak of resumption: SIGKILL the long loops at seeded random points, rerun each until it completes,
and compare with an uninterrupted run of the same seed.

The four kinds of work are the notebooks' own calls: stage 01 `overgenerate_sets`, stage 02's judging of
its rows (`judge_rows` with its verdict store: keyword, refusal proxy and the heuristic reward scored by the
student, a batched model judge), stage 04's student sampling (`checkpoint_backend` of the SFT adapter +
`generate_rows` per set) and stage 06 `evaluation_responses`. They run on a tiny random Llama with the embedded tokenizer
(tests/tiny.py) and a random LoRA adapter as "sft", so a soak takes minutes on 2 CPU cores; the
resumption code does not depend on the model's size. After the first kill of each kind the newest
output file is also cut in the middle of its last row, as a kill inside a write would leave it.

    flock /tmp/torch.lock .venv/bin/python benchmarks/soak.py            # 16 kills, seed 0

Prints every kill (seconds after the worker was ready) and, per kind and overall,
`lost=… duplicated=… identical=…`; exits 1 if a row is lost or duplicated, an output differs from
the uninterrupted run, or fewer than --min-kills kills landed mid-run.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KINDS = ("01_overgenerate", "02_judge", "04_student", "06_evaluate")


# ------------------------------------------------------------------------------ worker side

def setup(work: Path) -> None:
    """Tiny student, a random (non-zero) LoRA adapter as the SFT checkpoint, and the soak profile."""
    sys.path.insert(0, str(REPO / "tests"))
    import yaml
    from peft import LoraConfig, get_peft_model
    from tiny import tiny_model

    from porover_lib.config import dump_resolved, resolve_raw, validate

    model, tokenizer = tiny_model(layers=2, hidden=64, seed=0)
    model.save_pretrained(work / "tiny")
    tokenizer.save_pretrained(work / "tiny")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    adapter = get_peft_model(model, lora)  # random B: the adapter changes what the model says
    adapter.save_pretrained(work / "sft")
    tokenizer.save_pretrained(work / "sft")

    student = {"name": str(work / "tiny"), "dtype": "float32", "device": "cpu"}
    sampling = {"n": 4, "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 24, "batch_size": 8}
    raw = resolve_raw(REPO / "params" / "smoke.yaml")
    raw.update(profile="soak", description="resumption soak (benchmarks/soak.py)", student=student,
               teachers={"smol": {"kind": "hf", "model": student}})
    for name, limit in (("general_train", 12), ("harmful_train", 12), ("toxic_train", 12),
                        ("general_eval", 10), ("harmful_eval", 10), ("toxic_eval", 10)):
        raw["prompts"][name]["limit"] = limit
    raw["overgenerate"]["sampling"] = sampling
    raw["preference"]["sampling"] = sampling
    raw["evaluate"].update(checkpoints=["base", "sft"],
                           sampling={"n": 1, "temperature": 0.0, "max_new_tokens": 24, "batch_size": 4})
    (work / "profile.yaml").write_text(dump_resolved(validate(raw, "soak profile")))
    assert yaml.safe_load((work / "profile.yaml").read_text())["profile"] == "soak"


def work_once(kind: str, work: Path, out: Path) -> None:
    """One run of `kind` into `out`, as its notebook calls it; prints `ready` before the work starts."""
    import torch

    from porover_lib import stages
    from porover_lib.config import load_params
    from porover_lib.prompts import load_sets

    torch.set_num_threads(1)  # the same in every run: reductions, hence samples, do not change
    params = load_params(work / "profile.yaml")
    print("ready", flush=True)
    if kind == "01_overgenerate":
        stages.overgenerate_sets(params, out)
    elif kind == "02_judge":  # stage 02's judging of the reference run's stage-01 rows, verdicts kept as made
        from porover_lib import verdicts
        from porover_lib.io import write_rows

        verdicts.CHUNK = 16  # the soak's rows are few: small blocks, so kills land between appends
        rows = stages.overgenerated_rows(params, work / "reference" / "01_overgenerate")
        write_rows(out / "judged.jsonl", stages.judge_rows(rows, params, store=out / "verdicts"))
    elif kind == "04_student":  # what notebook 04 does before judging: the SFT student's M samples per prompt
        student = stages.checkpoint_backend(params.student, work / "sft", "sft")
        for name, recs in load_sets(params, params.preference.sets).items():
            stages.generate_rows(recs, student, params.preference.sampling, out / f"student__{name}.jsonl",
                                 params.seed, extra={"set": name, "teacher": "student"})
    else:
        from porover_lib.adapters import checkpoint_dirs

        checkpoints = checkpoint_dirs(params, work / "sft", work / "po")
        stages.evaluation_responses(params, checkpoints, load_sets(params, params.evaluate.sets), out)
    print("done", flush=True)


# ------------------------------------------------------------------------------ driver side

def start(kind: str, work: Path, out: Path, log) -> tuple[subprocess.Popen, float]:
    """A worker, once it is ready (imports and params done): (process, time it said ready)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, __file__, "worker", kind, str(work), str(out)], stdout=subprocess.PIPE,
                            stderr=log, text=True, env=env, cwd=REPO)
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.wait()
        raise SystemExit(f"{kind}: worker failed before its work began (exit {proc.returncode}); see {log.name}")
    return proc, time.perf_counter()


def finish(kind: str, proc: subprocess.Popen, log) -> None:
    proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"{kind}: worker failed (exit {proc.returncode}); see {log.name}")


def rows_on_disk(out: Path) -> int:
    return sum(f.read_bytes().count(b"\n") for f in out.rglob("*.jsonl"))


def tear_last_row(out: Path) -> str | None:
    """Cut the newest output file inside its last row: what a kill during the append's write leaves."""
    files = [f for f in out.rglob("*.jsonl") if f.stat().st_size]
    if not files:
        return None
    newest = max(files, key=lambda f: f.stat().st_mtime_ns)
    data = newest.read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1  # start of the last row
    newest.write_bytes(data[:last + (len(data) - last) // 2])
    return newest.name


def soak_kind(kind: str, work: Path, kills: int, rng: random.Random, log) -> tuple[int, float, list[str]]:
    """Uninterrupted run, then the killed-and-rerun one: (kills landed, reference seconds, kill lines)."""
    ref = work / "reference" / kind
    proc, ready = start(kind, work, ref, log)
    finish(kind, proc, log)
    seconds = time.perf_counter() - ready

    out, landed, lines, attempt, total = work / "soaked" / kind, 0, [], 0, rows_on_disk(ref)
    while True:
        attempt += 1
        proc, ready = start(kind, work, out, log)
        done = rows_on_disk(out)
        if landed >= kills or done >= total:
            finish(kind, proc, log)
            lines.append(f"  {kind} run {attempt}: ran to completion ({rows_on_disk(out)} rows on disk)")
            return landed, seconds, lines
        # A kill within the work still to do, estimated as the uninterrupted time less the share of rows
        # on disk (each rerun also repeats the loading that the reference run timed).
        delay = rng.uniform(0.1, 0.6) * seconds * (1 - done / total)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            if rows_on_disk(out) >= total:
                lines.append(f"  {kind} run {attempt}: SIGKILL at {delay:5.2f} s after ready, after the last row "
                             "was written (not counted)")
                continue
            landed += 1
            torn = tear_last_row(out) if landed == 1 else None
            lines.append(f"  {kind} run {attempt}: SIGKILL at {delay:5.2f} s after ready "
                         f"({rows_on_disk(out)} rows on disk)" + (f"; then tore the last row of {torn}" if torn else ""))
            continue
        if proc.returncode != 0:
            raise SystemExit(f"{kind}: worker failed (exit {proc.returncode}); see {log.name}")
        lines.append(f"  {kind} run {attempt}: finished before its kill at {delay:.2f} s")
        return landed, seconds, lines


def compare(ref: Path, out: Path) -> dict:
    """Rows lost or duplicated (by file and prompt_id, sample_index, or a verdict's key) and whether every file
    is the same bytes (a verdict read back stale would differ)."""
    ref_files = {f.relative_to(ref) for f in ref.rglob("*") if f.is_file()}
    out_files = {f.relative_to(out) for f in out.rglob("*") if f.is_file()}
    want, have, torn = Counter(), Counter(), 0
    for files, root, counter in ((ref_files, ref, want), (out_files, out, have)):
        for name in sorted(f for f in files if f.suffix == ".jsonl"):
            for line in (root / name).read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    torn += counter is have
                    continue
                row_key = ((row["key"],) if "key" in row else  # a verdict; else a row of a set, teacher, checkpoint
                           (row.get("set"), row.get("teacher"), row.get("checkpoint"), row["prompt_id"], row["sample_index"]))
                counter[(str(name), *row_key)] += 1
    same = ref_files == out_files and all((ref / f).read_bytes() == (out / f).read_bytes() for f in ref_files)
    return dict(rows=sum(want.values()), lost=sum(1 for k in want if k not in have),
                duplicated=sum(c - 1 for c in have.values() if c > 1), extra=sum(1 for k in have if k not in want),
                torn=torn, identical=same and torn == 0, files=len(out_files))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=16, help="kills in total, spread over the four kinds")
    parser.add_argument("--min-kills", type=int, default=13, help="fail if fewer kills land mid-run")
    parser.add_argument("--seed", type=int, default=0, help="picks the kill points")
    parser.add_argument("--work", help="working folder (default: a temporary one, removed afterwards)")
    args = parser.parse_args()

    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="porover-soak-")
    work = Path(args.work or tmp.name).resolve()
    work.mkdir(parents=True, exist_ok=True)
    rng, started = random.Random(args.seed), time.perf_counter()
    with open(work / "workers.log", "w") as log:
        subprocess.run([sys.executable, __file__, "setup", str(work)], check=True, stderr=log, cwd=REPO,
                       env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO)))
        share = [args.kills // len(KINDS) + (i < args.kills % len(KINDS)) for i in range(len(KINDS))]
        results, total_kills = {}, 0
        for kind, kills in zip(KINDS, share):
            landed, seconds, lines = soak_kind(kind, work, kills, rng, log)
            total_kills += landed
            print(f"{kind}: uninterrupted work {seconds:.1f} s; {landed} kills", flush=True)
            print("\n".join(lines), flush=True)
            results[kind] = compare(work / "reference" / kind, work / "soaked" / kind)

    print(f"\nseed {args.seed}, {total_kills} kills, {time.perf_counter() - started:.0f} s in all")
    for kind, r in results.items():
        print(f"{kind:>16}: rows={r['rows']} files={r['files']} lost={r['lost']} duplicated={r['duplicated']} "
              f"extra={r['extra']} torn={r['torn']} identical={r['identical']}")
    total = {k: sum(r[k] for r in results.values()) for k in ("rows", "lost", "duplicated", "extra", "torn")}
    identical = all(r["identical"] for r in results.values())
    print(f"{'overall':>16}: rows={total['rows']} lost={total['lost']} duplicated={total['duplicated']} "
          f"extra={total['extra']} torn={total['torn']} identical={identical}")
    if tmp:
        tmp.cleanup()
    ok = identical and not (total["lost"] or total["duplicated"] or total["extra"] or total["torn"])
    if total_kills < args.min_kills:
        print(f"FAIL: only {total_kills} kills landed mid-run (at least {args.min_kills} wanted)")
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "setup":
        setup(Path(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "worker":
        work_once(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        sys.exit(main())
