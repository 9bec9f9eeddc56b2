"""End to end: `dvc repro` of all six notebooks on the real embedded model with the smoke profile.

Runs in a temporary copy of the repository, so the working tree and its outputs stay untouched.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STAGES = ["overgenerate", "select", "sft", "preference_data", "preference_optimization", "evaluate"]


def run(cmd, cwd, timeout=900):
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("repo")
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    for name in tracked + [p for p in ("notebooks", "porover_lib", "params", "dvc.yaml", ".dvc/config")]:
        src = REPO / name
        if src.is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, work / name)
    for stale in ("dvc.lock", "outputs"):
        shutil.rmtree(work / stale, ignore_errors=True) if (work / stale).is_dir() else (work / stale).unlink(missing_ok=True)
    run(["git", "init", "-q"], work)
    run([sys.executable, "-m", "porover_lib.config", "params/smoke.yaml", "--write", "params/active.yaml"], work)
    log = run(["dvc", "repro"], work, timeout=1500)
    return work, log


@pytest.mark.e2e
def test_every_stage_ran_and_wrote_its_outputs(smoke_run):
    work, log = smoke_run
    for stage in STAGES:
        assert f"Running stage '{stage}'" in log
    for nb in sorted((work / "notebooks").glob("0*.ipynb")):
        rendered = json.loads((work / "outputs" / "notebooks" / nb.name).read_text())
        outputs = [o for c in rendered["cells"] for o in c.get("outputs", [])]
        assert not [o for o in outputs if o["output_type"] == "error"], nb.name
        assert outputs, nb.name

    overgen = [row for f in (work / "data" / "overgen").glob("*.jsonl") for row in jsonl(f)]
    assert {"prompt_id", "sample_index", "completion", "backend", "model", "seed"} <= set(overgen[0])
    keys = [(r["set"], r["teacher"], r["prompt_id"], r["sample_index"]) for r in overgen]
    assert len(keys) == len(set(keys))

    sft = jsonl(work / "data" / "sft" / "train.jsonl")
    assert sft and all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in sft)
    assert (work / "checkpoints" / "sft" / "adapter_model.safetensors").is_file()

    pairs = jsonl(work / "data" / "preference" / "pairs.jsonl")
    assert all({"prompt", "chosen", "rejected", "kind"} <= set(p) for p in pairs)
    assert any((work / "checkpoints" / "po").glob("*/adapter_model.safetensors"))

    metrics = json.loads((work / "outputs" / "metrics.json").read_text())
    assert set(metrics["summary"]) == {"base", "sft", "po"}
    for row in metrics["summary"].values():
        assert all(0.0 <= row[k] <= 1.0 for k in ("safety", "usefulness", "f1"))
    for plot in ("06_rates", "06_tradeoff", "06_refusal_heatmap"):
        assert (work / "outputs" / "plots" / f"{plot}.png").stat().st_size > 1000


@pytest.mark.e2e
def test_second_repro_does_nothing_and_a_po_param_reruns_only_05_and_06(smoke_run):
    work, _ = smoke_run
    again = run(["dvc", "repro"], work)
    assert "Running stage" not in again
    active = work / "params" / "active.yaml"
    active.write_text(active.read_text().replace("beta: 0.1", "beta: 0.2"))
    rerun = run(["dvc", "repro"], work)
    assert [s for s in STAGES if f"Running stage '{s}'" in rerun] == ["preference_optimization", "evaluate"]
    # 06 caches responses per (checkpoint, set, settings): base and sft are reused, only po regenerates
    cached = sorted(p.name.split("__")[0] for p in (work / "data" / "eval" / "responses").glob("*.jsonl"))
    assert cached.count("po") == 6 and cached.count("base") == cached.count("sft") == 3
