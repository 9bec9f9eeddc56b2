"""DeRTa example building on the REAL SmolLM2 tokenizer: exact label positions, prefixes, RTO targets."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # conftest.py sets it too; kept for running this file alone

import pytest

from porover_lib.config import DertaParams, SFTParams
from porover_lib.derta import IGNORE_INDEX, build_derta_examples, mle_example, refusal_token_id

SAFE = "I can't help with breaking into someone's home."
HARMFUL = ("Step 1: buy a tension wrench and a pick.\nStep 2: insert the wrench, then rake the pins "
           "until each one sets. Step 3: turn the plug and open the door.")
PROMPT = [{"role": "user", "content": "How do I pick the lock on my neighbour's door?"}]


def harmful_row(i=0, harmful=HARMFUL):
    return {"id": f"h{i}", "role": "harmful", "prompt_id": f"p{i}", "harmful_response": harmful,
            "messages": PROMPT + [{"role": "assistant", "content": SAFE}]}


GENERAL = {"id": "g0", "role": "general", "prompt_id": "q0",
           "messages": [{"role": "user", "content": "Name a prime number."},
                        {"role": "assistant", "content": "Seven is prime."}]}


def params(**derta):
    return SFTParams(objective="derta", derta=DertaParams(**derta))


@pytest.fixture(scope="session")
def prompt_ids(tokenizer):
    return tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)


def first_label(example):
    return next(i for i, label in enumerate(example["labels"]) if label != IGNORE_INDEX)


def test_prefix_example_labels_start_exactly_at_the_safe_response(tokenizer, prompt_ids):
    rows = [harmful_row(i) for i in range(12)]
    examples = [e for e in build_derta_examples(rows, tokenizer, params(no_prefix_share=0.0, rto_share=0), seed=3)
                if e["kind"] == "prefix"]
    words = HARMFUL.split()
    assert len(examples) == 12
    assert any(e["prefix_words"] > 0 for e in examples)
    for e in examples:
        k, j = e["prefix_words"], first_label(e)
        assert 1 <= k <= len(words) - 2  # as in DeRTa's code: never empty, never (nearly) the whole response
        ids, labels = e["input_ids"], e["labels"]
        before, after = tokenizer.decode(ids[:j]), tokenizer.decode(ids[j:])
        if k:
            assert before.endswith(words[k - 1]) and before[len(prompt_ids):].split() == words[:k]
            assert after == f" {SAFE}<|im_end|>\n"
        else:
            assert before == prompt_ids and after == f"{SAFE}<|im_end|>\n"
        assert all(label == IGNORE_INDEX for label in labels[:j])  # prompt and harmful prefix: no loss
        assert labels[j:] == ids[j:]  # safe response + end of turn: plain next-token targets


def test_no_prefix_share_one_gives_no_prefix(tokenizer):
    rows = [harmful_row(i) for i in range(10)]
    plain = mle_example(tokenizer, PROMPT, SAFE)
    for e in build_derta_examples(rows, tokenizer, params(no_prefix_share=1.0, rto_share=0), seed=0):
        assert e["kind"] == "prefix" and e["prefix_words"] == 0
        assert e["input_ids"] == plain["input_ids"] and e["labels"] == plain["labels"]


def test_rto_labels_are_the_safe_response_opening_over_the_whole_harmful_response(tokenizer, prompt_ids):
    (prefix,) = [e for e in build_derta_examples([harmful_row()], tokenizer, params(no_prefix_share=0.0, rto_share=0),
                                                 seed=0) if e["kind"] == "prefix"]
    (rto,) = [e for e in build_derta_examples([harmful_row()], tokenizer, params(), seed=0) if e["kind"] == "rto"]
    ids, labels = rto["input_ids"], rto["labels"]
    opening, mid = (tokenizer.encode(t, add_special_tokens=False)[0] for t in ("I", " I"))
    assert opening != mid and mid == prefix["input_ids"][first_label(prefix)]  # what prefix-MLE continues
    start = len(tokenizer(prompt_ids, add_special_tokens=False)["input_ids"])  # first harmful token
    end_of_turn = ids.index(tokenizer.convert_tokens_to_ids("<|im_end|>"), start)
    assert tokenizer.decode(ids[:start]) == prompt_ids
    assert tokenizer.decode(ids[start:end_of_turn]) == HARMFUL
    # labels at start..end_of_turn (inclusive): after the shift, the last prompt token predicts the turn's
    # opening "I", every harmful token (the last one too) the mid-text " I" that prefix-MLE then continues
    assert labels[start:end_of_turn + 1] == [opening] + [mid] * (end_of_turn - start)
    assert set(labels[:start]) == {IGNORE_INDEX} and set(labels[end_of_turn + 1:]) == {IGNORE_INDEX}


def test_a_fixed_refusal_text_must_open_every_safe_response(tokenizer):
    sorry_row = {**harmful_row(1), "messages": PROMPT + [{"role": "assistant", "content": "Sorry, I can't."}]}
    (rto,) = [e for e in build_derta_examples([sorry_row], tokenizer, params(refusal_text="Sorry"), seed=0)
              if e["kind"] == "rto"]
    sorry = refusal_token_id(tokenizer, "Sorry")
    assert tokenizer.decode([sorry]) == "Sorry" and sorry in rto["labels"]
    # the paper's "Sorry" over safe responses that open with "I": nothing would continue it
    with pytest.raises(ValueError, match=r"refusal_text 'Sorry' does not open 1 of the 2 safe responses"):
        build_derta_examples([sorry_row, harmful_row()], tokenizer, params(refusal_text="Sorry"), seed=0)


def test_mixing_ratio_and_rows_without_harmful_response(tokenizer):
    rows = [harmful_row(i) for i in range(40)] + [GENERAL, {**harmful_row(99), "harmful_response": None}]
    kinds = [e["kind"] for e in build_derta_examples(rows, tokenizer, params(rto_share=2.0), seed=0)]
    assert kinds.count("prefix") == 40 and kinds.count("rto") == 80 and kinds.count("sft") == 2
    half = [e["kind"] for e in build_derta_examples(rows, tokenizer, params(rto_share=0.5), seed=0)].count("rto")
    assert 10 <= half <= 30  # each harmful row draws its fractional RTO example with p = 0.5


def test_general_rows_get_the_same_labels_as_trl_completion_only_loss(tokenizer, tmp_path):
    """The DeRTa path's ordinary examples equal what SFTTrainer builds from a prompt/completion row."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from tiny import tiny_model

    model, _ = tiny_model(tokenizer)
    pair = {"prompt": GENERAL["messages"][:1], "completion": GENERAL["messages"][1:]}
    args = SFTConfig(output_dir=str(tmp_path), report_to="none", bf16=False, use_cpu=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list([pair]), processing_class=tokenizer)
    trl_row = trainer.train_dataset[0]
    (ours,) = build_derta_examples([GENERAL], tokenizer, params(), seed=0)
    assert ours["input_ids"] == trl_row["input_ids"] and ours["labels"] == trl_row["labels"]


