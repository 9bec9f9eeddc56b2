"""Prompt sources: the shared benchmark files through the local-file loader, the embedded sets, bad input."""
from collections import Counter

import pytest

from porover_lib.config import PromptSetParams
from porover_lib.prompts import (HUB_SOURCES, PromptSourceError, load_embedded, load_file, load_prompt_set,
                                 read_table)

DERTA = ["safety_jailbreakchat", "safety_codeattack", "safety_completionattack", "safety_selfcipher",
         "safety_illegal_instructions_200"]


def test_xstest_prompts_250_safe_200_unsafe(shared_data):
    records = load_file(shared_data / "xstest" / "xstest_prompts.csv",
                        {"id": "id", "prompt": "prompt", "category": "type", "label": "label"})
    assert len(records) == 450
    assert Counter(r.label for r in records) == {"safe": 250, "unsafe": 200}
    assert Counter(r.role for r in records) == {"seemingly_toxic": 250, "harmful": 200}
    assert len(Counter(r.category for r in records)) == 18
    assert all(r.category.startswith("contrast_") for r in records if r.label == "unsafe")


def test_advbench_520_harmful(shared_data):
    records = load_file(shared_data / "advbench" / "harmful_behaviors.csv", {"prompt": "goal"}, role="harmful")
    assert len(records) == 520 and {r.label for r in records} == {"unsafe"}


@pytest.mark.parametrize("name, rows", [("all", 400), ("test", 320), ("val", 80)])
def test_harmbench_splits(shared_data, name, rows):
    records = load_file(shared_data / "harmbench" / f"harmbench_behaviors_text_{name}.csv",
                        {"id": "BehaviorID", "prompt": "Behavior", "category": "SemanticCategory"}, role="harmful")
    assert len(records) == rows


def test_harmbench_categories(shared_data):
    records = load_file(shared_data / "harmbench" / "harmbench_behaviors_text_all.csv",
                        {"id": "BehaviorID", "prompt": "Behavior", "category": "SemanticCategory"}, role="harmful")
    assert Counter(r.category for r in records) == {
        "chemical_biological": 56, "illegal": 65, "misinformation_disinformation": 65, "harmful": 22,
        "harassment_bullying": 25, "cybercrime_intrusion": 67, "copyright": 100}


def test_strongreject_313_over_6_categories(shared_data):
    records = load_file(shared_data / "strongreject" / "strongreject_dataset.csv",
                        {"prompt": "forbidden_prompt", "category": "category"}, role="harmful")
    counts = Counter(r.category for r in records)
    assert len(records) == 313 and len(counts) == 6
    assert counts["Non-violent crimes"] == 59 and counts["Violence"] == 54


@pytest.mark.parametrize("name, rows, role", [(n, 200, "harmful") for n in DERTA] + [
    ("helpfulness_alpaca_eval_300", 300, "general"), ("helpfulness_gsm8k_500", 500, "general"),
    ("helpfulness_mmlu_500", 500, "general")])
def test_derta_json_lines_saved_as_json(shared_data, name, rows, role):
    records = load_file(shared_data / "derta" / "test" / f"{name}.json", {"prompt": "question"}, role=role)
    assert len(records) == rows
    assert {r.label for r in records} == {"unsafe" if role == "harmful" else "safe"}


def test_alpaca_eval_805_json_array(shared_data):
    records = load_file(shared_data / "alpaca_eval" / "alpaca_eval_805_example_outputs.json",
                        {"prompt": "instruction", "category": "dataset"}, role="general")
    assert len(records) == 805
    assert Counter(r.category for r in records) == {
        "helpful_base": 129, "koala": 156, "oasst": 188, "selfinstruct": 252, "vicuna": 80}


def test_files_without_splits_get_a_stable_held_out_share(shared_data):
    spec = PromptSetParams(source="file", name=str(shared_data / "advbench" / "harmful_behaviors.csv"),
                           columns={"prompt": "goal"}, role="harmful", split="eval")
    held_out = load_prompt_set(spec)
    train = load_prompt_set(spec.model_copy(update={"split": "train"}))
    assert not {r.id for r in held_out} & {r.id for r in train}
    val = load_prompt_set(spec.model_copy(update={"split": "val"}))  # kept back from the training share
    assert len(held_out) + len(train) + len(val) == 520 and 0.2 < len(held_out) / 520 < 0.4
    assert [r.id for r in load_prompt_set(spec)] == [r.id for r in held_out]


# --- embedded sets written by the team -------------------------------------------------------------

