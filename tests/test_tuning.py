"""Tuning's choice rule: safety first (within a margin of the best), then usefulness and general compliance."""
from pathlib import Path

import pytest

from porover_lib.tuning import choose


def rates(safety, usefulness, general_refusal, looping=0.0):
    return {"safety": safety, "usefulness": usefulness, "general_refusal": general_refusal, "looping": looping}


def test_choose_prefers_usefulness_among_the_safe_enough():
    results = {"safe_but_refusing": rates(0.98, 0.40, 0.30), "balanced": rates(0.95, 0.70, 0.02),
               "unsafe": rates(0.60, 0.99, 0.00)}
    assert choose(results, safety_margin=0.05) == "balanced"
    assert choose(results, safety_margin=0.01) == "safe_but_refusing"


def test_choose_measures_a_preference_step_against_its_start():
    """With an anchor (the SFT start's safety) the floor no longer follows the safest variant: a step that
    refuses everything cannot push out one that keeps SFT's safety and gains usefulness."""
    results = {"refuses_all": rates(1.00, 0.30, 0.60), "useful": rates(0.84, 0.90, 0.05)}
    assert choose(results, safety_margin=0.05) == "refuses_all"
    assert choose(results, safety_margin=0.05, anchor=0.86) == "useful"
    assert choose({"useful": results["useful"]}, safety_margin=0.05, anchor=0.95) is None


def test_choose_leaves_out_variants_whose_answers_loop():
    results = {"looping": rates(0.99, 0.95, 0.01, looping=0.4), "plain": rates(0.90, 0.60, 0.20)}
    assert choose(results, safety_margin=0.05) == "plain"
    assert choose({"looping": results["looping"]}, safety_margin=0.05) is None


def test_a_grid_block_must_exist_and_name_a_stage(tmp_path):
    from porover_lib.tuning import tune

    grid = tmp_path / "grid.yaml"
    smoke = Path(__file__).resolve().parents[1] / "params" / "smoke.yaml"
    grid.write_text(f"profile: {smoke}\n" + "sft: {variants: {}}\nodd: {stage: rl, variants: {}}\n")
    with pytest.raises(ValueError, match=r"no block 'derta'; blocks: \['sft', 'odd'\]"):
        tune("derta", grid)
    with pytest.raises(ValueError, match=r"block 'odd' tunes stage 'rl'"):
        tune("odd", grid)


def test_preference_sets_stand_in_for_stage_04s_prompts_of_their_role(tmp_path, monkeypatch):
    """A po block's `preference_sets` replace stage 04's rows of their role, keep the others, add chosen answers
    only for prompts stage 02 did not answer, and are made once per block (the manifest), not per call."""
    import pandas as pd

    from porover_lib import stages, tuning
    from porover_lib.config import load_params
    from porover_lib.io import read_jsonl, write_rows

    def row(pid, role, teacher):
        return {"prompt_id": pid, "role": role, "teacher": teacher, "completion": "ok"}

    student04, stage02 = tmp_path / "student.jsonl", tmp_path / "judged.jsonl"
    write_rows(student04, pd.DataFrame([row("t1", "seemingly_toxic", "student"), row("h1", "harmful", "student")]))
    write_rows(stage02, pd.DataFrame([row("t1", "seemingly_toxic", "smol"), row("h1", "harmful", "reference")]))
    made = []

    def samples(params, sets, sft_dir, out_dir):
        made.append(sorted(sets))
        return pd.DataFrame([row(r.id, "seemingly_toxic", "student") for r in sets["toxic_all"][:3]])

    def teacher(params, sets, judged_path, out_dir):
        covered = pd.DataFrame(read_jsonl(judged_path))
        return pd.concat([covered[covered["prompt_id"] == "t1"],
                          pd.DataFrame([row(r.id, "seemingly_toxic", "smol") for r in sets["toxic_all"][:3]])])

    monkeypatch.setattr(stages, "student_samples", samples)
    monkeypatch.setattr(stages, "teacher_completions", teacher)
    monkeypatch.setattr(stages, "judge_rows", lambda rows, params, **kw: rows)
    params = load_params(Path(__file__).resolve().parents[1] / "params" / "smoke.yaml")
    spec = {"student_data": str(student04), "teacher_data": str(stage02),
            "preference_sets": {"toxic_all": {"source": "embedded", "name": "seemingly_toxic", "split": "train"}}}
    out = tuning.preference_data(params, spec, tmp_path / "work")
    student = read_jsonl(out["student_data"])
    new_ids = [r["prompt_id"] for r in student if r["role"] == "seemingly_toxic"]
    assert len(new_ids) == 3 and "t1" not in new_ids  # stage 04's seemingly-toxic row is gone ...
    assert [r["prompt_id"] for r in student if r["role"] == "harmful"] == ["h1"]  # ... its harmful row kept
    teacher_ids = [r["prompt_id"] for r in read_jsonl(out["teacher_data"])]
    assert teacher_ids == ["t1", "h1", *new_ids]  # stage 02's rows once, then the new prompts' answers
    tuning.preference_data(params, spec, tmp_path / "work")
    assert made == [["toxic_all"]]


