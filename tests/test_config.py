"""Params profiles load, and every kind of mistake fails at load time with a useful message."""
from pathlib import Path

import pytest
import yaml

from porover_lib.config import ParamsError, dump_resolved, load_params, validate

PARAMS = Path(__file__).resolve().parents[1] / "params"


@pytest.mark.parametrize("profile", ["smoke", "default", "default_fp32", "paper"])
def test_every_profile_loads(profile):
    params = load_params(PARAMS / f"{profile}.yaml")
    assert params.profile == profile
    assert set(params.evaluate.sets) <= set(params.prompts)


def test_paper_profile_is_the_papers_setup():
    paper = load_params(PARAMS / "paper.yaml")
    assert paper.student.name == "meta-llama/Llama-3.1-8B-Instruct" and paper.student.load_in_4bit
    assert paper.teachers["gpt4o"].kind == "openai" and paper.teachers["gpt4o"].api_model == "gpt-4o"
    assert paper.judges.safety.name == "llama_guard"
    assert "smol" not in paper.teachers  # `smol: null` removed the default's local teacher


def test_smoke_extends_default_and_overrides_only_what_it_says():
    smoke, default = load_params(PARAMS / "smoke.yaml"), load_params(PARAMS / "default.yaml")
    assert smoke.prompts["harmful_train"].limit == 4
    assert smoke.prompts["harmful_train"].split == default.prompts["harmful_train"].split == "train"
    assert smoke.sft.learning_rate == default.sft.learning_rate


def test_default_fp32_is_the_default_run_in_float32():
    """Everything but the dtype of the two models is the default profile's, so only rounding separates the runs."""
    default, fp32 = load_params(PARAMS / "default.yaml"), load_params(PARAMS / "default_fp32.yaml")
    assert (fp32.student.dtype, fp32.teachers["smol"].model.dtype) == ("float32", "float32")
    same = fp32.model_copy(update={"profile": default.profile, "description": default.description,
                                   "student": default.student, "teachers": default.teachers})
    assert same == default


def test_resolved_profile_round_trips():
    params = load_params(PARAMS / "default.yaml")
    assert validate(yaml.safe_load(dump_resolved(params))) == params


def _write(tmp_path, text):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("body, expected", [
    ("profile: x\nsft: {learning_rat: 0.1}\n", ["unknown key 'sft.learning_rat'", "0.1"]),
    ("profile: x\nsft: {epochs: two}\n", ["key 'sft.epochs'", "'two'", "valid number"]),
    ("profile: x\npreference: {tau: 1.5}\n", ["key 'preference.tau'", "1.5", "less than or equal to 1"]),
    ("profile: x\nsft: {objective: magic}\n", ["key 'sft.objective'", "'magic'", "'standard' or 'derta'"]),
    ("profile: x\nstudent: {dtype: int3}\n", ["key 'student.dtype'", "int3", "bfloat16"]),
    ("profile: x\nevaluate: {sets: [nowhere]}\n", ["unknown prompt set 'nowhere'"]),
    ("profile: x\nprompts: {a: {name: a}}\novergenerate: {sets: {a: ghost}}\n", ["unknown teacher 'ghost'"]),
    ("seed: 1\n", ["missing key 'profile'"]),
    ("profile: x\nteachers: {t: {kind: openai}}\n", ["api_model"]),
    ("profile: x\nprompts: {f: {source: file, name: f.csv}}\n", ["needs 'role'"]),
    ("profile: x\nsft: {variants: {d: {objective: magic}}}\n", ["sft.variants.d", "'objective'", "'magic'"]),
    ("profile: x\nsft: {variants: {po: {objective: derta}}}\n", ["['po']", "unique"]),
    ("profile: x\npo: {variants: {p: {start: derta}}}\n", ["po.variants.p.start", "unknown SFT adapter 'derta'"]),
    ("profile: x\nevaluate: {checkpoints: [base, sft, ghost]}\n", ["unknown checkpoint 'ghost'"]),
    ("profile: x\nprompts: {h: {name: harmful}}\nevaluate: {sets: [h], checkpoints: [sft], attack: {set: h}}\n",
     ["base model's answers", "add 'base'"]),
    ("profile: x\nevaluate: {attack: {set: nowhere}}\n", ["evaluate.attack.set", "'nowhere'"]),
    ("profile: x\njudges: {refusal: {name: keyword, batch_size: 4}}\n", ["judges.refusal", "batch_size applies to",
                                                                        "'keyword'"]),
    ("profile: x\nprompts: {a: {name: harmful}}\novergenerate: {sets: {a: reference}}\nselect: {sets: [a], teachers: {a: [ghost]}}\n",
     ["select.teachers.a", "unknown teacher 'ghost'"]),
])
def test_bad_values_name_key_value_and_what_is_allowed(tmp_path, body, expected):
    path = _write(tmp_path, body)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    message = str(err.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message, message


def test_the_cli_validates_without_writing_and_writes_only_where_told(tmp_path):
    import subprocess
    import sys

    cli = [sys.executable, "-m", "porover_lib.config", str(PARAMS / "smoke.yaml")]
    shown = subprocess.run(cli, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert yaml.safe_load(shown.stdout)["profile"] == "smoke" and not list(tmp_path.iterdir())
    subprocess.run(cli + ["--write", "active.yaml"], cwd=tmp_path, capture_output=True, check=True)
    assert load_params(tmp_path / "active.yaml").profile == "smoke"


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "absent.yaml")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(_write(tmp_path, "profile: [unclosed\n"))


def test_extends_cycle_is_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b\nprofile: a\n")
    (tmp_path / "b.yaml").write_text("extends: a\nprofile: b\n")
    with pytest.raises(ParamsError, match="cycle"):
        load_params(tmp_path / "a.yaml")


def test_checkpoint_starts_follow_the_variants():
    params = load_params(PARAMS / "default.yaml")
    starts = params.checkpoint_starts()
    assert starts["sft"] == "base" and starts["po_derta"] == "derta"
    # DeRTa is measured against standard SFT on its own rows, which is measured against the run's SFT
    assert starts["derta"] == "sft_derta_rows" and starts["sft_derta_rows"] == "sft"
    derta, rows = params.sft.variant("derta"), params.sft.variant("sft_derta_rows")
    assert derta.objective == "derta" and rows.objective == "standard"
    assert derta.harmful_share == rows.harmful_share is not None  # the same rows
    assert derta.learning_rate == params.sft.learning_rate  # the rest is inherited
    assert params.derta_checkpoints() == {"derta", "po_derta"}


@pytest.mark.parametrize("variants, expected", [
    ({"derta": {"compare_with": "derta"}}, "'derta' is not `sft` or another variant"),
    ({"derta": {"compare_with": "nowhere"}, "x": {}}, "'nowhere' is not `sft` or another variant \\(x\\)"),
])
def test_a_variant_is_compared_with_sft_or_another_variant(variants, expected):
    from porover_lib.config import SFTParams

    with pytest.raises(ValueError, match=expected):
        SFTParams(variants=variants)
    assert SFTParams(variants={"derta": {"compare_with": "x"}, "x": {}}).variant("derta").compare_with == "x"
