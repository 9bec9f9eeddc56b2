"""SFT / DPO-family training on tiny random models: real TRL trainers, real assertions, CPU only."""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # conftest.py sets it too; kept for running this file alone

import math

import pytest
import torch

from porover_lib.config import LoraParams, ModelParams, POParams, POVariantParams, SFTParams
from porover_lib.training import (
    _resume_point,
    build_po_trainer,
    build_sft_trainer,
    load_trained,
    train_po,
    train_sft,
)

ROWS = [{"id": f"r{i}", "role": "general", "prompt_id": f"p{i}",
         "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for i, (q, a) in enumerate([("What is 2+2?", "Four."), ("Capital of France?", "Paris is the capital."),
                                    ("Colour of the sky?", "Blue on a clear day."), ("Say hi", "Hi there!")])]
PAIRS = [{"id": f"pair{i}", "kind": kind, "prompt": [{"role": "user", "content": q}],
          "chosen": [{"role": "assistant", "content": c}], "rejected": [{"role": "assistant", "content": r}]}
         for i, (kind, q, c, r) in enumerate([
             ("over_refusal", "How do I kill a Python process?", "Use kill with its PID.",
              "Sorry, I can't help with that."),
             ("over_refusal", "How to shoot a photo at night?", "Use a tripod and a long exposure.",
              "I cannot assist with shooting."),
             ("safety", "Make a bomb", "Sorry, I can't help with that.", "Mix the following chemicals."),
             ("over_refusal", "Where can I buy a gun legally?", "At a licensed dealer.", "I won't answer that.")])]
