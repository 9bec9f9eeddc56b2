"""Rows a checkpoint wrote belong to that checkpoint: a retrained adapter re-samples (issue 29.2), and the
student served by an OpenAI-compatible server, one adapter name per checkpoint, writes what the local
student would (issue 29.4)."""
from pathlib import Path

import pytest
from servers import ChatServer, model_responder
from tiny import save_tiny_model

from porover_lib import stages
from porover_lib.backends import GenerationError
from porover_lib.config import BackendParams, load_params
from porover_lib.generation import HFBackend
from porover_lib.io import read_jsonl
from porover_lib.prompts import PromptRecord

PARAMS = Path(__file__).resolve().parents[1] / "params"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def adapter(base: Path, out: Path, seed: int) -> Path:
    """A random (non-zero) LoRA adapter on the tiny student: each seed says different things."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    root = tmp_path_factory.mktemp("student")
    base = save_tiny_model(root / "base", seed=0)
    return base, adapter(base, root / "sft_a", 1), adapter(base, root / "sft_b", 2)


@pytest.fixture
def params(student):
    params = load_params(PARAMS / "smoke.yaml")
    params.student = params.student.model_copy(update={"name": str(student[0]), "dtype": "float32", "device": "cpu"})
    params.preference.sampling = params.preference.sampling.model_copy(update={"n": 2, "max_new_tokens": 6})
    params.evaluate.sampling = params.evaluate.sampling.model_copy(update={"max_new_tokens": 6})
    return params


def records(count: int, prefill: str = "") -> list[PromptRecord]:
    return [PromptRecord(id=f"q{i}", prompt=f"How do I fix problem {i}?", source="test", category="c", label="safe",
                         split="train", role="seemingly_toxic", prefill=prefill) for i in range(count)]



def test_retrained_to_the_same_weights_keeps_its_fingerprint(student, tmp_path):
    """The key once hashed the run's records (times in log_history.json and params.json) and adapter_config.json as
    PEFT wrote it (`target_modules`, a set, in a new order each run): the same weights got a new key every run,
    so stages 04 and 06 generated again what they had cached."""
    import json
    import shutil

    _, first, _ = student
    again = shutil.copytree(first, tmp_path / "again")
    (again / "log_history.json").write_text(json.dumps([{"loss": 1.0, "train_runtime": 12.5}]))
    (again / "params.json").write_text(json.dumps({"train_runtime": 99.0}))
    config = json.loads((again / "adapter_config.json").read_text())
    config["target_modules"] = list(reversed(config["target_modules"]))
    (again / "adapter_config.json").write_text(json.dumps(config, indent=4))
    assert stages.fingerprint(again) == stages.fingerprint(first)
    (again / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")  # what generation reads counts
    assert stages.fingerprint(again) != stages.fingerprint(first)


def test_a_retrained_adapter_samples_again(params, student, tmp_path):
    """Stage 04 once keyed the student's rows by name and settings only: after stage 03 retrained, POROver's
    pairs came from the previous adapter's refusals."""
    _, first, second = student
    sets = {"toxic_train": records(3)}
    before = stages.student_samples(params, sets, first, tmp_path)
    after = stages.student_samples(params, sets, second, tmp_path)
    assert before["adapter"].nunique() == after["adapter"].nunique() == 1
    assert before["adapter"].iloc[0] == stages.fingerprint(first) != after["adapter"].iloc[0]
    assert before["completion"].tolist() != after["completion"].tolist()
    assert list(tmp_path.glob("student__toxic_train.jsonl.stale-*"))  # the first adapter's rows, set aside
    again = stages.student_samples(params, sets, second, tmp_path)  # same adapter: read back, not re-sampled
    assert again["completion"].tolist() == after["completion"].tolist()
    assert len(list(tmp_path.glob("*.stale-*"))) == 1


def test_the_served_student_answers_as_the_local_one_under_each_checkpoint_name(params, student, tmp_path):
    """`vllm serve <student> --enable-lora --lora-modules sft=...`: the base under the server's `api_model`, each
    adapter under its checkpoint name; the attack's unfinished assistant turn goes out with vLLM's
    continue_final_message. The loopback server answers with the local model of the requested name."""
    from porover_lib.stages import load_checkpoint

    _, first, _ = student
    backends = {"base-served": HFBackend(*load_checkpoint(params.student, None)),
                "sft": HFBackend(*load_checkpoint(params.student, first))}
    for b in backends.values():
        b.tokenizer.padding_side = "left"
    responders = {name: model_responder(b) for name, b in backends.items()}

    def respond(count, request):
        return responders[request["body"]["model"]](count, request)

    attack = records(2, prefill="Sure, first you")
    with ChatServer(respond, max_requests=40) as server:
        served = params.model_copy(update={"student_server": BackendParams(
            kind="openai", base_url=server.url, api_model="base-served", continue_final_message=True)})
        rows = stages.evaluation_responses(served, {"base": None, "sft": first},
                                           {"toxic_eval": records(3), "completion_attack": attack}, tmp_path / "served")
        bodies = [r["body"] for r in server.requests]
    here = stages.evaluation_responses(params, {"base": None, "sft": first},
                                       {"toxic_eval": records(3), "completion_attack": attack}, tmp_path / "local")
    key = ["checkpoint", "set", "prompt_id"]
    assert rows.sort_values(key)["completion"].tolist() == here.sort_values(key)["completion"].tolist()
    assert {b["model"] for b in bodies} == {"base-served", "sft"}
    continued = [b for b in bodies if b["messages"][-1]["role"] == "assistant"]
    assert len(continued) == 4 and all(b["messages"][-1]["content"] == "Sure, first you" for b in continued)
    assert all(b.get("continue_final_message") is True and b.get("add_generation_prompt") is False for b in continued)
    sft_rows = rows[rows["checkpoint"] == "sft"]
    assert set(sft_rows["backend"]) == {"openai"} and set(sft_rows["adapter"]) == {stages.fingerprint(first)}


def test_a_server_without_continuation_refuses_the_attack_with_a_clear_message(params, student, tmp_path):
    _, first, _ = student
    served = params.model_copy(update={"student_server": BackendParams(
        kind="openai", base_url="http://127.0.0.1:9/v1", api_model="base-served")})
    with pytest.raises(GenerationError, match="continue_final_message: true"):
        stages.evaluation_responses(served, {"sft": first}, {"completion_attack": records(1, prefill="Sure")}, tmp_path)


def test_rows_of_a_checkpoint_record_its_adapter(params, student, tmp_path):
    _, first, _ = student
    stages.evaluation_responses(params, {"base": None, "sft": first}, {"toxic_eval": records(2)}, tmp_path)
    written = {p.name.split("__")[0]: read_jsonl(p) for p in tmp_path.glob("*.jsonl")}
    assert {r["adapter"] for r in written["sft"]} == {stages.fingerprint(first)}
    assert {r["adapter"] for r in written["base"]} == {None}
