"""Generation: the `hf` backend, the backend factory and resumable overgeneration (stage 01).

- `hf`: transformers, batched with left padding on the model's chat template (teachers, the student);
- `openai`, `vllm`, `reference`: see `backends.py`, with the interface every backend shares.

`overgenerate` writes N completions per prompt to JSONL, one fsynced append per batch, and on a
restart generates only the (prompt_id, sample_index) rows still missing. Each batch is seeded from
(run seed, batch number), so a resumed run writes the same rows an uninterrupted run would.
"""
from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .backends import (
    Backend, ChatBackend, Completion, GenerationError, OpenAIBackend, ReferenceBackend, VLLMBackend, mix_seed,
)
from .config import BackendParams, SamplingParams
from .io import append_jsonl, read_jsonl, repair_jsonl_tail

log = logging.getLogger(__name__)

# Tokens that close an assistant turn in common chat templates (ChatML, Llama 3, Gemma, Phi-3).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")


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


GROUPED_EAGER = "grouped_eager"


def grouped_eager_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """transformers' eager attention for grouped-query models, without `repeat_kv`: each key/value head meets
    its group of query heads in one matmul instead of being copied once per query head, which on a CPU decode
    step of SmolLM2 (9 query heads, 3 key/value heads) copies the whole cache twice per layer. The same dot
    products in the same order: the same numbers (tests/test_generation.py), sooner (benchmarks/decode_copies.py)."""
    batch, heads, length, dim = query.shape
    kv_heads, keys = key.shape[1], key.shape[2]
    rows = heads // kv_heads * length  # query head h reads key/value head h // (heads // kv_heads)
    weights = (torch.matmul(query.reshape(batch, kv_heads, rows, dim), key.transpose(2, 3)) * scaling)
    weights = weights.view(batch, heads, length, keys)
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = torch.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(weights.view(batch, kv_heads, rows, keys), value)
    return out.view(batch, heads, length, dim).transpose(1, 2).contiguous(), weights


def use_grouped_eager_attention(model) -> bool:
    """Switch an eager-attention Llama with fewer key/value heads than query heads to `grouped_eager_attention`
    for inference (training keeps eager: its backward sums the groups in another order). Other architectures
    keep their own eager attention (softcapping, sinks, ...)."""
    config = model.config
    if (config._attn_implementation != "eager" or config.model_type != "llama"
            or (config.num_key_value_heads or config.num_attention_heads) >= config.num_attention_heads):
        return False
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(GROUPED_EAGER, grouped_eager_attention)
    AttentionMaskInterface.register(GROUPED_EAGER, eager_mask)  # the additive mask eager attention adds
    config._attn_implementation = GROUPED_EAGER
    return True


class HFBackend(ChatBackend):
    """transformers generation: n samples per prompt as repeated rows, batched by prompt length."""

    name = "hf"

    def __init__(self, model, tokenizer, model_name: str | None = None, revision: str | None = None,
                 adapter: str | None = None):
        self.model = model.eval()
        use_grouped_eager_attention(self.model)
        self.tokenizer = tokenizer
        self.model_name = model_name or model.name_or_path or type(model).__name__
        self.revision = revision
        self.adapter = adapter  # fingerprint of the LoRA adapter merged in (stages.checkpoint_backend), or None
        self.eos_ids = stop_token_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    def preferred_batch_prompts(self, sampling: SamplingParams) -> int:
        return max(1, sampling.batch_size // sampling.n)

    def render(self, messages: list[dict]) -> str:
        if not self.tokenizer.chat_template:
            raise GenerationError(f"{self.model_name}: the tokenizer has no chat template; use an instruct model "
                                  "or set tokenizer.chat_template")
        if messages[-1]["role"] == "assistant":  # an unfinished answer (completion attack): continue it
            return self.render(messages[:-1]) + messages[-1]["content"]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

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
        # logits of the last position only, picked by index: an int keeps a strided view, which matmul multiplies
        # by lm_head's weight copied once per row (a 1.8 GB copy per CPU batch of 32 with a 49k vocabulary)
        last = torch.tensor([width - 1], device=device)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=position, use_cache=True, logits_to_keep=last)
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


def backend_model_name(params: BackendParams) -> str:
    """The `model` a backend of these params writes into its rows, known without loading anything."""
    if params.kind == "openai":
        return params.api_model
    if params.kind == "reference":
        return ReferenceBackend.model_name
    return params.model.name


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
                             params.timeout, params.max_retries, revision=params.model.revision,
                             continue_final_message=params.continue_final_message)
    if params.kind == "vllm":
        return VLLMBackend(params.model, max_model_len=params.max_model_len,
                           gpu_memory_utilization=params.gpu_memory_utilization)
    if params.kind == "reference":
        return ReferenceBackend()
    raise ValueError(f"unknown backend kind {params.kind!r}; expected hf, openai, vllm or reference")


# ---------------------------------------------------------------------------------- overgeneration

ROW_FIELDS = ("prompt_id", "prompt", "role", "category", "label", "source", "pair_id", "sample_index", "completion",
              "finish_reason", "error", "prompt_tokens", "completion_tokens", "api_model", "system_fingerprint",
              "backend", "model", "revision", "adapter", "seed", "temperature", "top_p", "max_new_tokens",
              "system_prompt")


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
        backend=backend.name, model=backend.model_name, revision=backend.revision,
        adapter=getattr(backend, "adapter", None), seed=seed,
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
                        label=record.label, source=record.source, pair_id=getattr(record, "pair_id", ""),
                        sample_index=index, completion=c.text, finish_reason=c.finish_reason, error=c.error,
                        prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens,
                        api_model=c.api_model, system_fingerprint=c.system_fingerprint, **provenance))
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