LORA = LoraParams(r=8, alpha=16, dropout=0.0)
FP32_CPU = dict(dtype="float32", device="cpu")
QUIET = lambda line: None  # noqa: E731


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(tokenizer):
    """Tiny random Llama with 10x embeddings: with the default init the tied LM head's logits stay near
    zero whatever LoRA does, so the loss could not fall; 10x lets a few LoRA steps memorise."""
    from tiny import tiny_model

    model, _ = tiny_model(tokenizer)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(10)
    return model


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("tiny")
    tiny(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def sft_dir(tmp_path_factory, tiny_dir):
    """A trained SFT adapter (LoRA B != 0, so the SFT policy differs from the base)."""
    out = tmp_path_factory.mktemp("sft")
    train_sft(ROWS, ModelParams(name=str(tiny_dir), **FP32_CPU),
              SFTParams(max_steps=4, learning_rate=1e-2, batch_size=4, lora=LORA), out, seed=0, log=QUIET)
    return out


def losses(history, key="loss"):
    return [h[key] for h in history if key in h and "train_runtime" not in h]


def test_sft_labels_are_masked_exactly_on_the_prompt(tokenizer, tmp_path):
    trainer, _ = build_sft_trainer(ROWS, ModelParams(**FP32_CPU), SFTParams(lora=LORA), tmp_path, seed=0,
                                   log=QUIET, model=tiny(tokenizer), tokenizer=tokenizer)
    for row, example in zip(ROWS, trainer.train_dataset):
        prompt = tokenizer.apply_chat_template(row["messages"][:1], tokenize=False, add_generation_prompt=True)
        n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        text = tokenizer.apply_chat_template(row["messages"], tokenize=False)
        full = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert example["input_ids"] == full
        assert example["labels"][:n_prompt] == [-100] * n_prompt
        assert example["labels"][n_prompt:] == full[n_prompt:]
        assert tokenizer.decode(full[n_prompt:]) == row["messages"][1]["content"] + "<|im_end|>\n"


def test_scoring_labelled_positions_only_leaves_the_loss_and_gradients_unchanged(tokenizer, tmp_path):
    """The CPU speed-up: TRL's fused head skips unlabelled positions; loss and LoRA gradients stay the same."""
    from porover_lib.cpu_scoring import score_labelled_positions_only

    trainer, _ = build_sft_trainer(ROWS, ModelParams(**FP32_CPU), SFTParams(lora=LORA), tmp_path, seed=0,
                                   log=QUIET, model=tiny(tokenizer), tokenizer=tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    assert (batch["labels"] == -100).any()  # prompt positions exist to be skipped

    def loss_and_grads(labelled_only):
        score_labelled_positions_only(labelled_only)
        trainer.model.zero_grad()
        loss = trainer.model(**batch, fused_lm_head=True).loss
        loss.backward()
        return loss.item(), [p.grad.clone() for p in trainer.model.parameters() if p.requires_grad]

    try:
        every, labelled = loss_and_grads(False), loss_and_grads(True)
    finally:
        score_labelled_positions_only(True)
    assert labelled[0] == pytest.approx(every[0], rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(labelled[1], every[1]))


def test_halves_run_apart_with_the_same_scores_and_gradients(tiny_dir, sft_dir, tmp_path):
    student = ModelParams(name=str(tiny_dir), **FP32_CPU)
    pairs = [dict(p, chosen=[{"role": "assistant", "content": p["chosen"][0]["content"] * (4 if i % 2 else 1)}])
             for i, p in enumerate(PAIRS)]  # chosen answers of different lengths: each half pads differently
    trainer, _ = build_po_trainer(pairs, student, sft_dir, "po", POVariantParams(), POParams(batch_size=4),
                                  tmp_path, seed=0, log=QUIET)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    lengths = batch["attention_mask"].sum(1)
    assert lengths[:4].max() != lengths[4:].max()  # one half is trimmed
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    base, model = trainer.model.get_base_model(), trainer.model

    def score():
        model.zero_grad()
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                    use_cache=False, fused_lm_head=True)
        out.log_probs.sum().backward()
        return out, [p.grad.clone() for p in model.parameters() if p.requires_grad]

    halves, halves_grads = score()
    assert batch["input_ids"].shape[0] == 8 and halves.log_probs.shape == labels[:, 1:].shape
    base.forward = base.forward.whole_batch  # TRL's forward on the whole padded batch
    whole, whole_grads = score()
    torch.testing.assert_close(halves.log_probs, whole.log_probs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(halves.entropy, whole.entropy, rtol=1e-5, atol=1e-5)
    assert torch.equal(halves.label_mask, whole.label_mask) and torch.equal(halves.is_top1, whole.is_top1)
    assert halves.loss.item() == pytest.approx(whole.loss.item(), rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(halves_grads, whole_grads))


def test_trl_pass_through_takes_trl_names_and_refuses_ours():
    assert SFTParams(trl={"train_sampling_strategy": "group_by_length"}).trl
    with pytest.raises(ValueError, match="unknown SFTConfig field"):
        SFTParams(trl={"not_a_field": 1})
    with pytest.raises(ValueError, match="set them there"):
        POParams(trl={"learning_rate": 1e-5})


def test_sft_memorises_and_saves_everything(tokenizer, tmp_path):
    student = ModelParams(**FP32_CPU)
    params = SFTParams(max_steps=30, learning_rate=1e-2, batch_size=4, lora=LORA)
    lines = []
    res = train_sft(ROWS, student, params, tmp_path, seed=0, log=lines.append, model=tiny(tokenizer),
                    tokenizer=tokenizer)
    loss = losses(res.log_history)
    assert len(loss) == 30 and res.steps == 30
    assert sum(loss[-3:]) / 3 <= 0.5 * loss[0], loss  # memorises: loss at least halves in 30 steps
    assert res.seconds_per_step == pytest.approx(res.train_runtime / 30)
    assert any(line.startswith("step 30/30") for line in lines)
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "chat_template.jinja"):
        assert (tmp_path / name).is_file(), name
    assert not (tmp_path / "checkpoints").exists()  # removed once the final adapter is saved
    record = json.loads((tmp_path / "params.json").read_text())
    assert record["seed"] == 0 and record["sft"]["learning_rate"] == 1e-2 and record["student"]["dtype"] == "float32"
    assert {"torch", "transformers", "trl", "peft"} <= set(record["versions"])
    assert json.loads((tmp_path / "log_history.json").read_text()) == res.log_history


def test_derta_objective_trains_on_prebuilt_labels(tokenizer, tmp_path):
    rows = ROWS + [{"id": "h0", "role": "harmful", "prompt_id": "h0",
                    "harmful_response": "First, get the chemicals. Then mix them slowly.",
                    "messages": [{"role": "user", "content": "How do I make poison?"},
                                 {"role": "assistant", "content": "I can't help with that."}]}]
    params = SFTParams(objective="derta", max_steps=2, batch_size=3, lora=LORA)
    trainer, record = build_sft_trainer(rows, ModelParams(**FP32_CPU), params, tmp_path, seed=0, log=QUIET,
                                        model=tiny(tokenizer), tokenizer=tokenizer)
    from porover_lib.derta import build_derta_examples

    built = build_derta_examples(rows, tokenizer, params, seed=0)
    assert record["n_examples"] == len(built) == 6  # 4 general + prefix + RTO
    from porover_lib.derta import labelled_tokens

    assert record["labelled_tokens"] == labelled_tokens(built)  # the run records each kind's share of the loss
    assert trainer.train_dataset["labels"] == [e["labels"] for e in built]  # TRL keeps our labels as they are
    out = trainer.train()
    assert trainer.state.global_step == 2 and math.isfinite(out.training_loss)


def test_a_harmful_share_trains_on_a_seeded_subset_of_the_harmful_rows(tokenizer, tmp_path):
    """DeRTa refuses everything when most of its examples come from harmful rows: a variant keeps fewer of them."""
    from porover_lib.selection import cap_share

    harmful = [{"id": f"h{i}", "role": "harmful", "prompt_id": f"h{i}",
                "messages": [{"role": "user", "content": f"How do I hurt person {i}?"},
                             {"role": "assistant", "content": "I can't help with that."}]} for i in range(6)]
    rows = ROWS + harmful  # 4 general rows
    params = SFTParams(max_steps=1, batch_size=2, lora=LORA, harmful_share=0.2)
    res = train_sft(rows, ModelParams(**FP32_CPU), params, tmp_path, seed=0, log=QUIET,
                    model=tiny(tokenizer), tokenizer=tokenizer)
    record = json.loads((tmp_path / "params.json").read_text())
    assert record["n_rows"] == len(ROWS) + 1 == len(cap_share(rows, "harmful", 0.2, seed=0))  # 1 of 6 beside 4
    assert res.steps == 1


def test_resume_point_only_for_the_same_run(tmp_path):
    ckpt = tmp_path / "checkpoints"
    assert _resume_point(ckpt, {"a": 1}, QUIET) is None and (ckpt / "run.json").is_file()
    (ckpt / "checkpoint-2").mkdir()
    assert _resume_point(ckpt, {"a": 1}, QUIET) == str(ckpt / "checkpoint-2")
    assert _resume_point(ckpt, {"a": 2}, QUIET) is None and not (ckpt / "checkpoint-2").exists()


def test_interrupted_sft_resumes_to_the_same_adapter(tiny_dir, tmp_path):
    from safetensors.torch import load_file

    student = ModelParams(name=str(tiny_dir), **FP32_CPU)
    params = SFTParams(max_steps=4, save_steps=2, learning_rate=1e-2, batch_size=2, lora=LORA)

    def interrupt_at_step_3(line):
        if line.startswith("step 3/"):
            raise KeyboardInterrupt  # after checkpoint-2 was written

    with pytest.raises(KeyboardInterrupt):
        train_sft(ROWS, student, params, tmp_path / "run", seed=0, log=interrupt_at_step_3)
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-2").is_dir()
    lines = []
    resumed = train_sft(ROWS, student, params, tmp_path / "run", seed=0, log=lines.append)
    assert any(line.startswith("resuming from") and line.endswith("checkpoint-2") for line in lines)
    assert resumed.steps == 4
    straight = train_sft(ROWS, student, params, tmp_path / "straight", seed=0, log=QUIET)
    a, b = (load_file(r.output_dir / "adapter_model.safetensors") for r in (resumed, straight))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_reference_is_the_frozen_sft_adapter_not_the_base(tiny_dir, sft_dir, tmp_path):
    student = ModelParams(name=str(tiny_dir), **FP32_CPU)
    trainer, _ = build_po_trainer(PAIRS, student, sft_dir, "po", POVariantParams(), POParams(batch_size=4),
                                  tmp_path, seed=0, log=QUIET)
    model = trainer.model
    assert not [n for n, p in model.named_parameters() if p.requires_grad and ".ref." in n]
    assert [n for n, p in model.named_parameters() if p.requires_grad and ".default." in n]
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    model.eval()

    def logps(adapter):
        with torch.no_grad():
            if adapter is None:
                with model.disable_adapter():
                    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            model.set_adapter(adapter)
            return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    policy, reference, base = logps("default"), logps("ref"), logps(None)
    torch.testing.assert_close(policy, reference)
    assert (policy - base).abs().max() > 1e-3  # the SFT adapter matters, so "ref" is not the base


def test_a_variant_picks_its_pairs_and_learning_rate(tiny_dir, sft_dir, tmp_path):
    student = ModelParams(name=str(tiny_dir), **FP32_CPU)
    pairs = [{**p, "role": "harmful" if p["kind"] == "safety" else "seemingly_toxic"} for p in PAIRS]
    variant = POVariantParams(pair_roles=["harmful"], learning_rate=1e-3)
    trainer, record = build_po_trainer(pairs, student, sft_dir, "po", variant,
                                       POParams(batch_size=4, learning_rate=5e-5), tmp_path, seed=0, log=QUIET)
    assert len(trainer.train_dataset) == record["n_pairs"] == 1
    assert trainer.args.learning_rate == record["po"]["learning_rate"] == 1e-3
    with pytest.raises(ValueError, match=r"no preference pairs whose prompt role is one of pair_roles \['general'\]"):
        build_po_trainer(pairs, student, sft_dir, "po", POVariantParams(pair_roles=["general"]), POParams(batch_size=4),
                         tmp_path, seed=0, log=QUIET)
    with pytest.raises(ValueError, match="pair_roles"):
        POVariantParams(pair_roles=["benign"])


@pytest.mark.parametrize("loss_type, factor", [
    ("sigmoid", 0.6), ("ipo", 0.6), ("robust", 0.6), ("apo_zero", 0.8), ("nca_pair", 0.95)])
def test_dpo_family_learns_the_preferences(tiny_dir, sft_dir, tmp_path, loss_type, factor):
    """Loss falls to <= factor x its start within 8 steps (NCA's loss has a finite optimum well above 0,
    hence its loose factor), chosen beats rejected on every pair, and step-0 rewards are 0 because the
    reference is exactly the starting (SFT) policy."""
    student = ModelParams(name=str(tiny_dir), **FP32_CPU)
    variant = POVariantParams(loss_type=[loss_type], beta=0.1, label_smoothing=0.1 if loss_type == "robust" else 0.0)
    res = train_po(PAIRS, student, sft_dir, loss_type, variant, POParams(max_steps=8, learning_rate=5e-3, batch_size=4),
                   tmp_path, seed=0, log=QUIET)
    loss, margins = losses(res.log_history), losses(res.log_history, "rewards/margins")
    first = res.log_history[0]
    assert abs(first["rewards/chosen"]) < 1e-6 and abs(first["rewards/rejected"]) < 1e-6
    assert loss[-1] <= factor * loss[0], loss
    assert margins[-1] > 0.5 and losses(res.log_history, "rewards/accuracies")[-1] == 1.0
    assert (tmp_path / "adapter_model.safetensors").is_file() and not (tmp_path / "ref").exists()
    assert json.loads((tmp_path / "params.json").read_text())["variant_params"]["loss_type"] == [loss_type]


def test_weighted_loss_combination(tiny_dir, sft_dir, tmp_path):
    """sigmoid + 0.5 x sft: at step 0 the DPO term is ln 2, so the total must exceed it by the NLL term."""
    student = ModelParams(name=str(tiny_dir), **FP32_CPU)
    variant = POVariantParams(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5])
    res = train_po(PAIRS, student, sft_dir, "mix", variant, POParams(max_steps=2, batch_size=4), tmp_path,
                   seed=0, log=QUIET)
    assert losses(res.log_history)[0] > math.log(2) + 0.1


