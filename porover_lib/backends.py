"""The generation interface and the backends that need no local transformers model.

`Backend` is what stages call: `generate` (N samples per prompt record) and `chat` (one reply per
message list, for model-based judges). `ChatBackend` implements both once on top of a backend's
`complete`, so the hf, openai and vllm backends write only how they complete conversations.
- `openai`: any OpenAI-compatible Chat Completions server (OpenAI, vLLM serve, llama.cpp, Ollama);
- `vllm`: the vLLM offline engine, for real runs on a GPU;
- `reference`: the team-written safe responses of the embedded harmful prompts.
The `hf` backend and resumable overgeneration live in `generation.py`.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, Sequence
from urllib.parse import urlparse

from tqdm.auto import tqdm

from .config import ModelParams, SamplingParams

log = logging.getLogger("porover_lib.generation")  # one logger name for every backend's messages


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" | "length" | "error" (a server may also say e.g. "content_filter")
    prompt_tokens: int | None
    completion_tokens: int | None  # None = not measured (reference texts, a usage total shared by n choices)
    # why no usable text came back for this request (an API's 400, a content filter): the row is kept, with
    # its reason, and no judge or selection counts it as an answer
    error: str | None = None
    api_model: str | None = None  # what an API says answered (its `model`), beside the name we asked for
    system_fingerprint: str | None = None  # the API's backend configuration, where it reports one


class GenerationError(RuntimeError):
    """A generation that cannot go on; the message names the backend, file or prompt involved."""


class Backend(Protocol):
    name: str  # "hf" | "openai" | "vllm" | "reference"
    model_name: str
    revision: str | None

    def generate(self, records: Sequence, sampling: SamplingParams, seed: int) -> list[list[Completion]]: ...

    def chat(self, messages_list: list[list[dict]], max_new_tokens: int, temperature: float = 0.0) -> list[str]: ...


def mix_seed(*parts) -> int:
    """A 31-bit seed from several parts: (seed, batch) pairs never collide the way seed + batch does."""
    digest = hashlib.sha256(json.dumps(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**31)


def record_messages(record, system_prompt: str | None = None) -> list[dict]:
    """The chat for one prompt; our system prompt replaces a template's default one when set. A record's
    `prefill` becomes an unfinished assistant turn, which the backend continues."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    prefill = [{"role": "assistant", "content": record.prefill}] if getattr(record, "prefill", "") else []
    return system + [{"role": "user", "content": record.prompt}] + prefill


class ChatBackend:
    """`generate` and `chat` for a backend that completes chat conversations (`complete`)."""

    def complete(self, conversations: list[list[dict]], sampling: SamplingParams, seed: int) -> list[list[Completion]]:
        raise NotImplementedError

    def generate(self, records: Sequence, sampling: SamplingParams, seed: int) -> list[list[Completion]]:
        return self.complete([record_messages(r, sampling.system_prompt) for r in records], sampling, seed)

    def chat(self, messages_list: list[list[dict]], max_new_tokens: int, temperature: float = 0.0) -> list[str]:
        sampling = SamplingParams(n=1, temperature=temperature, max_new_tokens=max_new_tokens)
        return [c[0].text for c in self.complete(messages_list, sampling, seed=0)]


# ----------------------------------------------------------------------------------------- openai


