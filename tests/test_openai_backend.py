"""OpenAIBackend against real HTTP servers on 127.0.0.1 (tests/servers.py): a tiny model behind a
/v1/chat/completions endpoint, and servers that answer 429 / 500 / hang before succeeding."""
import logging
import time
from dataclasses import replace

import pytest
import torch
from servers import HANG, SYSTEM_FINGERPRINT, ChatServer, echo_text, faulty_responder, model_responder

from porover_lib.config import BackendParams, SamplingParams
from porover_lib.backends import GenerationError, OpenAIBackend, mix_seed
from porover_lib.generation import HFBackend, make_backend
from tiny import tiny_model
from porover_lib.prompts import PromptRecord

KEY_ENV = "POROVER_TEST_API_KEY"
SECRET = "sk-test-5ecret-never-print-me"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def hf(tokenizer):
    model, tok = tiny_model(tokenizer, seed=1)
    return HFBackend(model, tok, "tiny")


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    return SECRET


def records(count: int) -> list[PromptRecord]:
    return [PromptRecord(id=f"q{i}", prompt=f"question {i}:" + " why" * i, source="test", category="c",
                         label="safe", split="train", role="general") for i in range(count)]


def client(server: ChatServer, **kwargs) -> OpenAIBackend:
    options = dict(api_key_env=KEY_ENV, max_concurrency=4, timeout=5.0, max_retries=3, backoff=0.01)
    return OpenAIBackend(server.url, "tiny-served", **(options | kwargs))


def test_greedy_through_the_server_equals_the_local_model(hf, key):
    sampling = SamplingParams(n=1, temperature=0.0, max_new_tokens=8)
    with ChatServer(model_responder(hf)) as server:
        remote = client(server).generate(records(3), sampling, seed=3)
        replies = client(server).chat([[{"role": "user", "content": "hi"}]], max_new_tokens=6)
    served = [[replace(c, api_model=None, system_fingerprint=None) for c in row] for row in remote]
    assert served == hf.generate(records(3), sampling, seed=3)
    assert {(c.api_model, c.system_fingerprint) for row in remote for c in row} == {("tiny-served", SYSTEM_FINGERPRINT)}
    assert replies == hf.chat([[{"role": "user", "content": "hi"}]], max_new_tokens=6)
    first = server.requests[0]
    assert first["headers"]["authorization"] == f"Bearer {SECRET}"  # the key came from the env var
    assert {k: first["body"][k] for k in ("model", "max_tokens", "temperature", "seed")} == \
        {"model": "tiny-served", "max_tokens": 8, "temperature": 0.0, "seed": 3}
    assert "n" not in first["body"] and len(server.requests) == 4


def test_n_samples_come_from_one_request_with_the_seed(hf, key):
    sampling = SamplingParams(n=3, temperature=1.0, max_new_tokens=6, batch_size=3)
    with ChatServer(model_responder(hf)) as server:
        out = client(server).generate(records(2), sampling, seed=11)
    assert len(server.requests) == 2 and all(r["body"]["n"] == 3 for r in server.requests)
    for record, completions in zip(records(2), out):
        expected = hf.complete([[{"role": "user", "content": record.prompt}]], sampling, seed=11)[0]
        assert [c.text for c in completions] == [c.text for c in expected]
        assert all(c.completion_tokens is None for c in completions)  # usage is a total over 3 choices


def test_a_server_that_ignores_n_gets_separate_requests(hf, key):
    sampling = SamplingParams(n=3, temperature=1.0, max_new_tokens=6)
    with ChatServer(model_responder(hf, honour_n=False)) as server:
        out = client(server, max_concurrency=1).generate(records(2), sampling, seed=5)
    assert len(server.requests) == 2 * 3
    assert [r["body"]["seed"] for r in server.requests[:3]] == [5, mix_seed(5, 1), mix_seed(5, 2)]
    assert all(len(o) == 3 and all(c.completion_tokens == 6 for c in o) for o in out)
    assert len({c.text for c in out[0]}) > 1  # different seeds, different samples


