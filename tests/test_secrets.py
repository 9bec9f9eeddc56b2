"""A fake API key in the environment reaches the server and nothing else: not a written row, not the
resolved profile, not a log line at DEBUG, not `porover check`'s report, not an error's traceback.

The pieces that handle the key run for real: params resolution (`python -m porover_lib.config`),
`porover check`, and overgeneration through the `openai` client against a loopback server that
first rate-limits and then, for a second client, rejects the key while echoing it back (as real
APIs do in their 401 message). Afterwards every file written and every captured stream is grepped.
"""
import logging
import os
import secrets
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
from servers import ChatServer, faulty_responder

from porover_lib.cli import main
from porover_lib.config import load_params
from porover_lib.backends import GenerationError
from porover_lib.generation import make_backend, overgenerate
from porover_lib.prompts import load_sets

REPO = Path(__file__).resolve().parents[1]
KEY_ENV = "OPENAI_API_KEY"


def profile(tmp_path: Path, url: str) -> Path:
    """The smoke profile with an OpenAI-compatible teacher on the loopback server, and one on the real
    API that `porover check` must find the key for (no request ever goes there)."""
    path = tmp_path / "secrets.yaml"
    path.write_text(
        f"extends: {REPO / 'params' / 'smoke.yaml'}\nprofile: secrets\n"
        "teachers:\n"
        f"  local: {{kind: openai, base_url: '{url}', api_model: served, api_key_env: {KEY_ENV},"
        " timeout: 5, max_retries: 3}\n"
        f"  remote: {{kind: openai, base_url: 'https://api.openai.com/v1', api_model: gpt-4o, api_key_env: {KEY_ENV}}}\n")
    return path


def rejects_key(count: int, request: dict):
    """A 401 whose message quotes the key it was sent, as OpenAI's own does."""
    sent = request["headers"].get("authorization", "").removeprefix("Bearer ")
    return 401, {}, {"error": {"message": f"Incorrect API key provided: {sent}.", "type": "invalid_request_error"}}


def test_the_api_key_reaches_the_server_and_no_output(tmp_path, monkeypatch, capfd, caplog):
    key = f"sk-fake-{secrets.token_hex(16)}"
    monkeypatch.setenv(KEY_ENV, key)
    caplog.set_level(logging.DEBUG)  # every logger, the openai client's and httpx's included
    log_file = logging.FileHandler(tmp_path / "run.log")
    log_file.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(log_file)
    try:
        with ChatServer(faulty_responder(["429", "429"], retry_after="0.01"), max_requests=20) as server, \
                ChatServer(rejects_key, max_requests=5) as rejecting:
            path = profile(tmp_path, server.url)
            resolved = subprocess.run([sys.executable, "-m", "porover_lib.config", str(path),
                                       "--write", str(tmp_path / "active.yaml")],
                                      capture_output=True, text=True, cwd=REPO, env=os.environ.copy())
            assert resolved.returncode == 0, resolved.stderr
            assert main(["check", str(path)]) == 0  # the key variable is set: no problem reported

            params = load_params(tmp_path / "active.yaml")
            records = load_sets(params, ["general_train"])["general_train"]
            sampling = params.overgenerate.sampling
            rows = overgenerate(records, make_backend(params.teacher("local")), sampling,
                                tmp_path / "overgen" / "general_train__local.jsonl", params.seed)

            refused = params.teacher("local").model_copy(update={"base_url": rejecting.url})
            with pytest.raises(GenerationError, match="401") as err:
                overgenerate(records, make_backend(refused), sampling, tmp_path / "overgen" / "refused.jsonl",
                             params.seed)
            (tmp_path / "traceback.txt").write_text("".join(traceback.format_exception(err.value)))
            main(["check", "paper"])  # whatever it finds missing here, it names variables, not values
    finally:
        logging.getLogger().removeHandler(log_file)
        log_file.close()

    sent = [r["headers"].get("authorization") for r in server.requests + rejecting.requests]
    assert sent and all(a == f"Bearer {key}" for a in sent)  # the key did reach the servers
    assert key in rejecting.requests[0]["headers"]["authorization"]
    assert len(rows) == len(records) * sampling.n and len(server.requests) == len(records) + 2

    captured = capfd.readouterr()
    streams = {"stdout": captured.out, "stderr": captured.err, "config stdout": resolved.stdout,
               "config stderr": resolved.stderr, "log records": caplog.text}
    assert "ready to run" in captured.out and "retrying" in caplog.text
    assert any(r.name.startswith(("openai", "httpx", "httpcore")) for r in caplog.records)  # DEBUG reached
    files = [f for f in tmp_path.rglob("*") if f.is_file()]
    assert {f.name for f in files} >= {"active.yaml", "general_train__local.jsonl", "run.log", "traceback.txt"}
    leaks = [name for name, text in streams.items() if key in text]
    leaks += [str(f.relative_to(tmp_path)) for f in files if key.encode() in f.read_bytes()]
    assert not leaks, f"the API key appears in {leaks}"
