"""No training prompt that an evaluation set also holds: the text-level check of `porover check` and the
load-time drop a profile asks for (issue 29.1)."""
import json
from pathlib import Path

import pytest
import yaml

from porover_lib.checks import check_profile, training_sets
from porover_lib.config import PromptSetParams, load_params
from porover_lib.overlap import overlapping
from porover_lib.prompts import load_prompt_set, load_sets

PARAMS = Path(__file__).resolve().parents[1] / "params"


def profile(tmp_path: Path, **prompts) -> Path:
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump({"extends": str(PARAMS / "smoke.yaml"), "profile": "leak", "prompts": prompts}))
    return path


def test_exact_and_near_duplicates_overlap_and_others_do_not():
    others = ["How do I kill a Python process that hangs on Linux?", "Name three rivers in Africa."]
    hits = overlapping(["how do I KILL a python process that hangs on linux ?",   # the same words
                        "Tell me please how do I kill a Python process that hangs on Linux today",  # 8-word run
                        "How do I bake bread?"], others)
    assert [(i, other) for i, other, _ in hits] == [(0, others[0]), (1, others[0])]
    assert hits[0][2] == "identical text"


def test_a_profile_that_evaluates_on_its_own_training_prompts_is_not_ready(tmp_path):
    """The leak a new user can make: toxic_eval is the seemingly-toxic *train* split (it passed before)."""
    path = profile(tmp_path, toxic_eval={"source": "embedded", "name": "seemingly_toxic", "split": "train", "limit": None})
    problems = [str(p) for p in check_profile(path, hub=False)]
    leak = [p for p in problems if p.startswith("prompts.toxic_train:")]
    assert len(leak) == 1, problems
    assert "4 of its 4 prompts are also in evaluation set 'toxic_eval'" in leak[0]
    assert "drop_overlap_with: [toxic_eval]" in leak[0]


def test_drop_overlap_with_leaves_out_the_shared_prompts_and_counts_them(tmp_path):
    train = load_prompt_set(PromptSetParams(name="seemingly_toxic", split="train"))  # validation share held back
    held_out = tmp_path / "held_out.jsonl"  # two training prompts, one of them reworded a little, and a new one
    rows = [{"prompt": train[0].prompt}, {"prompt": "Please, " + train[1].prompt.lower()},
            {"prompt": "Where do herons nest in winter?"}]
    held_out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    toxic_eval = {"source": "file", "name": str(held_out), "role": "seemingly_toxic", "split": "all", "limit": None}
    leaking = profile(tmp_path, toxic_eval=toxic_eval, toxic_train={"limit": 1000})
    assert any(str(p).startswith("prompts.toxic_train:") for p in check_profile(leaking, hub=False))

    fixed = profile(tmp_path, toxic_eval=toxic_eval, toxic_train={"limit": 1000, "drop_overlap_with": ["toxic_eval"]})
    assert not [p for p in check_profile(fixed, hub=False) if str(p).startswith("prompts.toxic_train")]
    dropped = {}
    kept = load_sets(load_params(fixed), ["toxic_train"], dropped)["toxic_train"]
    assert dropped == {"toxic_train": {"toxic_eval": 2}}
    assert {r.id for r in kept} == {r.id for r in train} - {train[0].id, train[1].id}


def test_drop_overlap_with_names_other_sets():
    from porover_lib.config import ParamsError, resolve_raw, validate

    raw = resolve_raw(PARAMS / "smoke.yaml")
    raw["prompts"]["toxic_train"]["drop_overlap_with"] = ["nowhere"]
    with pytest.raises(ParamsError, match="prompts.toxic_train.drop_overlap_with: 'nowhere' is not another prompt set"):
        validate(raw)


@pytest.mark.parametrize("name", ["paper", "paper_small"])
def test_the_paper_profiles_train_on_nothing_they_evaluate_on(name):
    """Every training set drops what any evaluation set holds (OR-Bench-Hard-1K was selected from
    OR-Bench-80K), and the evaluation sets are the paper's: OR-Bench-Hard-1K, OR-Bench-Toxic, XSTest."""
    params = load_params(PARAMS / f"{name}.yaml")
    evaluation = set(params.evaluate.sets)
    for train in training_sets(params):
        assert evaluation <= set(params.prompts[train].drop_overlap_with), train
    hub = {params.prompts[s].name for s in evaluation}
    assert {"or-bench-hard-1k", "or-bench-toxic", "xstest"} <= hub
    assert not hub & {params.prompts[s].name for s in training_sets(params)}