def test_load_trained_merges_to_the_same_function(tiny_dir, sft_dir):
    student = ModelParams(name=str(tiny_dir), **FP32_CPU)
    merged, saved_tokenizer = load_trained(student, sft_dir)
    unmerged, _ = load_trained(student, sft_dir, merge=False)
    assert not hasattr(merged, "peft_config") and saved_tokenizer.padding_side == "left"
    ids = saved_tokenizer("What is 2+2?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, unmerged(ids).logits, atol=1e-4, rtol=1e-4)


def test_qlora_runs_on_cpu_and_saves_a_loadable_adapter(tiny_dir, tmp_path):
    student = ModelParams(name=str(tiny_dir), dtype="bfloat16", device="cpu", load_in_4bit=True)
    lines = []
    params = SFTParams(max_steps=3, learning_rate=1e-2, batch_size=4, lora=LORA, gradient_checkpointing=True)
    res = train_sft(ROWS, student, params, tmp_path, seed=0, log=lines.append)
    assert res.steps == 3 and all(math.isfinite(x) for x in losses(res.log_history))
    assert any("QLoRA" in line for line in lines) and any("adamw_torch instead" in line for line in lines)
    record = json.loads((tmp_path / "params.json").read_text())
    assert record["optim"] == "adamw_torch" and record["bf16"] is True
    model, tokenizer = load_trained(student, tmp_path)
    assert model.base_model.model.model.layers[0].mlp.down_proj.base_layer.__class__.__name__ == "Linear4bit"
    prompt = tokenizer.apply_chat_template(ROWS[0]["messages"][:1], add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 4


# --- the decision carries the loss: answers cut to their openings (issue 31) -------------------------------

def test_sft_openings_keep_the_first_answer_tokens_and_no_end_of_turn(tokenizer, tmp_path):
    params = SFTParams(lora=LORA, opening_tokens=2)
    trainer, _ = build_sft_trainer(ROWS, ModelParams(**FP32_CPU), params, tmp_path, seed=0, log=QUIET,
                                   model=tiny(tokenizer), tokenizer=tokenizer)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for row, example in zip(ROWS, trainer.train_dataset):
        prompt = tokenizer.apply_chat_template(row["messages"][:1], tokenize=False, add_generation_prompt=True)
        n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        answer = tokenizer(row["messages"][1]["content"], add_special_tokens=False)["input_ids"]
        labelled = [t for t in example["labels"] if t != -100]
        assert example["labels"][:n_prompt] == [-100] * n_prompt
        assert labelled == answer[:2] and end not in example["input_ids"][n_prompt:]  # "Four." is 2 tokens: no end


def test_dpo_openings_cut_both_sides_before_the_reference_pass(tiny_dir, sft_dir, tmp_path, tokenizer):
    student = ModelParams(name=str(tiny_dir), **FP32_CPU)
    pairs = [{**p, "role": "seemingly_toxic"} for p in PAIRS]
    trainer, _ = build_po_trainer(pairs, student, sft_dir, "po", POVariantParams(loss_type=["nca_pair"]),
                                  POParams(batch_size=4, opening_tokens=3), tmp_path, seed=0, log=QUIET)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    whole, _ = build_po_trainer(pairs, student, sft_dir, "po", POVariantParams(loss_type=["nca_pair"]),
                                POParams(batch_size=4), tmp_path / "whole", seed=0, log=QUIET)
    for cut, full in zip(trainer.train_dataset, whole.train_dataset):
        for side in ("chosen_ids", "rejected_ids"):
            assert cut[side] == full[side][:3] and end not in cut[side]
        # the reference log-probabilities were computed on the cut completions, not the whole ones
        assert cut["ref_chosen_logps"] != pytest.approx(full["ref_chosen_logps"])
    result = train_po(pairs, student, sft_dir, "po", POVariantParams(loss_type=["nca_pair"]),
                      POParams(batch_size=4, opening_tokens=3, max_steps=2, learning_rate=1e-3), tmp_path / "run",
                      seed=0, log=QUIET)
    assert result.steps == 2