def is_loopback(url: str | None) -> bool:
    host = urlparse(url or "").hostname
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OpenAIBackend(ChatBackend):
    """Chat Completions through the `openai` client, with bounded concurrency and our own retry loop.

    The client's built-in retries are off (max_retries=0) so that every attempt is ours to count,
    back off (exponential with jitter, or the server's Retry-After) and report. A reply that is not
    valid JSON or has no choices is retried like a 5xx. `retries` counts the retried attempts by
    reason ("429", "500", "timeout", "connection", "malformed", "no_choices"), for the stage's record.
    The API key is read from the environment variable named by `api_key_env`; local servers
    (loopback base_url) accept any key, so there an unset variable means the placeholder "EMPTY".
    """

    name = "openai"
    RETRY_STATUS = (408, 409, 429)  # and every 5xx
    # a request this server will never answer (a 400: too long, refused by a content policy; 413, 422): recorded
    # as a row with its reason, the run goes on. Others (401, 403, 404: key, access, model name) stop the run.
    RECORD_STATUS = (400, 413, 422)

    class BadReply(Exception):
        """A 200 reply we cannot use; `reason` is "malformed" or "no_choices"."""

        def __init__(self, reason: str, message: str):
            super().__init__(message)
            self.reason = reason

    def __init__(self, base_url: str | None, model: str, api_key_env: str = "OPENAI_API_KEY",
                 max_concurrency: int = 8, timeout: float = 120.0, max_retries: int = 6,
                 backoff: float = 1.0, max_backoff: float = 60.0, revision: str | None = None,
                 continue_final_message: bool = False, adapter: str | None = None):
        from openai import OpenAI

        self.base_url = base_url or "https://api.openai.com/v1"
        self.model_name, self.revision = model, revision
        self.continue_final_message = continue_final_message
        self.adapter = adapter  # a served checkpoint's local adapter fingerprint, recorded in every row
        self.max_concurrency, self.max_retries = max_concurrency, max_retries
        self.backoff, self.max_backoff = backoff, max_backoff
        key = os.environ.get(api_key_env)
        if not key:
            if not is_loopback(self.base_url):
                raise GenerationError(
                    f"openai backend {self.base_url}: environment variable {api_key_env} is not set; "
                    f"export {api_key_env} with the API key (params name the variable, never the key)")
            key = "EMPTY"
        self._key = key
        self._random = random.Random()  # jitter only; leaves the global RNG to seeded code
        self.retries: Counter[str] = Counter()
        self.recorded: Counter[str] = Counter()  # requests refused for good, by status, kept as error rows
        self._lock = threading.Lock()  # requests run in threads
        self.client = OpenAI(api_key=key, base_url=self.base_url, timeout=timeout, max_retries=0)

    def __repr__(self) -> str:
        return f"OpenAIBackend({self.base_url!r}, model={self.model_name!r})"

    def preferred_batch_prompts(self, sampling: SamplingParams) -> int:
        return 4 * self.max_concurrency

    def complete(self, conversations: list[list[dict]], sampling: SamplingParams, seed: int) -> list[list[Completion]]:
        """One request per conversation, at most `max_concurrency` in flight; results in input order.
        An unfinished assistant turn (the completion attack) is sent with vLLM's `continue_final_message`
        where the profile says the server has it; OpenAI's own API has no such request."""
        if any(m[-1]["role"] == "assistant" for m in conversations) and not self.continue_final_message:
            raise GenerationError(
                f"backend openai ({self.model_name} at {self.base_url}): Chat Completions cannot continue an unfinished "
                "assistant turn (evaluate.attack). Serve the model with vLLM and set continue_final_message: true on "
                "this backend, or evaluate with the hf or vllm backend")
        with ThreadPoolExecutor(self.max_concurrency) as pool, \
                tqdm(total=len(conversations), desc=f"requests {self.model_name}", unit="req", leave=False) as bar:
            futures = [pool.submit(self._samples, m, sampling, seed) for m in conversations]
            for future in futures:
                future.add_done_callback(lambda _: bar.update())
            try:
                return [future.result() for future in futures]
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    def _samples(self, messages: list[dict], sampling: SamplingParams, seed: int) -> list[Completion]:
        completions = self._request(messages, sampling, sampling.n, seed)
        while len(completions) < sampling.n:  # servers that ignore `n` (llama.cpp, Ollama) answer once
            completions += self._request(messages, sampling, 1, mix_seed(seed, len(completions)))
        return completions[:sampling.n]

    def _request(self, messages: list[dict], sampling: SamplingParams, n: int, seed: int) -> list[Completion]:
        import openai

        kwargs = dict(model=self.model_name, messages=messages, temperature=sampling.temperature,
                      max_tokens=sampling.max_new_tokens, seed=seed)
        if sampling.temperature > 0:
            kwargs["top_p"] = sampling.top_p
        if n > 1:
            kwargs["n"] = n
        if messages[-1]["role"] == "assistant":  # vLLM's chat extension: continue the last message
            kwargs["extra_body"] = {"continue_final_message": True, "add_generation_prompt": False}
        for attempt in range(self.max_retries + 1):
            try:
                return self._completions(self.client.chat.completions.create(**kwargs))
            except (openai.APIStatusError, openai.APIConnectionError, openai.APIResponseValidationError,
                    json.JSONDecodeError, self.BadReply) as err:
                reason = self._reason(err)
                if isinstance(err, openai.APIStatusError) and err.status_code in self.RECORD_STATUS:
                    why = self._scrub(f"{err.status_code}: {_error_message(err)}")
                    with self._lock:
                        self.recorded[str(err.status_code)] += 1
                    log.warning("openai backend %s: request refused (%s); recorded as an error row, going on",
                                self.base_url, why[:200])
                    return [Completion("", "error", None, None, error=why) for _ in range(n)]
                if reason is None or attempt == self.max_retries:
                    tries = f"after {attempt + 1} attempts" if reason else "(not retryable)"
                    raise GenerationError(self._scrub(
                        f"openai backend {self.base_url} model {self.model_name}: request failed {tries}: "
                        f"{type(err).__name__}: {err}")) from None
                with self._lock:
                    self.retries[reason] += 1
                delay = self._delay(attempt, err)
                log.warning("openai backend %s: %s (%s, attempt %d/%d), retrying in %.2f s", self.base_url,
                            reason, type(err).__name__, attempt + 1, self.max_retries + 1, delay)
                time.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _completions(self, response) -> list[Completion]:
        """The reply's choices in index order; BadReply if it is no chat completion or has no choices."""
        choices = getattr(response, "choices", None)
        if not isinstance(choices, list):
            raise self.BadReply("malformed", f"the reply is not a chat completion: {str(response)[:120]!r}")
        if not choices:
            raise self.BadReply("no_choices", "the server replied with no choices")
        try:
            usage = response.usage
            shared = len(choices) > 1  # usage is a total over all choices then
            served, fingerprint = getattr(response, "model", None), getattr(response, "system_fingerprint", None)
            return [Completion(text=(c.message.content or "").strip(), finish_reason=c.finish_reason or "stop",
                               prompt_tokens=usage.prompt_tokens if usage else None,
                               completion_tokens=usage.completion_tokens if usage and not shared else None,
                               error="content_filter" if c.finish_reason == "content_filter" else None,
                               api_model=served, system_fingerprint=fingerprint)
                    for c in sorted(choices, key=lambda c: c.index)]
        except (AttributeError, TypeError) as err:  # fields missing or of the wrong type
            raise self.BadReply("malformed", f"the reply's choices cannot be read: {err}") from None

    def _reason(self, err) -> str | None:
        """Why an attempt failed, as counted in `retries`; None for errors a retry cannot fix."""
        import openai

        if isinstance(err, self.BadReply):
            return err.reason
        if isinstance(err, (openai.APIResponseValidationError, json.JSONDecodeError)):
            return "malformed"
        if isinstance(err, openai.APITimeoutError):
            return "timeout"
        if isinstance(err, openai.APIConnectionError):
            return "connection"
        status = err.status_code
        return str(status) if status in self.RETRY_STATUS or status >= 500 else None

    def _delay(self, attempt: int, err) -> float:
        """The server's Retry-After when it gives one, else exponential backoff with jitter."""
        response = getattr(err, "response", None)
        retry_after = response.headers.get("retry-after") if response is not None else None
        try:
            if retry_after is not None:
                return min(self.max_backoff, max(0.0, float(retry_after)))
        except ValueError:
            pass  # an HTTP date: fall back to our own schedule
        return min(self.max_backoff, self.backoff * 2**attempt) * self._random.uniform(0.5, 1.0)

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key != "EMPTY" else text


