"""HF, reference and vLLM backends; JSONL io; overgeneration that survives a real SIGKILL."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from porover_lib.config import BackendParams, ModelParams, SamplingParams
from porover_lib.backends import GenerationError, ReferenceBackend, vllm_engine_kwargs, vllm_sampling_kwargs
from porover_lib.generation import HFBackend, NucleusSampler, make_backend, overgenerate, use_grouped_eager_attention
from porover_lib.io import JsonlError, append_jsonl, read_jsonl, repair_jsonl_tail, write_jsonl
from porover_lib.prompts import PromptRecord
from tiny import save_tiny_model, tiny_model

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def record(i: int, prompt: str | None = None, references=(), role="general") -> PromptRecord:
    return PromptRecord(id=f"p{i:03d}", prompt=prompt or f"prompt {i}:" + " tell me more" * (i % 7),
                        source="test", category="cat", label="safe", split="train", role=role,
                        references=list(references))


@pytest.fixture(scope="module")
def hf(tokenizer):
    model, tok = tiny_model(tokenizer, seed=2)
    return HFBackend(model, tok, "tiny")


# ------------------------------------------------------------------------------------------ hf


def test_n_completions_per_record_with_token_counts(hf):
    out = hf.generate([record(i) for i in range(3)], SamplingParams(n=2, temperature=1.0, max_new_tokens=5), seed=0)
    assert [len(o) for o in out] == [2, 2, 2]
    for i, completions in enumerate(out):
        rendered = hf.render([{"role": "user", "content": record(i).prompt}])
        assert all(c.prompt_tokens == len(hf.tokenizer(rendered, add_special_tokens=False)["input_ids"])
                   for c in completions)
        assert all(c.finish_reason == "length" and c.completion_tokens == 5 for c in completions)


def test_batched_greedy_equals_one_prompt_at_a_time(hf):
    prompts = [record(i, "hi" if i == 0 else None) for i in range(6)]  # lengths differ: rows get left padding
    batched = hf.generate(prompts, SamplingParams(max_new_tokens=10, batch_size=6), seed=0)
    single = [hf.generate([p], SamplingParams(max_new_tokens=10, batch_size=1), seed=0)[0] for p in prompts]
    assert len({c[0].prompt_tokens for c in single}) > 1
    assert batched == single


def test_greedy_decoding_matches_transformers_generate(tokenizer):
    """Our decode loop (shared prefill, finished rows dropped) writes what `model.generate` writes."""
    model, tok = tiny_model(tokenizer, seed=3)
    hf = HFBackend(model, tok, "tiny")
    prompts = [record(i) for i in range(5)]

    def ids_of(prompt):
        return tok(hf.render([{"role": "user", "content": prompt.prompt}]), add_special_tokens=False,
                   return_tensors="pt")["input_ids"]

    # the 4th token prompt 0 writes becomes an end token, so at least that row leaves the batch mid-way
    first = model.generate(ids_of(prompts[0]), max_new_tokens=4, do_sample=False, pad_token_id=hf.pad_id)
    hf.eos_ids = [*hf.eos_ids, int(first[0, -1])]
    ours = hf.generate(prompts, SamplingParams(n=2, max_new_tokens=12, batch_size=10), seed=0)
    assert ours[0][0].finish_reason == "stop" and ours[0][0].completion_tokens <= 4
    for prompt, completions in zip(prompts, ours):
        ids = ids_of(prompt)
        out = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=hf.eos_ids, pad_token_id=hf.pad_id)
        tokens = out[0, ids.shape[1]:].tolist()
        end = next((k for k, t in enumerate(tokens) if t in hf.eos_ids), len(tokens))
        assert completions[0] == completions[1]
        assert completions[0].text == tok.decode(tokens[:end], skip_special_tokens=True).strip()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_eager_attention_gives_eager_numbers(tokenizer, dtype):
    """The attention HFBackend switches an eager Llama to: the same logits, bit for bit, with padding and a cache."""
    model, _ = tiny_model(tokenizer, seed=4)
    model = model.to(dtype).eval()
    model.config._attn_implementation = "eager"
    ids = torch.randint(0, len(tokenizer), (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # a left-padded row

    def logits():
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=mask, use_cache=True)
            step = model(input_ids=ids[:, :1], attention_mask=torch.cat([mask, mask[:, :1]], 1),
                         past_key_values=out.past_key_values, use_cache=True)
        return out.logits, step.logits

    eager = logits()
    assert use_grouped_eager_attention(model) and model.config._attn_implementation == "grouped_eager"
    grouped = logits()
    assert all(torch.equal(a, b) for a, b in zip(eager, grouped))


def test_grouped_eager_attention_only_replaces_eager_grouped_query_llama(tokenizer):
    sdpa, _ = tiny_model(tokenizer)
    assert not use_grouped_eager_attention(sdpa) and sdpa.config._attn_implementation == "sdpa"
    full, _ = tiny_model(tokenizer)
    full.config._attn_implementation, full.config.num_key_value_heads = "eager", full.config.num_attention_heads
    assert not use_grouped_eager_attention(full) and full.config._attn_implementation == "eager"


def test_an_eager_llama_backend_writes_what_eager_generate_writes(tokenizer):
    model, tok = tiny_model(tokenizer, seed=3)
    model.config._attn_implementation = "eager"
    prompts = [record(i) for i in range(4)]
    expected = []
    for prompt in prompts:  # eager generate first: the backend switches this model's attention
        ids = tok(tok.apply_chat_template([{"role": "user", "content": prompt.prompt}], add_generation_prompt=True,
                                          tokenize=False), add_special_tokens=False, return_tensors="pt")["input_ids"]
        out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
        expected.append(out[0, ids.shape[1]:].tolist())
    hf = HFBackend(model, tok, "tiny")
    assert model.config._attn_implementation == "grouped_eager"
    ours = hf.generate(prompts, SamplingParams(max_new_tokens=8, batch_size=4), seed=0)
    for completions, tokens in zip(ours, expected):
        end = next((k for k, t in enumerate(tokens) if t in hf.eos_ids), len(tokens))
        assert completions[0].text == tok.decode(tokens[:end], skip_special_tokens=True).strip()


def test_sampling_is_seeded(hf):
    sampling = SamplingParams(n=3, temperature=1.0, top_p=0.9, max_new_tokens=8)
    prompts = [record(i) for i in range(2)]
    first, again = hf.generate(prompts, sampling, seed=4), hf.generate(prompts, sampling, seed=4)
    other = hf.generate(prompts, sampling, seed=5)
    assert first == again and first != other
    assert len({c.text for c in first[0]}) > 1  # the n samples differ


@pytest.mark.parametrize("low, k, width", [(3.0, 256, 256), (0.5, 256, 1000), (3.0, 4, 1000)])
def test_nucleus_matches_transformers_top_p(low, k, width):
    """Peaked rows fit in the top k (fast path); a flat row or a tiny k takes the full sort."""
    from transformers import TopPLogitsWarper

    torch.manual_seed(0)
    scores = torch.randn(64, 1000) * torch.linspace(low, 8, 64)[:, None]
    probs, ids = NucleusSampler(0.7, 0.9, torch.Generator(), k=k).nucleus(scores)
    assert ids.shape[-1] == width
    ours = torch.zeros_like(scores).scatter_(-1, ids, probs) > 0
    theirs = TopPLogitsWarper(0.9)(None, scores / 0.7) > float("-inf")
    assert torch.equal(ours, theirs)


def test_sampler_draws_from_the_renormalised_nucleus():
    p = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])  # top_p 0.75: the nucleus is the first three
    scores = p.log().repeat(30000, 1)
    sampler = NucleusSampler(1.0, 0.75, torch.Generator().manual_seed(1), k=4)
    drawn = sampler(None, scores).argmax(-1)
    freq = torch.bincount(drawn, minlength=6).float() / len(drawn)
    assert torch.allclose(freq, torch.tensor([0.4, 0.25, 0.15, 0, 0, 0]) / 0.8, atol=0.015)
    again = NucleusSampler(1.0, 0.75, torch.Generator().manual_seed(1), k=4)(None, scores).argmax(-1)
    assert torch.equal(drawn, again)


def test_stops_at_an_eos_from_the_generation_config(tokenizer):
    model, tok = tiny_model(tokenizer, seed=2)
    greedy = HFBackend(model, tok).generate([record(1)], SamplingParams(max_new_tokens=4), seed=0)[0][0]
    rendered = HFBackend(model, tok).render([{"role": "user", "content": record(1).prompt}])
    with torch.no_grad():
        inputs = tok(rendered, add_special_tokens=False, return_tensors="pt")
        first_token = model(**inputs).logits[0, -1].argmax().item()
    model.generation_config.eos_token_id = [tok.eos_token_id, first_token]  # the model's first choice ends the turn
    stopped = HFBackend(model, tok).generate([record(1)], SamplingParams(max_new_tokens=4), seed=0)[0][0]
    assert greedy.finish_reason == "length" and greedy.completion_tokens == 4
    assert (stopped.finish_reason, stopped.completion_tokens, stopped.text) == ("stop", 1, "")


def test_system_prompt_replaces_the_template_default(hf):
    default = hf.render([{"role": "user", "content": "q"}])
    assert "SmolLM" in default  # SmolLM2's template injects its own system prompt when none is given
    sampling = SamplingParams(max_new_tokens=2, system_prompt="You are POROver's careful assistant.")
    from porover_lib.backends import record_messages

    ours = hf.render(record_messages(record(1), sampling.system_prompt))
    assert "POROver's careful assistant" in ours and "SmolLM" not in ours
    out = hf.generate([record(1)], sampling, seed=0)[0][0]
    assert out.prompt_tokens == len(hf.tokenizer(ours, add_special_tokens=False)["input_ids"])


def test_a_prefill_is_continued_not_answered(hf):
    """The completion attack: the prompt ends inside the assistant turn, after its first words."""
    from dataclasses import replace

    attacked = replace(record(1), prefill="Sure, here is how")
    from porover_lib.backends import record_messages

    rendered = hf.render(record_messages(attacked))
    assert rendered == hf.render([{"role": "user", "content": attacked.prompt}]) + "Sure, here is how"
    out = hf.generate([attacked], SamplingParams(max_new_tokens=3), seed=0)[0][0]
    assert out.prompt_tokens == len(hf.tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert out.prompt_tokens > hf.generate([record(1)], SamplingParams(max_new_tokens=3), seed=0)[0][0].prompt_tokens


def test_chat_matches_greedy_generate(hf):
    replies = hf.chat([[{"role": "user", "content": record(2).prompt}]], max_new_tokens=6)
    assert replies == [hf.generate([record(2)], SamplingParams(max_new_tokens=6), seed=9)[0][0].text]


def test_make_backend_loads_an_hf_model_by_path(tmp_path, tokenizer):
    save_tiny_model(tmp_path / "m", tokenizer=tokenizer)
    backend = make_backend(BackendParams(kind="hf", model=ModelParams(name=str(tmp_path / "m"), dtype="float32")))
    assert backend.name == "hf" and backend.model_name == str(tmp_path / "m")
    assert backend.generate([record(0)], SamplingParams(n=2, max_new_tokens=3), seed=0)[0][1].completion_tokens == 3


# ------------------------------------------------------------------------------ reference, vllm


def test_reference_backend_cycles_through_references():
    refs = ["I can't help with that.", "Here is a safer alternative."]
    out = ReferenceBackend().generate([record(1, references=refs, role="harmful")], SamplingParams(n=5), seed=0)
    assert [c.text for c in out[0]] == refs * 2 + refs[:1]
    assert make_backend(BackendParams(kind="reference")).model_name == "team-references"


def test_reference_backend_serves_every_embedded_harmful_training_prompt(tmp_path):
    from porover_lib.prompts import load_embedded

    harmful = [r for r in load_embedded("harmful") if r.split == "train"]
    rows = overgenerate(harmful, ReferenceBackend(), SamplingParams(n=3), tmp_path / "ref.jsonl", seed=0)
    assert len(rows) == 3 * len(harmful) and rows["completion"].str.len().gt(0).all()
    assert set(rows["model"]) == {"team-references"} and set(rows["role"]) == {"harmful"}


def test_reference_backend_names_a_prompt_without_references():
    with pytest.raises(GenerationError, match="p007"):
        ReferenceBackend().generate([record(1, references=["ok"]), record(7)], SamplingParams(), seed=0)
    with pytest.raises(GenerationError, match="cannot chat"):
        ReferenceBackend().chat([[{"role": "user", "content": "x"}]], 4)


def test_vllm_backend_says_how_to_install_it():
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    with pytest.raises(GenerationError, match=r"pip install 'porover\[vllm\]'"):
        make_backend(BackendParams(kind="vllm"))


def test_vllm_parameter_mapping():
    sampling = SamplingParams(n=4, temperature=0.7, top_p=0.9, max_new_tokens=99)
    assert vllm_sampling_kwargs(sampling, 12) == dict(n=4, temperature=0.7, top_p=0.9, max_tokens=99, seed=12)
    assert vllm_sampling_kwargs(SamplingParams(top_p=0.5), 0)["top_p"] == 1.0  # greedy ignores top_p
    spec = ModelParams(name="org/model", revision="abc123", dtype="bfloat16", trust_remote_code=True)
    assert vllm_engine_kwargs(spec, seed=3) == dict(model="org/model", revision="abc123", dtype="bfloat16",
                                                     seed=3, trust_remote_code=True)


# ------------------------------------------------------------------------------------------ io


def test_jsonl_round_trip_and_torn_tail(tmp_path, caplog):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"a": 1}, {"a": "é"}])
    append_jsonl(path, [{"a": 3}])
    assert read_jsonl(path) == [{"a": 1}, {"a": "é"}, {"a": 3}]
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]  # no temp file left behind
    with open(path, "a") as f:
        f.write('{"a": 4, "b"')  # a write cut short by a kill
    assert read_jsonl(path) == [{"a": 1}, {"a": "é"}, {"a": 3}] and "torn" in caplog.text
    repair_jsonl_tail(path)
    assert path.read_text().endswith('{"a": 3}\n')


def test_repair_cuts_a_torn_tail_and_terminates_a_complete_one(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [{"i": i, "pad": "x" * 40000} for i in range(3)]  # rows longer than one backward read
    torn = json.dumps({"i": 3, "pad": "y" * 100000})[:-5]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + torn)
    repair_jsonl_tail(path)
    append_jsonl(path, [{"i": 4}])
    assert read_jsonl(path) == rows + [{"i": 4}]
    path.write_text('{"i": 0}')  # complete, just no newline
    repair_jsonl_tail(path)
    assert path.read_text() == '{"i": 0}\n'


def test_a_bad_line_inside_a_jsonl_file_is_an_error(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(JsonlError, match=r"rows.jsonl: line 2"):
        read_jsonl(path)


# ------------------------------------------------------------------------------ overgeneration

SAMPLING = SamplingParams(n=2, temperature=1.0, max_new_tokens=8, batch_size=4)
WORKER = """
import json, sys
from porover_lib.config import BackendParams, ModelParams, SamplingParams
from porover_lib.generation import make_backend, overgenerate
from porover_lib.prompts import PromptRecord
model_dir, records_path, sampling_json, out = sys.argv[1:5]
records = [PromptRecord(**json.loads(line)) for line in open(records_path)]
backend = make_backend(BackendParams(kind="hf", model=ModelParams(name=model_dir, dtype="float32", device="cpu")))
overgenerate(records, backend, SamplingParams(**json.loads(sampling_json)), out, seed=7, batch_prompts=2,
             extra={"set": "kill-test"})
