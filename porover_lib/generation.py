"""Generation: four backends behind one interface, and resumable overgeneration (stage 01).

- `hf`: transformers, batched with left padding on the model's chat template (teachers, the student);
- `openai`: any OpenAI-compatible Chat Completions server (OpenAI, vLLM serve, llama.cpp, Ollama);
- `vllm`: the vLLM offline engine, for real runs on a GPU;
- `reference`: the team-written safe responses of the embedded harmful prompts.

`overgenerate` writes N completions per prompt to JSONL, one fsynced append per batch, and on a
restart generates only the (prompt_id, sample_index) rows still missing. Each batch is seeded from
(run seed, batch number), so a resumed run writes the same rows an uninterrupted run would.
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
from pathlib import Path
from typing import Protocol, Sequence
from urllib.parse import urlparse

import torch
from tqdm.auto import tqdm

from .config import BackendParams, ModelParams, SamplingParams
from .io import append_jsonl, read_jsonl, repair_jsonl_tail

log = logging.getLogger(__name__)

# Tokens that close an assistant turn in common chat templates (ChatML, Llama 3, Gemma, Phi-3).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" | "length" (a server may also say e.g. "content_filter")
    prompt_tokens: int | None
    completion_tokens: int | None  # None = not measured (reference texts, a usage total shared by n choices)


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
    """The chat for one prompt; our system prompt replaces a template's default one when set."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return system + [{"role": "user", "content": record.prompt}]


# --------------------------------------------------------------------------------------------- hf


def stop_token_ids(model, tokenizer) -> list[int]:
    """The generation config's eos ids, the tokenizer's eos, and the template's end-of-turn token."""
    configured = model.generation_config.eos_token_id
    ids = list(configured) if isinstance(configured, (list, tuple)) else [configured]
    ids.append(tokenizer.eos_token_id)
    template = str(tokenizer.chat_template or "")
    for token in END_OF_TURN_TOKENS:
        if token in template:
            ids.append(tokenizer.convert_tokens_to_ids(token))
    ids = [i for i in ids if i is not None and i != tokenizer.unk_token_id]
    if not ids:
        raise GenerationError(f"{model.name_or_path}: no end-of-sequence token in the tokenizer or generation config")
    return list(dict.fromkeys(ids))


class NucleusSampler:
    """Temperature + top-p sampling as a logits processor, with its own seeded generator.

    transformers' sampler sorts the whole vocabulary for top-p and draws with torch.multinomial
    over all of it: with 64 sequences x 49k tokens on a CPU that costs more than the forward pass.
    This processor draws the token itself from the `k` most likely candidates and returns scores in
    which only the drawn token is finite; generation runs greedy, so that token is emitted. Exact:
    when some row's top k hold less than top_p of the mass, the step falls back to a full sort.
    """

    def __init__(self, temperature: float, top_p: float, generator: torch.Generator, k: int = 256):
        self.temperature, self.top_p, self.generator, self.k = temperature, top_p, generator, k

    def nucleus(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities, token ids) of each row's candidates, most likely first; outside the nucleus p = 0."""
        probs = (scores.float() / self.temperature).softmax(-1)
        if self.top_p >= 1.0:
            return probs, None
        top, ids = probs.topk(min(self.k, probs.shape[-1]), dim=-1)
        if bool((top.sum(-1) < self.top_p).any()):
            top, ids = probs.sort(-1, descending=True)
        keep = (top.cumsum(-1) - top) < self.top_p  # the mass before a token is below top_p
        return top * keep, ids

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs, ids = self.nucleus(scores)
        choice = torch.multinomial(probs, 1, generator=self.generator)
        tokens = choice if ids is None else ids.gather(-1, choice)
        return torch.full_like(scores, float("-inf")).scatter_(-1, tokens, 0.0)