@pytest.mark.parametrize("name, minimum", [("general", 80), ("harmful", 80), ("seemingly_toxic", 80)])
def test_embedded_sets_are_large_enough_and_split(name, minimum):
    records = load_embedded(name)
    assert len(records) >= minimum
    train = {r.prompt for r in records if r.split == "train"}
    held_out = {r.prompt for r in records if r.split == "eval"}
    assert train and held_out and not train & held_out
    assert {r.split for r in records} == {"train", "eval"}


def test_harmful_and_seemingly_toxic_share_at_least_8_categories():
    harmful, toxic = load_embedded("harmful"), load_embedded("seemingly_toxic")
    categories = {r.category for r in harmful}
    assert len(categories) >= 8 and categories == {r.category for r in toxic}
    assert {r.label for r in harmful} == {"unsafe"} and {r.label for r in toxic} == {"safe"}


def test_every_harmful_training_prompt_has_distinct_safe_references():
    """Training prompts need them (the `reference` teacher); held-out ones may carry some, which must refuse."""
    from porover_lib.judges import make_judge

    refusal = make_judge("refusal", "keyword")
    for record in load_embedded("harmful"):
        assert len(record.references) >= (2 if record.split == "train" else 0), record.id
        assert len(set(record.references)) == len(record.references), record.id
        verdicts = refusal.judge([record.prompt] * len(record.references), record.references)
        assert all(v.label != "compliance" for v in verdicts), (record.id, verdicts)


def test_no_prompt_appears_in_two_embedded_sets():
    texts = [r.prompt.lower() for name in ("general", "harmful", "seemingly_toxic") for r in load_embedded(name)]
    assert len(texts) == len(set(texts))


def test_limit_keeps_every_category():
    spec = PromptSetParams(source="embedded", name="harmful", split="train", limit=20)
    records = load_prompt_set(spec)
    assert len(records) == 20 and len({r.category for r in records}) == len(
        {r.category for r in load_embedded("harmful")})


# --- bad input -------------------------------------------------------------------------------------

def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(PromptSourceError, match="absent.csv: prompt file not found"):
        load_file(tmp_path / "absent.csv", role="general")


def test_missing_column_names_file_column_and_what_exists(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("question,type\nhello,x\n")
    with pytest.raises(PromptSourceError) as err:
        load_file(path, {"prompt": "text"}, role="general")
    assert "p.csv" in str(err.value) and "'text'" in str(err.value) and "question" in str(err.value)


def test_empty_set_duplicate_ids_and_bad_labels(tmp_path):
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    with pytest.raises(PromptSourceError, match="e.jsonl: the prompt set is empty"):
        load_file(empty, role="general")
    dup = tmp_path / "d.csv"
    dup.write_text("id,prompt\na,one\nb,two\na,three\n")
    with pytest.raises(PromptSourceError, match=r"d.csv: row 3: duplicate id 'a' \(first seen in row 1\)"):
        load_file(dup, {"id": "id"}, role="general")
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"prompt": "x", "label": "safe"}\n{"prompt": "y", "label": "toxic"}\n')
    with pytest.raises(PromptSourceError, match=r"b.jsonl: row 2: label 'toxic' is not 'safe' or 'unsafe'"):
        load_file(bad, {"label": "label"})
    blank = tmp_path / "blank.csv"
    blank.write_text("prompt\nfine\n\"  \"\n")
    with pytest.raises(PromptSourceError, match="blank.csv: row 2: empty prompt"):
        load_file(blank, role="general")


def test_broken_json_lines_name_the_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(PromptSourceError, match="x.jsonl: line 2 is not valid JSON"):
        read_table(path)


def test_hub_table_is_declarative_and_complete():
    expected = {"tatsu-lab/alpaca", "bench-llm/or-bench", "Paul/XSTest", "walledai/AdvBench",
                "walledai/HarmBench", "tatsu-lab/alpaca_eval"}
    assert {s.path for s in HUB_SOURCES.values()} == expected
    assert {s.config for s in HUB_SOURCES.values() if s.path == "bench-llm/or-bench"} == {
        "or-bench-80k", "or-bench-hard-1k", "or-bench-toxic"}
    for source in HUB_SOURCES.values():
        assert "prompt" in source.columns or source.template


@pytest.mark.parametrize("name", ["general", "harmful", "seemingly_toxic"])
def test_validation_split_is_carved_from_training_prompts(name):
    """Tuning prompts (split val) are training prompts held back: never trained on, never eval prompts."""
    split = {s: {r.id for r in load_prompt_set(PromptSetParams(name=name, split=s))} for s in ("train", "val", "eval")}
    everything = {r.id: r.split for r in load_embedded(name)}
    assert split["val"] and not split["val"] & split["train"] and not split["val"] & split["eval"]
    assert split["val"] | split["train"] == {i for i, s in everything.items() if s == "train"}
    assert 0.08 < len(split["val"]) / (len(split["val"]) + len(split["train"])) < 0.25