"""


def keys(rows) -> list[tuple[str, int]]:
    return [(r["prompt_id"], r["sample_index"]) for r in rows]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", tokenizer=tokenizer)


def run_worker(tmp_path: Path, model_dir: Path, records, out: Path, kill_after_rows: int | None = None) -> int:
    """Run overgeneration in a subprocess; with kill_after_rows, SIGKILL it once that many rows exist."""
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))
    (tmp_path / "worker.py").write_text(WORKER)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")  # as one_torch_thread
    cmd = [sys.executable, str(tmp_path / "worker.py"), str(model_dir), str(tmp_path / "records.jsonl"),
           SAMPLING.model_dump_json(), str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if kill_after_rows is None:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-2000:]
        return len(out.read_text().splitlines())
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= kill_after_rows:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the worker finished before it could be killed"
    return out.read_bytes().count(b"\n")


def test_a_killed_run_resumes_to_the_rows_of_an_uninterrupted_run(tmp_path, model_dir):
    records = [record(i) for i in range(40)]
    out = tmp_path / "overgen.jsonl"
    rows_at_kill = run_worker(tmp_path, model_dir, records, out, kill_after_rows=8)
    assert 8 <= rows_at_kill < 80
    run_worker(tmp_path, model_dir, records, out)
    resumed = read_jsonl(out)

    backend = make_backend(BackendParams(kind="hf", model=ModelParams(name=str(model_dir), dtype="float32")))
    reference = overgenerate(records, backend, SAMPLING, tmp_path / "whole.jsonl", seed=7, batch_prompts=2,
                             extra={"set": "kill-test"})  # one thread, as in the worker
    expected = [(r.id, s) for r in records for s in range(2)]
    assert sorted(keys(resumed)) == sorted(expected)  # every row exactly once
    assert sorted(resumed, key=lambda r: keys([r])) == reference.to_dict("records")
    assert set(reference["finish_reason"]) <= {"stop", "length"} and reference["set"].eq("kill-test").all()
    assert (reference[["backend", "model", "seed", "temperature", "max_new_tokens"]].drop_duplicates().values.tolist()
            == [["hf", str(model_dir), 7, 1.0, 8]])


def test_resume_after_a_torn_last_line(tmp_path, hf):
    records = [record(i) for i in range(6)]
    sampling = SamplingParams(n=2, temperature=1.0, max_new_tokens=4)
    whole = overgenerate(records, hf, sampling, tmp_path / "whole.jsonl", seed=1, batch_prompts=2)
    lines = (tmp_path / "whole.jsonl").read_text().splitlines(keepends=True)
    part = tmp_path / "part.jsonl"
    part.write_text("".join(lines[:5]) + lines[5][:20])  # two batches and a bit, cut mid-row
    resumed = overgenerate(records, hf, sampling, part, seed=1, batch_prompts=2)
    assert resumed.equals(whole)
    assert sorted(keys(read_jsonl(part))) == sorted(keys(whole.to_dict("records")))
    assert len(part.read_text().splitlines()) == 12


def test_a_file_from_other_settings_is_set_aside_and_restarted(tmp_path, hf, caplog):
    """Any provenance field differing (here seed, revision, system prompt) starts a fresh file."""
    path, sampling = tmp_path / "rows.jsonl", SamplingParams(max_new_tokens=2)
    overgenerate([record(0)], hf, sampling, path, seed=1)
    first = path.read_text()
    changes = [(hf, sampling, 2), (HFBackend(hf.model, hf.tokenizer, hf.model_name, revision="abc123"), sampling, 2),
               (hf, SamplingParams(max_new_tokens=2, system_prompt="Be brief."), 2)]
    for backend, settings, seed in changes:
        rows = overgenerate([record(0), record(1)], backend, settings, path, seed=seed)
        assert len(rows) == 2 and rows["seed"].eq(seed).all()
        assert rows[["revision", "system_prompt"]].drop_duplicates().values.tolist() == [[backend.revision,
                                                                                          settings.system_prompt]]
    stale = sorted(tmp_path.glob("rows.jsonl.stale-*"))
    assert len(stale) == 3 and stale[0].read_text() == first
    assert sum("moved to rows.jsonl.stale-" in r.getMessage() for r in caplog.records) == 3
    with pytest.raises(GenerationError, match="duplicate prompt ids"):
        overgenerate([record(0), record(0)], hf, SamplingParams(max_new_tokens=2), path, seed=1)
    with pytest.raises(GenerationError, match="overwrite row fields"):
        overgenerate([record(0)], hf, SamplingParams(max_new_tokens=2), path, seed=1, extra={"seed": 3})