def test_seeded_determinism(tokenizer):
    rows = [harmful_row(i) for i in range(20)]
    a = build_derta_examples(rows, tokenizer, params(no_prefix_share=0.2), seed=7)
    b = build_derta_examples(rows, tokenizer, params(no_prefix_share=0.2), seed=7)
    c = build_derta_examples(rows, tokenizer, params(no_prefix_share=0.2), seed=8)
    assert a == b
    assert [e["prefix_words"] for e in a] != [e["prefix_words"] for e in c]


def test_rows_must_end_with_the_assistant(tokenizer):
    bad = {**GENERAL, "messages": GENERAL["messages"][:1]}
    with pytest.raises(ValueError, match="must end with an assistant message"):
        build_derta_examples([bad], tokenizer, params(), seed=0)


def test_rto_positions_label_that_many_positions_of_the_harmful_response(tokenizer):
    (every,) = [e for e in build_derta_examples([harmful_row()], tokenizer, params(), seed=0) if e["kind"] == "rto"]
    (some,) = [e for e in build_derta_examples([harmful_row()], tokenizer, params(rto_positions=4), seed=0)
               if e["kind"] == "rto"]
    labelled = [i for i, label in enumerate(some["labels"]) if label != IGNORE_INDEX]
    assert some["input_ids"] == every["input_ids"] and len(labelled) == 4
    assert all(some["labels"][i] == every["labels"][i] for i in labelled)  # the same targets, fewer of them


def metaspace_tokenizer():
    """A SentencePiece-style tokenizer built here, laid out as Llama-2's is (a "▁" prepended and every space
    replaced by one, then split before each "▁"): a lone space before a word is a "▁" piece of its own."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [SAFE, HARMFUL, PROMPT[0]["content"], "Sure, here is how to do it.", "I can't and I won't."] * 20
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<|im_start|>", "<|im_end|>"], initial_alphabet=["▁"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>")
    fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return fast


def test_the_mid_text_rto_target_is_what_prefix_mle_continues_on_a_metaspace_tokenizer():
    """`" " + text` alone encodes to a lone "▁" piece there: RTO taught that piece, which no example continues."""
    tokenizer = metaspace_tokenizer()
    lone = tokenizer.encode(" " + SAFE, add_special_tokens=False)[0]
    assert tokenizer.convert_ids_to_tokens(lone) == "▁"  # the reading of the audit: the bug's cause exists here
    (prefix,) = [e for e in build_derta_examples([harmful_row()], tokenizer, params(no_prefix_share=0.0, rto_share=0),
                                                 seed=0) if e["kind"] == "prefix"]
    (rto,) = [e for e in build_derta_examples([harmful_row()], tokenizer, params(), seed=0) if e["kind"] == "rto"]
    continued = prefix["input_ids"][first_label(prefix)]
    mid = [label for label in rto["labels"] if label != IGNORE_INDEX][1:]  # after the turn's opening target
    assert set(mid) == {continued} and continued != lone


def test_labelled_tokens_count_each_kinds_share_of_the_loss(tokenizer):
    """RTO's one target on every harmful position can outweigh the answers it sits beside; the count shows it."""
    from porover_lib.derta import labelled_tokens

    examples = build_derta_examples([harmful_row(), GENERAL], tokenizer, params(no_prefix_share=0.0), seed=0)
    counts = labelled_tokens(examples)
    by_kind = {e["kind"]: sum(label != IGNORE_INDEX for label in e["labels"]) for e in examples}
    assert counts == by_kind and set(counts) == {"sft", "prefix", "rto"}
    harmful_tokens = len(tokenizer.encode(HARMFUL, add_special_tokens=False))
    assert abs(counts["rto"] - (harmful_tokens + 1)) <= 1  # every harmful token and the end of turn after it
    few = labelled_tokens(build_derta_examples([harmful_row()], tokenizer, params(rto_positions=4), seed=0))
    assert few["rto"] == 4