def _error_message(err) -> str:
    """The message of an API error's body ({"error": {"message": ...}}), else the exception's text."""
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            code = inner.get("code") or inner.get("type")
            return f"{inner['message']}" + (f" ({code})" if code else "")
    return str(err)


# ------------------------------------------------------------------------------------------- vllm


def vllm_engine_kwargs(spec: ModelParams, seed: int = 0, max_model_len: int | None = None,
                       gpu_memory_utilization: float | None = None) -> dict:
    """`vllm.LLM(...)` arguments for a model spec and the backend's engine settings."""
    from .models import resolve_path

    kwargs = dict(model=resolve_path(spec), dtype=spec.dtype, seed=seed, trust_remote_code=spec.trust_remote_code)
    if spec.revision and not spec.name.startswith("embedded:"):
        kwargs["revision"] = spec.revision
    if spec.load_in_4bit:
        kwargs["quantization"] = "bitsandbytes"
    if max_model_len is not None:
        kwargs["max_model_len"] = max_model_len
    if gpu_memory_utilization is not None:
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization
    return kwargs


def vllm_sampling_kwargs(sampling: SamplingParams, seed: int) -> dict:
    """`vllm.SamplingParams(...)` arguments; a per-request seed makes output independent of batching."""
    return dict(n=sampling.n, temperature=sampling.temperature,
                top_p=sampling.top_p if sampling.temperature > 0 else 1.0,
                max_tokens=sampling.max_new_tokens, seed=seed)