class HFBackend:
    """transformers generation: n samples per prompt as repeated rows, batched by prompt length."""

    name = "hf"

    def __init__(self, model, tokenizer, model_name: str | None = None, revision: str | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_name = model_name or model.name_or_path or type(model).__name__
        self.revision = revision
        self.eos_ids = stop_token_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    def preferred_batch_prompts(self, sampling: SamplingParams) -> int:
        return max(1, sampling.batch_size // sampling.n)

    def render(self, messages: list[dict]) -> str:
        if not self.tokenizer.chat_template:
            raise GenerationError(f"{self.model_name}: the tokenizer has no chat template; use an instruct model "
                                  "or set tokenizer.chat_template")
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def generate(self, records: Sequence, sampling: SamplingParams, seed: int) -> list[list[Completion]]:
        return self.complete([record_messages(r, sampling.system_prompt) for r in records], sampling, seed)

    def chat(self, messages_list: list[list[dict]], max_new_tokens: int, temperature: float = 0.0) -> list[str]:
        sampling = SamplingParams(n=1, temperature=temperature, max_new_tokens=max_new_tokens)
        return [c[0].text for c in self.complete(messages_list, sampling, seed=0)]

    def complete(self, conversations: list[list[dict]], sampling: SamplingParams, seed: int) -> list[list[Completion]]:
        """`sampling.n` completions per conversation; batch k draws from a generator seeded mix_seed(seed, k)."""
        prompts = [self.tokenizer(self.render(m), add_special_tokens=False)["input_ids"] for m in conversations]
        # Longest first (stable, so a prompt's n copies stay together): batches of similar lengths pad little.
        jobs = sorted(((i, s) for i in range(len(prompts)) for s in range(sampling.n)),
                      key=lambda job: -len(prompts[job[0]]))
        results: list[list[Completion | None]] = [[None] * sampling.n for _ in prompts]
        starts = range(0, len(jobs), sampling.batch_size)
        for number, start in enumerate(tqdm(starts, desc="hf batches", leave=False, disable=len(starts) < 2)):
            batch = jobs[start:start + sampling.batch_size]
            sampler = None
            if sampling.temperature > 0:
                generator = torch.Generator(self.model.device).manual_seed(mix_seed(seed, number))
                sampler = NucleusSampler(sampling.temperature, sampling.top_p, generator)
            for (i, s), completion in zip(batch, self._generate_batch([prompts[i] for i, _ in batch],
                                                                      sampling.max_new_tokens, sampler)):
                results[i][s] = completion
        return results

    @torch.inference_mode()
    def _generate_batch(self, prompts: list[list[int]], max_new_tokens: int, sampler) -> list[Completion]:
        """Decode a batch: each distinct prompt is prefilled once and its cache copied to its samples;
        rows that reached an end token leave the batch, so the last long answer runs alone.

        Greedy picks the most likely token; with a sampler, the token it drew (see NucleusSampler).
        """
        device = self.model.device
        distinct = list(dict.fromkeys(map(tuple, prompts)))
        width = max(map(len, distinct))
        ids = torch.full((len(distinct), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(distinct):  # left padding: every row ends where generation starts
            ids[row, width - len(prompt):] = torch.tensor(prompt)
            mask[row, width - len(prompt):] = 1
        ids, mask = ids.to(device), mask.to(device)
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=position, use_cache=True, logits_to_keep=1)
        rows = torch.tensor([distinct.index(tuple(p)) for p in prompts], device=device)
        cache = out.past_key_values
        cache.batch_select_indices(rows)
        logits, mask, position = out.logits[rows, -1].float(), mask[rows], position[rows, -1:]
        alive = torch.arange(len(prompts), device=device)  # the batch row each live row belongs to
        stop = torch.tensor(self.eos_ids, device=device)
        tokens: list[list[int]] = [[] for _ in prompts]
        for step in range(max_new_tokens):
            chosen = (sampler(None, logits) if sampler else logits).argmax(-1)
            for row, token in zip(alive.tolist(), chosen.tolist()):
                tokens[row].append(token)
            running = (~torch.isin(chosen, stop)).nonzero().squeeze(-1)
            if step == max_new_tokens - 1 or running.numel() == 0:
                break
            if running.numel() < len(alive):
                cache.batch_select_indices(running)
                alive, chosen, mask, position = alive[running], chosen[running], mask[running], position[running]
            mask = torch.cat([mask, mask.new_ones(len(alive), 1)], dim=-1)
            position = position + 1
            out = self.model(input_ids=chosen[:, None], attention_mask=mask, position_ids=position,
                             past_key_values=cache, use_cache=True)
            logits = out.logits[:, -1].float()
        completions = []
        for prompt, generated in zip(prompts, tokens):
            end = next((k for k, t in enumerate(generated) if t in self.eos_ids), None)
            finish, kept, count = ("length", generated, len(generated)) if end is None else ("stop", generated[:end], end + 1)
            text = self.tokenizer.decode(kept, skip_special_tokens=True).strip()
            completions.append(Completion(text, finish, len(prompt), count))
        return completions


# ----------------------------------------------------------------------------------------- openai


def is_loopback(url: str | None) -> bool:
    host = urlparse(url or "").hostname
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OpenAIBackend:
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

    class BadReply(Exception):
        """A 200 reply we cannot use; `reason` is "malformed" or "no_choices"."""

        def __init__(self, reason: str, message: str):
            super().__init__(message)
            self.reason = reason

    def __init__(self, base_url: str | None, model: str, api_key_env: str = "OPENAI_API_KEY",
                 max_concurrency: int = 8, timeout: float = 120.0, max_retries: int = 6,
                 backoff: float = 1.0, max_backoff: float = 60.0, revision: str | None = None):
        from openai import OpenAI

        self.base_url = base_url or "https://api.openai.com/v1"
        self.model_name, self.revision = model, revision
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
        self._lock = threading.Lock()  # requests run in threads
        self.client = OpenAI(api_key=key, base_url=self.base_url, timeout=timeout, max_retries=0)

    def __repr__(self) -> str:
        return f"OpenAIBackend({self.base_url!r}, model={self.model_name!r})"

    def preferred_batch_prompts(self, sampling: SamplingParams) -> int:
        return 4 * self.max_concurrency

    def generate(self, records: Sequence, sampling: SamplingParams, seed: int) -> list[list[Completion]]:
        return self._map([record_messages(r, sampling.system_prompt) for r in records], sampling, seed)

    def chat(self, messages_list: list[list[dict]], max_new_tokens: int, temperature: float = 0.0) -> list[str]:
        sampling = SamplingParams(n=1, temperature=temperature, max_new_tokens=max_new_tokens)
        return [c[0].text for c in self._map(messages_list, sampling, seed=0)]

    def _map(self, conversations: list[list[dict]], sampling: SamplingParams, seed: int) -> list[list[Completion]]:
        """One request per conversation, at most `max_concurrency` in flight; results in input order."""
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
        for attempt in range(self.max_retries + 1):
            try:
                return self._completions(self.client.chat.completions.create(**kwargs))
            except (openai.APIStatusError, openai.APIConnectionError, openai.APIResponseValidationError,
                    json.JSONDecodeError, self.BadReply) as err:
                reason = self._reason(err)
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
            return [Completion(text=(c.message.content or "").strip(), finish_reason=c.finish_reason or "stop",
                               prompt_tokens=usage.prompt_tokens if usage else None,
                               completion_tokens=usage.completion_tokens if usage and not shared else None)
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


# ------------------------------------------------------------------------------------------- vllm


def vllm_engine_kwargs(spec: ModelParams, seed: int = 0) -> dict:
    """`vllm.LLM(...)` arguments for a model spec."""
    from .models import resolve_path

    kwargs = dict(model=resolve_path(spec), dtype=spec.dtype, seed=seed, trust_remote_code=spec.trust_remote_code)
    if spec.revision and not spec.name.startswith("embedded:"):
        kwargs["revision"] = spec.revision
    if spec.load_in_4bit:
        kwargs["quantization"] = "bitsandbytes"
    return kwargs


def vllm_sampling_kwargs(sampling: SamplingParams, seed: int) -> dict:
    """`vllm.SamplingParams(...)` arguments; a per-request seed makes output independent of batching."""
    return dict(n=sampling.n, temperature=sampling.temperature,
                top_p=sampling.top_p if sampling.temperature > 0 else 1.0,
                max_tokens=sampling.max_new_tokens, seed=seed)


class VLLMBackend:
    """The vLLM offline engine (GPU). Imported only when selected."""

    name = "vllm"

    def __init__(self, spec: ModelParams, seed: int = 0):
        try:
            import vllm
        except ImportError as err:
            raise GenerationError("backend 'vllm' needs vLLM (Linux + CUDA GPU): pip install 'porover[vllm]'") from err
        self._vllm = vllm
        self.model_name, self.revision = spec.name, spec.revision
        self.llm = vllm.LLM(**vllm_engine_kwargs(spec, seed))

    def preferred_batch_prompts(self, sampling: SamplingParams) -> int:
        return 256  # vLLM schedules its own batches; this is only the checkpoint granularity

    def generate(self, records: Sequence, sampling: SamplingParams, seed: int) -> list[list[Completion]]:
        return self._run([record_messages(r, sampling.system_prompt) for r in records], sampling, seed)

    def chat(self, messages_list: list[list[dict]], max_new_tokens: int, temperature: float = 0.0) -> list[str]:
        sampling = SamplingParams(n=1, temperature=temperature, max_new_tokens=max_new_tokens)
        return [c[0].text for c in self._run(messages_list, sampling, seed=0)]

    def _run(self, conversations, sampling: SamplingParams, seed: int) -> list[list[Completion]]:
        params = [self._vllm.SamplingParams(**vllm_sampling_kwargs(sampling, mix_seed(seed, i)))
                  for i in range(len(conversations))]
        outputs = self.llm.chat(conversations, sampling_params=params, use_tqdm=True)  # paired one by one
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


def make_backend(params: BackendParams, model=None, tokenizer=None) -> Backend:
    """The backend `params` describe; `model`/`tokenizer` inject an already-loaded pair (hf only)."""
    if params.kind == "hf":
        from .models import load_model, load_tokenizer

        model = model if model is not None else load_model(params.model)
        tokenizer = tokenizer if tokenizer is not None else load_tokenizer(params.model)
        return HFBackend(model, tokenizer, params.model.name, params.model.revision)
    if model is not None or tokenizer is not None:
        raise ValueError(f"backend kind {params.kind!r} takes no model/tokenizer (only 'hf' does)")
    if params.kind == "openai":
        return OpenAIBackend(params.base_url, params.api_model, params.api_key_env, params.max_concurrency,
                             params.timeout, params.max_retries, revision=params.model.revision)
    if params.kind == "vllm":
        return VLLMBackend(params.model)
    if params.kind == "reference":
        return ReferenceBackend()
    raise ValueError(f"unknown backend kind {params.kind!r}; expected hf, openai, vllm or reference")


# ---------------------------------------------------------------------------------- overgeneration

ROW_FIELDS = ("prompt_id", "prompt", "role", "category", "label", "source", "sample_index", "completion",
              "finish_reason", "prompt_tokens", "completion_tokens", "backend", "model", "revision", "seed",
              "temperature", "top_p", "max_new_tokens", "system_prompt")


def _rows_of_this_run(path: Path, provenance: dict) -> list[dict]:
    """The rows to resume from: a file written with other settings (model, revision, sampling, system
    prompt, seed, ...) is not this run, so it is set aside as `<name>.stale-<time>` and started afresh."""
    rows = read_jsonl(path)
    for row in rows:
        if differ := [k for k, v in provenance.items() if row.get(k) != v]:
            stamp, i = time.strftime("%Y%m%d-%H%M%S"), 1
            stale = path.with_name(f"{path.name}.stale-{stamp}")
            while stale.exists():  # two restarts within a second keep both old files
                stale, i = path.with_name(f"{path.name}.stale-{stamp}-{i}"), i + 1
            path.rename(stale)
            log.warning("%s was written with other settings (%s: file has %r, this run %r); moved to %s, "
                        "starting afresh", path, differ[0], row.get(differ[0]), provenance[differ[0]], stale.name)
            return []
    return rows


def overgenerate(records: Sequence, backend: Backend, sampling: SamplingParams, out_path: str | Path, seed: int,
                 batch_prompts: int | None = None, extra: dict | None = None):
    """`sampling.n` completions per record into `out_path` (JSONL); resumes a partial file.

    Rows are appended (fsynced) per batch of `batch_prompts` records and keyed by (prompt_id,
    sample_index); a restart skips the keys already written. Batch k is generated with seed
    mix_seed(seed, k), so with the same records, settings and batch_prompts a resumed run yields
    the same rows as an uninterrupted one. `extra` adds fixed fields (e.g. the prompt set) to every
    row and takes part in the same-run check. Returns the rows of `records` as a DataFrame.
    """
    import pandas as pd

    out_path = Path(out_path)
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        dup = sorted(i for i, count in Counter(ids).items() if count > 1)[:10]
        raise GenerationError(f"overgenerate -> {out_path}: duplicate prompt ids {dup}")
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(ROW_FIELDS))
    if clash:
        raise GenerationError(f"overgenerate -> {out_path}: extra fields {clash} would overwrite row fields")
    provenance = json.loads(json.dumps(dict(
        backend=backend.name, model=backend.model_name, revision=backend.revision, seed=seed,
        temperature=sampling.temperature, top_p=sampling.top_p, max_new_tokens=sampling.max_new_tokens,
        system_prompt=sampling.system_prompt, **extra)))

    rows: list[dict] = []
    if out_path.exists():
        repair_jsonl_tail(out_path)
        rows = _rows_of_this_run(out_path, provenance)
    done = {(row["prompt_id"], row["sample_index"]) for row in rows}
    if done:
        log.info("%s: resuming, %d rows already written", out_path, len(done))

    n = sampling.n
    if batch_prompts is None:
        preferred = getattr(backend, "preferred_batch_prompts", None)
        batch_prompts = preferred(sampling) if preferred else 16

    def complete(record) -> bool:
        return all((record.id, s) in done for s in range(n))

    tokens, seconds = 0, 0.0
    with tqdm(total=len(records), initial=sum(map(complete, records)), unit="prompt",
              desc=f"overgenerate {backend.name}:{backend.model_name}") as bar:
        for number, start in enumerate(range(0, len(records), batch_prompts)):
            batch = records[start:start + batch_prompts]
            todo = [r for r in batch if not complete(r)]
            if not todo:
                continue
            started = time.perf_counter()
            outputs = backend.generate(batch, sampling, mix_seed(seed, number))  # whole batch: same seed, same rows
            seconds += time.perf_counter() - started
            if len(outputs) != len(batch) or any(len(o) != n for o in outputs):
                raise GenerationError(f"backend {backend.name}: returned {[len(o) for o in outputs]} completions "
                                      f"for {len(batch)} prompts, expected {n} each")
            new = []
            for record, completions in zip(batch, outputs):
                for index, c in enumerate(completions):
                    if (record.id, index) in done:
                        continue
                    new.append(dict(
                        prompt_id=record.id, prompt=record.prompt, role=record.role, category=record.category,
                        label=record.label, source=record.source, sample_index=index, completion=c.text,
                        finish_reason=c.finish_reason, prompt_tokens=c.prompt_tokens,
                        completion_tokens=c.completion_tokens, **provenance))
                    tokens += c.completion_tokens or 0
            append_jsonl(out_path, new)
            rows += new
            done.update((row["prompt_id"], row["sample_index"]) for row in new)
            bar.update(len(todo))
            bar.set_postfix(tok_s=f"{tokens / max(seconds, 1e-9):.1f}")

    order = {pid: k for k, pid in enumerate(ids)}
    kept = sorted((r for r in rows if r["prompt_id"] in order and r["sample_index"] < n),
                  key=lambda r: (order[r["prompt_id"]], r["sample_index"]))
    return pd.DataFrame(kept, columns=list(ROW_FIELDS) + list(extra))
