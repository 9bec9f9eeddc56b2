"""`porover check`: a profile is checked before a run starts; each kind of mistake is one line that
names the key and value, and the command exits 1. The shipped default profile passes offline."""
from pathlib import Path

import pytest
import torch

from porover_lib.checks import check_profile
from porover_lib.cli import main

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "params" / "default.yaml"
SECRET = "sk-test-FAKE-checks-4f1d2e"


def write_profile(tmp_path: Path, body: str, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(f"extends: {DEFAULT}\nprofile: bad\n{body}")
    return path


def run_check(path, capsys) -> tuple[int, list[str]]:
    code = main(["check", str(path)])
    captured = capsys.readouterr()
    return code, (captured.out + captured.err).strip().splitlines()


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_the_default_profile_passes_offline(capsys):
    assert main(["check", "default"]) == 0
    assert capsys.readouterr().out.strip() == "params/default.yaml: ready to run"
    assert check_profile(REPO / "params" / "smoke.yaml") == []


def test_bf16_on_a_cpu_without_bf16_instructions_is_a_note_not_a_problem(monkeypatch, capsys):
    """The default profile pins bf16: on an AVX2-only CPU `porover check` still passes, and says on stderr which
    models would run emulated bf16; on a CPU with bf16 instructions it says nothing more."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert main(["check", "default"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "params/default.yaml: ready to run"
    (note,) = err.strip().splitlines()
    assert note.startswith("note: student.dtype, teachers.smol.model.dtype = 'bfloat16': ")
    assert "torch reports AVX2" in note and "dtype: auto" in note
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512_BF16")
    assert main(["check", "default"]) == 0
    assert capsys.readouterr().err == ""


GOOD_PROMPTS = '{"q": "How do I bake bread?", "topic": "cooking"}\n{"q": "Name three rivers.", "topic": "geo"}\n'

BAD = {  # kind of mistake -> (profile body, the line `porover check` must print; {tmp} is the test folder)
    "unknown key": ("sft: {epoch: 3}\n", "bad.yaml: unknown key 'sft.epoch' (value 3)"),
    "value out of range": ("sft: {learning_rate: 2.0}\n",
                           "bad.yaml: key 'sft.learning_rate': value 2.0 is not allowed"),
    "cross-key reference": ("overgenerate: {sets: {nope: smol}}\n",
                            "bad.yaml: overgenerate.sets: unknown prompt set 'nope'; defined: ["),
    "openai teacher without a model": ("teachers: {api: {kind: openai}}\n",
                                       "bad.yaml: teachers.api: kind 'openai' needs 'api_model'"),
    "prompt file missing": ("prompts: {mine: {source: file, name: '{tmp}/nope.csv', role: general}}\n",
                            "prompts.mine.name = '{tmp}/nope.csv': prompt file not found"),
    "prompt file not parsing": ("prompts: {mine: {source: file, name: '{tmp}/broken.jsonl', role: general}}\n",
                                "prompts.mine.name = '{tmp}/broken.jsonl': line 2 is not valid JSON"),
    "prompt column missing": ("prompts: {mine: {source: file, name: '{tmp}/good.jsonl', role: general, "
                              "columns: {prompt: question}}}\n",
                              "prompts.mine.name = '{tmp}/good.jsonl': missing column(s) ['question']"),
    "unknown embedded prompt set": ("prompts: {general_train: {name: generl}}\n",
                                    "prompts.general_train.name = 'generl': unknown embedded prompt set 'generl'"),
    "unknown hub prompt set": ("prompts: {general_eval: {source: hub, name: orbench}}\n",
                               "prompts.general_eval.name = 'orbench': unknown hub prompt set; known: ["),
    "unknown embedded model": ("student: {name: 'embedded:smollm3'}\n",
                               "student.name = 'embedded:smollm3': unknown embedded model; known: "
                               "['embedded:smollm2-135m-instruct']"),
    "local model folder missing": ("teachers: {smol: {model: {name: ./models/my-teacher}}}\n",
                                   "teachers.smol.model.name = './models/my-teacher': local model folder not found"),
    "malformed hub id": ("judges: {reward: {name: hf_reward_model, model: {name: 'Skywork/Reward 8B'}}}\n",
                         "judges.reward.model.name = 'Skywork/Reward 8B': neither a local folder nor a valid hub id"),
    "API key variable unset": ("teachers: {api: {kind: openai, api_model: gpt-4o, api_key_env: POROVER_UNSET_KEY}}\n",
                               "teachers.api.api_key_env = 'POROVER_UNSET_KEY': environment variable is not set"),
    "server URL malformed": ("teachers: {api: {kind: openai, api_model: m, base_url: 'localhost:8000/v1'}}\n",
                             "teachers.api.base_url = 'localhost:8000/v1': not an http(s) URL"),
    "evaluated checkpoint listed twice": ("evaluate: {checkpoints: [base, sft, sft]}\n",
                                          "evaluate.checkpoints[2] = 'sft': listed twice"),
    "pair roles no preference set gives": (
        "preference: {sets: [toxic_train, harmful_train]}\npo: {variants: {po_general: {pair_roles: [general]}}}\n",
        "po.variants.po_general.pair_roles = ['general']: no set in preference.sets has prompts of these roles; "
        "they have ['harmful', 'seemingly_toxic']"),
    "4-bit without a GPU": ("student: {load_in_4bit: true}\n",
                            "student.load_in_4bit = True: needs a CUDA GPU and none is visible"),
    "cuda without a GPU": ("judges: {safety: {name: llama_guard, model: {name: embedded:smollm2-135m-instruct, "
                           "device: cuda}}}\n",
                           "judges.safety.model.device = 'cuda': needs a CUDA GPU and none is visible"),
}


@pytest.mark.parametrize("kind", BAD)
def test_a_bad_profile_is_caught_with_one_line_naming_key_and_value(kind, tmp_path, capsys, monkeypatch, no_cuda):
    monkeypatch.delenv("POROVER_UNSET_KEY", raising=False)
    (tmp_path / "good.jsonl").write_text(GOOD_PROMPTS)
    (tmp_path / "broken.jsonl").write_text(GOOD_PROMPTS.replace('"Name', 'Name'))
    body, expected = BAD[kind]
    path = write_profile(tmp_path, body.replace("{tmp}", str(tmp_path)))
    code, lines = run_check(path, capsys)
    assert code == 1
    assert lines[0] == f"{path}: 1 problem(s)" and len(lines) == 2
    expected = expected.replace("{tmp}", str(tmp_path))
    assert any(expected in line for line in lines[1:]), lines
    assert all(len(line) < 400 for line in lines)  # a sentence, never the whole profile


def test_a_missing_or_unparsable_profile_file(tmp_path, capsys):
    code, lines = run_check(tmp_path / "nope.yaml", capsys)
    assert code == 1 and lines[1].strip() == f"{tmp_path}/nope.yaml: params file not found"
    (tmp_path / "broken.yaml").write_text("sft: [1, 2\nseed: 0\n")
    code, lines = run_check(tmp_path / "broken.yaml", capsys)
    assert code == 1 and len(lines) == 2 and "broken.yaml: not valid YAML" in lines[1]


def test_several_problems_one_line_each(tmp_path, capsys, monkeypatch, no_cuda):
    monkeypatch.delenv("POROVER_UNSET_KEY", raising=False)
    path = write_profile(tmp_path, BAD["unknown embedded model"][0] + BAD["API key variable unset"][0]
                         + BAD["evaluated checkpoint listed twice"][0])
    code, lines = run_check(path, capsys)
    assert code == 1 and lines[0] == f"{path}: 3 problem(s)" and len(lines) == 4


def test_a_set_key_passes_and_is_never_printed(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("POROVER_SET_KEY", SECRET)
    path = write_profile(tmp_path, "teachers: {api: {kind: openai, api_model: gpt-4o, api_key_env: POROVER_SET_KEY}}\n"
                                   "evaluate: {checkpoints: [base, base]}\n")
    code, lines = run_check(path, capsys)
    assert code == 1 and len(lines) == 2 and "evaluate.checkpoints[1]" in lines[1]  # the key is fine
    assert SECRET not in "\n".join(lines)


def test_a_loopback_server_needs_no_key(tmp_path, monkeypatch):
    monkeypatch.delenv("POROVER_UNSET_KEY", raising=False)
    path = write_profile(tmp_path, "teachers: {local: {kind: openai, api_model: m, api_key_env: POROVER_UNSET_KEY, "
                                   "base_url: 'http://127.0.0.1:8000/v1'}}\n")
    assert check_profile(path) == []


def test_hub_ids_are_looked_up_only_when_the_hub_is_reachable(tmp_path, monkeypatch):
    path = write_profile(tmp_path, "student: {name: meta-llama/Llama-3.1-8B-Instruct, revision: abc123}\n"
                                   "prompts: {general_eval: {source: hub, name: alpaca_eval}}\n")
    asked = []

    def hub(repo_type, repo_id, revision):
        asked.append((repo_type, repo_id, revision))
        return "no such model on the hub" if repo_type == "model" else None

    assert check_profile(path) == []  # HF_HUB_OFFLINE=1 (conftest): a well-formed id is enough
    problems = check_profile(path, hub=hub)
    assert asked == [("dataset", "tatsu-lab/alpaca_eval", None), ("model", "meta-llama/Llama-3.1-8B-Instruct", "abc123")]
    assert [str(p) for p in problems] == ["student.name = 'meta-llama/Llama-3.1-8B-Instruct': no such model on the hub"]


def test_unpinned_hub_models_and_datasets_are_named_in_a_note():
    from porover_lib.checks import pin_notes
    from porover_lib.config import load_params

    notes = pin_notes(load_params(REPO / "params" / "paper.yaml"))
    assert len(notes) == 1
    for unpinned in ("prompts.toxic_train (bench-llm/or-bench)", "prompts.xstest_eval (Paul/XSTest)"):
        assert unpinned in notes[0]
    for pinned in ("student", "alpaca)", "AdvBench", "judges.safety.model", "judges.reward.model"):
        assert pinned not in notes[0], pinned
    assert pin_notes(load_params(DEFAULT)) == []