class VLLMBackend(ChatBackend):
    """The vLLM offline engine (GPU). Imported only when selected; never run in this project's CI."""

    name = "vllm"

    def __init__(self, spec: ModelParams, seed: int = 0, max_model_len: int | None = None,
                 gpu_memory_utilization: float | None = None):
        try:
            import vllm
        except ImportError as err:
            raise GenerationError("backend 'vllm' needs vLLM (Linux + CUDA GPU): pip install 'porover[vllm]'") from err
        self._vllm = vllm
        self.model_name, self.revision = spec.name, spec.revision
        self.llm = vllm.LLM(**vllm_engine_kwargs(spec, seed, max_model_len, gpu_memory_utilization))

    def close(self) -> None:
        """Free the engine's GPU memory before the next model loads (a judge, the student)."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        engine = getattr(llm, "llm_engine", None)
        for stop in ("shutdown",):  # vLLM >= 0.8 engines stop their workers here
            if engine is not None and callable(getattr(engine, stop, None)):
                getattr(engine, stop)()
        del llm, engine
        try:
            from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

            destroy_model_parallel()
            destroy_distributed_environment()
        except (ImportError, AssertionError, RuntimeError):
            pass  # older/newer vLLM without these, or nothing initialised

    def preferred_batch_prompts(self, sampling: SamplingParams) -> int:
        return 256  # vLLM schedules its own batches; this is only the checkpoint granularity

    def complete(self, conversations, sampling: SamplingParams, seed: int) -> list[list[Completion]]:
        params = [self._vllm.SamplingParams(**vllm_sampling_kwargs(sampling, mix_seed(seed, i)))
                  for i in range(len(conversations))]
        prefilled = {m[-1]["role"] == "assistant" for m in conversations}
        if len(prefilled) > 1:
            raise GenerationError("backend vllm: a batch mixes unfinished assistant turns with ordinary prompts")
        continue_final = prefilled == {True}  # the completion attack: continue the assistant's first words
        outputs = self.llm.chat(conversations, sampling_params=params, use_tqdm=True,  # paired one by one
                                add_generation_prompt=not continue_final, continue_final_message=continue_final)
        return [[Completion(o.text.strip(), o.finish_reason or "stop", len(req.prompt_token_ids or []),
                            len(o.token_ids)) for o in req.outputs] for req in outputs]


# -------------------------------------------------------------------------------------- reference


class ReferenceBackend:
    """Team-written safe responses of embedded harmful prompts; sample i is references[i % len]."""

    name = "reference"
    model_name = "team-references"
    revision = None

    def preferred_batch_prompts(self, sampling: SamplingParams) -> int:
        return 1024

    def generate(self, records: Sequence, sampling: SamplingParams, seed: int) -> list[list[Completion]]:
        missing = [r.id for r in records if not r.references]
        if missing:
            raise GenerationError(f"reference backend: prompt(s) {missing[:10]} have no reference responses "
                                  "(only embedded harmful prompts carry them)")
        return [[Completion(r.references[i % len(r.references)], "stop", None, None) for i in range(sampling.n)]
                for r in records]

    def chat(self, messages_list: list[list[dict]], max_new_tokens: int, temperature: float = 0.0) -> list[str]:
        raise GenerationError("reference backend serves fixed responses and cannot chat; give judges a model backend")
