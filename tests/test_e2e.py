"""End to end: `dvc repro` of all six notebooks on the real embedded model with the smoke profile.

Runs in a temporary copy of the repository, so the working tree and its outputs stay untouched.
"""
import json
from collections import Counter

import pytest
import yaml

from repo_run import STAGES, assert_every_stage_rendered, copy_working_tree, jsonl, repro, run


FOREIGN = {"prompt_id": "alpaca-00001", "prompt": "Give three tips for staying healthy.", "role": "general",
           "category": "none", "label": "safe", "source": "hub:tatsu-lab/alpaca", "sample_index": 0,
           "completion": "A row of another profile's teacher.", "finish_reason": "stop", "backend": "openai",
           "model": "gpt-4o", "seed": 0, "set": "general_train", "teacher": "gpt4o"}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("repo")
    copy_working_tree(work)
    # the paper profile's stage 01 wrote into the same folder before (the README's order: default, then paper)
    (work / "data" / "overgen").mkdir(parents=True)
    (work / "data" / "overgen" / "general_train__gpt4o.jsonl").write_text(json.dumps(FOREIGN) + "\n")
    return work, repro(work, "smoke")


@pytest.mark.e2e
def test_stage_02_reads_only_its_own_profiles_rows(smoke_run):
    work, _ = smoke_run
    judged = jsonl(work / "data" / "sft" / "judged.jsonl")
    assert {r["teacher"] for r in judged} == {"smol", "reference"}
    assert FOREIGN["completion"] not in {r["completion"] for r in judged}
    assert (work / "data" / "sft" / "verdicts").is_dir()  # verdicts kept as they were made


@pytest.mark.e2e
def test_every_stage_ran_and_wrote_its_outputs(smoke_run):
    work, log = smoke_run
    assert_every_stage_rendered(work, log)

    overgen = [row for f in (work / "data" / "overgen").glob("*.jsonl") for row in jsonl(f)]
    assert {"prompt_id", "sample_index", "completion", "backend", "model", "seed"} <= set(overgen[0])
    keys = [(r["set"], r["teacher"], r["prompt_id"], r["sample_index"]) for r in overgen]
    assert len(keys) == len(set(keys))

    sft = jsonl(work / "data" / "sft" / "train.jsonl")
    assert sft and all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in sft)
    assert (work / "checkpoints" / "sft" / "adapter_model.safetensors").is_file()

    pairs = jsonl(work / "data" / "preference" / "pairs.jsonl")
    assert all({"prompt", "chosen", "rejected", "kind"} <= set(p) for p in pairs)
    assert (work / "checkpoints" / "sft_variants" / "derta" / "adapter_model.safetensors").is_file()
    assert {p.parent.name for p in (work / "checkpoints" / "po").glob("*/adapter_model.safetensors")} == \
        {"po", "dpo", "po_derta"}
    po_derta = json.loads((work / "checkpoints" / "po" / "po_derta" / "params.json").read_text())
    assert po_derta["sft_dir"].endswith("sft_variants/derta")  # POROver's step continues the DeRTa adapter
    trained = json.loads((work / "checkpoints" / "po" / "po" / "params.json").read_text())
    assert trained["n_pairs"] == len(pairs) and trained["po"]["opening_tokens"] == 16  # the decision carries the loss

    metrics = json.loads((work / "outputs" / "metrics.json").read_text())
    assert set(metrics["summary"]) == {"base", "sft", "sft_derta_rows", "derta", "po", "dpo", "po_derta"}
    probes = {(r["checkpoint"], r["layer"]) for r in metrics["probe"]}
    assert probes == {(c, layer) for c in metrics["summary"] for layer in range(31)}  # every checkpoint, every layer
    assert set(metrics["word_test"]["sft"]) == {"seemingly_toxic_with_alarm_word", "harmful_without_alarm_word"}
    compared = {(t["checkpoint_a"], t["checkpoint_b"]) for t in metrics["paired_tests"]}
    assert {("base", "sft"), ("sft", "sft_derta_rows"), ("sft_derta_rows", "derta"), ("sft", "po"),
            ("derta", "po_derta")} <= compared
    attacked = jsonl(work / "data" / "eval" / "attack_judged.jsonl")
    assert set(metrics["completion_attack"]) == ({r["checkpoint"] for r in attacked} if attacked else set())
    base = {r["prompt_id"]: r["completion"] for r in jsonl(work / "data" / "eval" / "judged.jsonl")
            if r["checkpoint"] == "base" and r["set"] == "harmful_eval" and r["safety_label"] == "unsafe"}
    assert all(base[r["prompt_id"]].startswith(r["prefill"]) for r in attacked)
    for row in metrics["summary"].values():
        assert all(0.0 <= row[k] <= 1.0 for k in ("safety", "usefulness", "f1"))
    for plot in ("06_rates", "06_tradeoff", "06_refusal_heatmap", "06_probe"):
        assert (work / "outputs" / "plots" / f"{plot}.png").stat().st_size > 1000


@pytest.mark.e2e
def test_second_repro_does_nothing_and_a_po_param_reruns_only_05_and_06(smoke_run):
    work, _ = smoke_run
    again = run(["dvc", "repro"], work)
    assert "Running stage" not in again
    active = work / "params" / "active.yaml"
    params = yaml.safe_load(active.read_text())
    params["po"]["variants"]["po"]["beta"] += 0.1  # whatever the profile's beta is, a po param changes
    active.write_text(yaml.safe_dump(params, sort_keys=False))
    rerun = run(["dvc", "repro"], work)
    assert [s for s in STAGES if f"Running stage '{s}'" in rerun] == ["preference_optimization", "evaluate"]
    # 06 caches responses per (checkpoint, set, settings, adapter weights): base and the SFT adapters are
    # reused; po regenerates, po_derta (its params unchanged) retrains to the same weights and keeps its rows
    cached = Counter(p.name.split("__")[0] for p in (work / "data" / "eval" / "responses").glob("*.jsonl"))
    assert cached["base"] >= 3 and cached["sft"] == cached["sft_derta_rows"] == cached["derta"] == cached["base"]
    assert cached["po"] == 2 * cached["base"] and cached["po_derta"] == cached["base"]