def test_concurrency_is_bounded(hf, key):
    sampling = SamplingParams(n=1, max_new_tokens=2)
    with ChatServer(model_responder(hf, delay=0.2)) as server:
        out = client(server, max_concurrency=2).generate(records(6), sampling, seed=0)
    assert len(out) == 6 and len(server.requests) == 6
    assert server.max_in_flight == 2


def test_retries_429_500_and_a_timeout_then_succeeds(key, caplog):
    caplog.set_level(logging.WARNING, logger="porover_lib.generation")
    with ChatServer(faulty_responder(["429", "500", HANG])) as server:
        started = time.perf_counter()
        out = client(server, timeout=0.5, max_retries=3).generate(records(1), SamplingParams(n=2), seed=0)
    assert len(server.requests) == 4  # three faults, then the answer
    body = server.requests[-1]["body"]
    assert [c.text for c in out[0]] == [echo_text(body, 0), echo_text(body, 1)]
    assert [c.finish_reason for c in out[0]] == ["stop", "stop"]
    assert time.perf_counter() - started >= 0.5  # it did wait out the hanging request
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 3 and "429" in retries[0] and "500" in retries[1] and "Timeout" in retries[2]


def test_retry_after_is_honoured(key):
    with ChatServer(faulty_responder(["429"], retry_after="0.6")) as server:
        started = time.perf_counter()
        client(server).chat([[{"role": "user", "content": "x"}]], max_new_tokens=4)
    assert len(server.requests) == 2 and time.perf_counter() - started >= 0.6


def test_a_server_that_always_fails_gives_a_clear_error_without_the_key(key, caplog):
    caplog.set_level(logging.DEBUG)  # openai / httpx debug logs included
    with ChatServer(faulty_responder(["500"] * 20)) as server:
        with pytest.raises(GenerationError) as err:
            client(server, max_retries=2).generate(records(1), SamplingParams(), seed=0)
    assert len(server.requests) == 3
    message = str(err.value)
    assert "after 3 attempts" in message and server.url in message and "tiny-served" in message
    assert SECRET not in message and SECRET not in caplog.text
    assert "retrying" in caplog.text and any(r.name.startswith("openai") for r in caplog.records)  # logs were captured


def test_the_key_is_scrubbed_even_if_the_server_echoes_it(key):
    def leaky(count, request):
        return 500, {}, {"error": {"message": f"bad auth {request['headers']['authorization']}"}}

    with ChatServer(leaky) as server, pytest.raises(GenerationError) as err:
        client(server, max_retries=1).chat([[{"role": "user", "content": "x"}]], max_new_tokens=4)
    assert len(server.requests) == 2
    assert SECRET not in str(err.value) and "bad auth Bearer ***" in str(err.value)


@pytest.mark.parametrize("status", [401, 403, 404])
def test_a_configuration_error_stops_the_run_without_a_retry(key, status):
    """A wrong key, missing access or an unknown model fail every request alike: stop, say so, do not retry."""
    def refuse(count, request):
        return status, {}, {"error": {"message": f"status {status} from the test server"}}

    with ChatServer(refuse) as server:
        with pytest.raises(GenerationError, match="not retryable"):
            client(server).chat([[{"role": "user", "content": "x"}]], max_new_tokens=4)
    assert len(server.requests) == 1


def test_missing_key_names_the_variable(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(GenerationError, match=KEY_ENV):
        OpenAIBackend("https://api.example.com/v1", "gpt-4o", api_key_env=KEY_ENV)
    with pytest.raises(GenerationError, match=KEY_ENV):  # no base_url: api.openai.com
        make_backend(BackendParams(kind="openai", api_model="gpt-4o", api_key_env=KEY_ENV))


def test_a_loopback_server_needs_no_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with ChatServer(faulty_responder([])) as server:
        backend = make_backend(BackendParams(kind="openai", base_url=server.url, api_model="m", api_key_env=KEY_ENV))
        assert backend.chat([[{"role": "user", "content": "ping"}]], max_new_tokens=4) == ["reply 0 to: ping"]
    assert server.requests[0]["headers"]["authorization"] == "Bearer EMPTY"
