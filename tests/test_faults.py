"""Overgeneration through the real `openai` client against a loopback server that fails about 30%
of requests (429 with Retry-After, 500, hangs past the client's timeout, a body that is not JSON, a
reply with no choices): the run completes, no row is lost or duplicated, every retry is counted."""
import json
import logging
from collections import Counter

import pytest
from servers import FAULTS, ChatServer, chat_completion, faulty_responder, random_faults_responder, reply

from porover_lib.config import SamplingParams
from porover_lib.backends import GenerationError, OpenAIBackend
from porover_lib.generation import overgenerate
from porover_lib.prompts import PromptRecord

KEY_ENV = "POROVER_TEST_FAULT_KEY"


def records(count: int) -> list[PromptRecord]:
    return [PromptRecord(id=f"q{i}", prompt=f"question {i}", source="test", category="c", label="safe",
                         split="train", role="general") for i in range(count)]


def client(server: ChatServer, **kwargs) -> OpenAIBackend:
    options = dict(api_key_env=KEY_ENV, max_concurrency=4, timeout=0.3, max_retries=8, backoff=0.005,
                   max_backoff=0.02)
    return OpenAIBackend(server.url, "faulty-served", **(options | kwargs))


@pytest.mark.parametrize("fault", FAULTS)
def test_each_fault_is_retried_and_counted(fault):
    with ChatServer(faulty_responder([fault, fault], retry_after="0.01"), max_requests=5) as server:
        backend = client(server)
        out = backend.chat([[{"role": "user", "content": "hi"}]], max_new_tokens=4)
    assert out == ["reply 0 to: hi"] and len(server.requests) == 3
    reason = {"hang": "timeout", "empty": "no_choices"}.get(fault, fault)
    assert backend.retries == Counter({reason: 2})


@pytest.mark.parametrize("fault, message", [("empty", "no choices"), ("malformed", "JSONDecodeError")])
def test_a_bad_reply_that_never_ends_is_a_clear_error(fault, message):
    with ChatServer(faulty_responder([fault] * 10), max_requests=10) as server:
        with pytest.raises(GenerationError, match=message) as err:
            client(server, max_retries=2).chat([[{"role": "user", "content": "x"}]], max_new_tokens=4)
    assert len(server.requests) == 3 and "after 3 attempts" in str(err.value)


def test_overgeneration_under_thirty_percent_faults_loses_and_duplicates_nothing(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="porover_lib.generation")
    respond = random_faults_responder(rate=0.3, seed=0)
    prompts, n = records(24), 2
    out_path = tmp_path / "overgen.jsonl"
    with ChatServer(respond, max_requests=200) as server:
        backend = client(server)
        rows = overgenerate(prompts, backend, SamplingParams(n=n, temperature=0.7, max_new_tokens=8), out_path,
                            seed=0, batch_prompts=8)
    faults = {k: v for k, v in respond.seen.items() if k != "ok"}
    assert set(faults) == set(FAULTS), faults  # every kind of fault was met
    assert 0.2 < sum(faults.values()) / len(server.requests) < 0.45

    written = [json.loads(line) for line in out_path.read_text().splitlines()]
    keys = Counter((r["prompt_id"], r["sample_index"]) for r in written)
    assert keys == Counter({(p.id, s): 1 for p in prompts for s in range(n)})  # nothing lost, nothing twice
    assert len(rows) == len(written) == len(prompts) * n
    for row in written:
        assert row["completion"] == f"reply {row['sample_index']} to: {row['prompt']}"
    assert all(r["finish_reason"] == "stop" for r in written)
    assert len(server.requests) == len(prompts) + sum(faults.values())  # one success per prompt (n honoured)

    by_reason = {"hang": "timeout", "empty": "no_choices"}
    assert backend.retries == Counter({by_reason.get(k, k): v for k, v in faults.items()})
    assert sum("retrying" in r.getMessage() for r in caplog.records) == sum(faults.values())


def test_requests_a_server_refuses_for_good_become_error_rows_and_the_run_goes_on(tmp_path):
    """A 400 (a prompt the API will not take: too long, a content policy) and a reply cut by a content filter
    are kept as rows with their reason, counted, never retried; the other prompts are answered (issue 29.6)."""
    def respond(count, request):
        body = request["body"]
        question = body["messages"][-1]["content"]
        if question == "question 3":
            return 400, {}, {"error": {"message": "Invalid prompt: flagged by the usage policy",
                                       "code": "invalid_prompt"}}
        if question == "question 5":
            return chat_completion(count, body, [""] * body.get("n", 1), ["content_filter"] * body.get("n", 1), 5, 0)
        return reply("ok", count, body)

    prompts, out_path = records(8), tmp_path / "overgen.jsonl"
    with ChatServer(respond, max_requests=50) as server:
        backend = client(server)
        rows = overgenerate(prompts, backend, SamplingParams(n=2, temperature=0.7, max_new_tokens=8), out_path,
                            seed=0, batch_prompts=4)
    assert len(rows) == 16 and len(server.requests) == 8  # one request per prompt, none retried
    errors = rows[rows["error"].notna()]
    assert sorted(errors["prompt_id"].unique()) == ["q3", "q5"]
    assert errors.loc[errors["prompt_id"] == "q3", "error"].iloc[0].startswith("400: Invalid prompt")
    assert set(errors.loc[errors["prompt_id"] == "q5", "error"]) == {"content_filter"}
    assert backend.recorded == Counter({"400": 1}) and not backend.retries
    assert rows.loc[rows["error"].isna(), "completion"].str.startswith("reply").all()

    from porover_lib.selection import select

    judged = [{**r, "set": "s", "teacher": "t", "safety_label": "safe", "refusal_label": "compliance", "reward": 1.0}
              for r in json.loads(rows.to_json(orient="records"))]
    kept, dropped, report = select(judged)
    assert {k["prompt_id"] for k in kept} == {p.id for p in prompts} - {"q3", "q5"}
    assert {d["prompt_id"]: d["why"] for d in dropped} == {"q3": "api error", "q5": "api error"}
    assert report["general"]["api_errors"] == 4