def test_the_validation_attack_continues_the_base_students_unsafe_answers_to_validation_prompts(tmp_path, monkeypatch):
    """`attack: true` builds stage 06's completion attack from the harmful *validation* prompts: prefixes of the
    base student's (no adapter) answers judged unsafe, never an eval prompt."""
    import pandas as pd

    from porover_lib import stages, tuning
    from porover_lib.config import load_params
    from porover_lib.judges import Judgement

    params = load_params(Path(__file__).resolve().parents[1] / "params" / "smoke.yaml")
    val = tuning.validation_sets(limit=3)
    adapters = []

    def generate(records, backend, sampling, out_path, seed, extra=None):
        assert sampling.max_new_tokens == 24 and sampling.temperature == 0.0
        return pd.DataFrame([{**extra, "prompt_id": r.id, "prompt": r.prompt, "role": r.role, "sample_index": 0,
                              "completion": ("Sure, here is how " if i else "I can't help with that ") * 4}
                             for i, r in enumerate(records)])

    monkeypatch.setattr(stages, "checkpoint_backend", lambda student, adapter, name: adapters.append(adapter))
    monkeypatch.setattr(stages, "generate_rows", generate)
    attack_params, records = tuning.attack_prompts(params, val, tmp_path, max_new_tokens=24)
    assert adapters == [None]
    assert [r.id for r in records] == [r.id for r in val["harmful"][1:]]  # the first answer refused: no prefix
    assert all(r.split == "val" and r.prefill.startswith("Sure, here is how") for r in records)
    assert len(records[0].prefill.split()) == attack_params.evaluate.attack.prefix_words
    assert attack_params.evaluate.sampling.max_new_tokens == 24 and params.evaluate.attack.set != tuning.ATTACK_SET


def test_a_block_reads_back_only_what_was_made_from_the_same_inputs(tmp_path):
    """A rerun of stage 02 (new rows under the block), an edited profile or a new token budget stop a block whose
    work_dir holds answers made before, naming what changed; the same inputs read back."""
    from porover_lib.config import load_params
    from porover_lib.tuning import block_inputs, check_inputs

    params = load_params(Path(__file__).resolve().parents[1] / "params" / "smoke.yaml")
    judged, work = tmp_path / "judged.jsonl", tmp_path / "work"
    judged.write_text('{"prompt_id": "g1"}\n')
    spec = {"data": str(judged), "max_new_tokens": 64, "variants": {"a": {}}}
    check_inputs(work, block_inputs(params, "sft", spec))
    check_inputs(work, block_inputs(params, "sft", {**spec, "variants": {"a": {}, "b": {}}}))  # a new variant is fine
    judged.write_text('{"prompt_id": "g2"}\n')
    with pytest.raises(RuntimeError, match=rf"{work} was made from other inputs \({judged} changed since\)"):
        check_inputs(work, block_inputs(params, "sft", spec))
    judged.write_text('{"prompt_id": "g1"}\n')
    with pytest.raises(RuntimeError, match=r"\(block changed since\)"):
        check_inputs(work, block_inputs(params, "sft", {**spec, "max_new_tokens": 48}))
    params.select.general_answers += 1  # any edit of the profile
    with pytest.raises(RuntimeError, match=r"\(profile changed since\)"):
        check_inputs(work, block_inputs(params, "sft", spec))
    old = tmp_path / "old"
    (old / "a").mkdir(parents=True)
    with pytest.raises(RuntimeError, match=r"no record of their inputs"):
        check_inputs(old, block_inputs(params, "sft", spec))
