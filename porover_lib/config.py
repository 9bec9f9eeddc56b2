"""Typed run parameters: one YAML per profile in `params/`, validated when loaded.

A profile may start with `extends: <other profile>` and override only what differs; the resolved
profile is what the notebooks read and what DVC tracks (`params/active.yaml`, written by `make`).
Every mistake (unknown key, wrong type, out-of-range value) fails at load time with a message
that names the file, the key, the value and what is allowed.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ROLES = ("general", "harmful", "seemingly_toxic")
Role = Literal["general", "harmful", "seemingly_toxic"]


# Keys the sft/po sections set themselves: a `trl:` pass-through may not set them a second time.
TRAINER_KEYS_OWNED = frozenset({
    "output_dir", "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "num_train_epochs",
    "max_steps", "max_length", "activation_checkpointing", "gradient_checkpointing", "save_steps", "seed",
    "data_seed", "bf16", "fp16", "use_cpu", "optim", "warmup_steps", "completion_only_loss", "loss_type",
    "loss_weights", "beta", "label_smoothing", "precompute_ref_log_probs", "report_to", "logging_steps",
    "save_strategy", "save_total_limit", "disable_tqdm"})


def check_trl_keys(value: dict[str, Any], config_class: str) -> dict[str, Any]:
    """A `trl:` pass-through names fields of TRL's config class that our own keys do not already set."""
    if not value:
        return value
    import dataclasses

    import trl

    fields = {f.name for f in dataclasses.fields(getattr(trl, config_class))}
    unknown = sorted(set(value) - fields)
    if unknown:
        raise ValueError(f"unknown {config_class} field(s) {unknown} (TRL {trl.__version__})")
    owned = sorted(set(value) & TRAINER_KEYS_OWNED)
    if owned:
        raise ValueError(f"{owned} set by this section's own keys; set them there, not under 'trl'")
    return value


class Strict(BaseModel):
    """Base for every params section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelParams(Strict):
    """A model to load: an HF hub id, a local path, or `embedded:smollm2-135m-instruct`."""

    name: str = "embedded:smollm2-135m-instruct"
    revision: str | None = None  # pin a hub commit for reproducible real runs
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "bfloat16"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    trust_remote_code: bool = False
    load_in_4bit: bool = False  # QLoRA: bitsandbytes nf4 + double quantisation, bf16 compute
    # None: transformers' choice (sdpa). "eager" trains a small model ~1.4x faster on CPU, where the sdpa
    # backward is slow (benchmarks/train_throughput.py); "flash_attention_2" needs the flash-attn package
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = None


class PromptSetParams(Strict):
    """Where a prompt set comes from; every source is normalised to `prompts.PromptRecord`."""

    source: Literal["embedded", "hub", "file"] = "embedded"
    name: str  # embedded set name, hub table key (see prompts.HUB_SOURCES) or a file path
    role: Role | None = None  # required for hub/file sources without a role in the table
    split: Literal["train", "val", "eval", "all"] = "all"  # val: training prompts kept back for tuning
    limit: int | None = Field(default=None, ge=1)
    columns: dict[str, str] = Field(default_factory=dict)  # our field -> column in the file
    label: Literal["safe", "unsafe"] | None = None  # label for files that carry none
    # source hub: a local copy of the dataset repository (`huggingface-cli download --repo-type dataset
    # <repo> --local-dir <dir>`), read by `datasets` as the hub copy is; for offline machines and tests
    local_path: str | None = None
    revision: str | None = None  # source hub: a commit of the dataset repository, for a reproducible run
    # evaluation sets whose prompts this (training) set must not hold: exact and near duplicates
    # (porover_lib/overlap.py) are dropped before `limit`, and stage 01 reports how many
    drop_overlap_with: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _local_path_is_for_hub(self) -> PromptSetParams:
        for key in ("local_path", "revision"):
            if getattr(self, key) is not None and self.source != "hub":
                raise ValueError(f"{key!r} is for source 'hub' (a hub dataset), not {self.source!r}")
        return self


class SamplingParams(Strict):
    n: int = Field(default=1, ge=1, le=256)  # completions per prompt
    temperature: float = Field(default=0.0, ge=0.0, le=5.0)  # 0 = greedy
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(default=128, ge=1, le=32768)
    batch_size: int = Field(default=16, ge=1)  # sequences per forward pass (hf backend)
    system_prompt: str | None = None


class BackendParams(Strict):
    """A generation backend (teacher, student sampler, or judge model)."""

    kind: Literal["hf", "openai", "vllm", "reference"] = "hf"
    model: ModelParams = Field(default_factory=ModelParams)
    # openai-compatible servers (OpenAI, vLLM, llama.cpp, Ollama)
    base_url: str | None = None
    api_model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"  # the NAME of the variable; the key itself never enters params
    max_concurrency: int = Field(default=8, ge=1, le=512)
    timeout: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=6, ge=0, le=50)
    # openai: the server continues an unfinished assistant turn (the completion attack) when asked with vLLM's
    # `continue_final_message`; OpenAI's own API cannot, so it stays off unless the server is vLLM (or alike)
    continue_final_message: bool = False
    # vllm (offline engine): the context its KV cache is sized for (Llama-3.1's 131k does not fit a 24 GB card)
    # and the share of GPU memory it may take; None: vLLM's defaults
    max_model_len: int | None = Field(default=None, ge=16)
    gpu_memory_utilization: float | None = Field(default=None, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _openai_needs_model(self) -> BackendParams:
        if self.kind == "openai" and not self.api_model:
            raise ValueError("kind 'openai' needs 'api_model' (the model name the server serves)")
        return self


class OvergenerateParams(Strict):
    """Stage 01: the teacher writes `sampling.n` completions per prompt of each set."""

    # prompt set name -> teacher name, or several: e.g. [reference, smol] gives harmful prompts both safe
    # references and the model's own (often unsafe) answers, which DeRTa trains against
    sets: dict[str, str | list[str]] = Field(default_factory=dict)
    sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(n=4, temperature=0.8, top_p=0.95))
    # per set, keys of `sampling` that differ, e.g. {toxic_train: {n: 2, max_new_tokens: 64}}: fewer, shorter
    # samples where a stage reads only one answer's opening
    set_sampling: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def sampling_for(self, set_name: str) -> SamplingParams:
        """The sampling of one set: `sampling` with the set's `set_sampling` keys."""
        return SamplingParams.model_validate({**self.sampling.model_dump(), **self.set_sampling.get(set_name, {})})

    @model_validator(mode="after")
    def _set_sampling_valid(self) -> OvergenerateParams:
        for name in self.set_sampling:
            if name not in self.sets:
                raise ValueError(f"overgenerate.set_sampling.{name}: not a set of overgenerate.sets ({sorted(self.sets)})")
            try:
                self.sampling_for(name)
            except ValidationError as err:
                raise ValueError(f"overgenerate.set_sampling.{name}: " + "; ".join(
                    _describe(e) for e in err.errors(include_url=False))) from None
        return self


BATCHED_JUDGES = ("llama_guard", "hf_reward_model", "heuristic")  # judges that run a local model in batches


class JudgeParams(Strict):
    name: str
    model: ModelParams | None = None  # model-based judges (llama_guard, hf_reward_model, heuristic scorer)
    backend: str | None = None  # a teacher/backend name for judges that talk through a backend (llm, llama_guard)
    # rows per forward pass of a local judge model (None: the judge's own default, 8 for the 8B judges, 16 for
    # heuristic); lower it when a bf16 8B judge's long answers crowd a 24 GB card
    batch_size: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _batch_size_needs_a_batched_judge(self):
        if self.batch_size is not None and self.name not in BATCHED_JUDGES:
            raise ValueError(f"batch_size applies to {', '.join(BATCHED_JUDGES)}, not to judge {self.name!r}")
        return self


class JudgesParams(Strict):
    refusal: JudgeParams = Field(default_factory=lambda: JudgeParams(name="keyword"))
    safety: JudgeParams = Field(default_factory=lambda: JudgeParams(name="refusal_proxy"))
    reward: JudgeParams = Field(default_factory=lambda: JudgeParams(name="heuristic"))


class SelectParams(Strict):
    """Stage 02: rejection sampling (best-of-N by judges)."""

    # sets whose selected completions become SFT data; others (seemingly-toxic) are overgenerated only
    # to give stage 04 its teacher answers, as in POROver, where they enter through preference pairs
    sets: list[str] = Field(default_factory=list)
    strategy: Literal["best_of_n", "random", "first", "longest"] = "best_of_n"
    # harmful prompts' pick among safe answers; None: `strategy`. `longest` keeps specific refusals
    # over stock ones (see selection.py)
    harmful_strategy: Literal["best_of_n", "random", "first", "longest"] | None = None
    # per set, the teachers whose completions may become SFT answers (default: every teacher of the set);
    # e.g. harmful prompts answered by the team's references, the student's own answers kept for DeRTa
    teachers: dict[str, list[str]] = Field(default_factory=dict)
    min_reward: float | None = None  # optional floor on the reward of a kept general completion
    # answers per general prompt: its N samples in this many groups by sample index, the best acceptable of each
    general_answers: int = Field(default=1, ge=1)
    # at most this share of SFT rows refuse harmful prompts (a seeded subset); None: all selected rows
    harmful_share: float | None = Field(default=None, gt=0.0, lt=1.0)


class LoraParams(Strict):
    r: int = Field(default=16, ge=1, le=1024)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = "all-linear"


class DertaParams(Strict):
    """DeRTa (Yuan et al. 2024): harmful-prefix MLE and Reinforced Transition Optimisation."""

    no_prefix_share: float = Field(default=1 / 3, ge=0.0, le=1.0)  # harmful examples without a prefix (paper's code: 1/3)
    rto_share: float = Field(default=1.0, ge=0.0)  # RTO examples per harmful example with a harmful response
    # RTO labels per example: None = every position of the harmful response (the paper); k = k positions drawn
    # at random, so RTO's single target does not outweigh what follows a refusal's first token
    rto_positions: int | None = Field(default=None, ge=1)
    # RTO trains "refuse next" at every harmful position. None: the first token of each row's own safe
    # response. A fixed text (the paper's "Sorry") must open every safe response (checked when building).
    refusal_text: str | None = None


class SFTParams(Strict):
    """Stage 03: (Q)LoRA SFT of the student on the selected data."""

    objective: Literal["standard", "derta"] = "standard"
    lora: LoraParams = Field(default_factory=LoraParams)
    derta: DertaParams = Field(default_factory=DertaParams)
    epochs: float = Field(default=2.0, gt=0)
    max_steps: int = Field(default=-1, ge=-1)  # -1: run `epochs`
    learning_rate: float = Field(default=2e-4, gt=0, le=1.0)
    batch_size: int = Field(default=8, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    max_length: int = Field(default=512, ge=16)
    warmup_ratio: float = Field(default=0.0, ge=0.0, lt=1.0)
    gradient_checkpointing: bool = False
    save_steps: int = Field(default=50, ge=1)  # Trainer checkpoint interval: an interrupted run resumes from it
    # loss on each answer's first k tokens only, with no end of turn after them (porover_lib/openings.py): the
    # refuse/answer decision carries the loss. None: whole answers and their end of turn
    opening_tokens: int | None = Field(default=None, ge=1)
    # at most this share of the adapter's rows harmful (a seeded subset of them, selection.cap_share); None: every
    # row. DeRTa turns into a refusal reflex when most of its examples come from harmful rows (outputs/tuning, derta_share)
    harmful_share: float | None = Field(default=None, gt=0.0, lt=1.0)
    # a variant only: the checkpoint the evaluation compares it with, `sft` or another variant (None: `sft`), e.g.
    # standard SFT on the same rows beside a DeRTa variant with its own harmful_share
    compare_with: str | None = None
    # any other SFTConfig field under TRL's own name, e.g. {train_sampling_strategy: group_by_length}
    trl: dict[str, Any] = Field(default_factory=dict)
    # further adapters trained from the same data, each overriding keys of this block, e.g.
    # {derta: {objective: derta}}: standard and DeRTa SFT side by side, as the DeRTa paper compares them
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("trl")
    @classmethod
    def _trl_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_trl_keys(value, "SFTConfig")

    @model_validator(mode="after")
    def _variants_valid(self) -> SFTParams:
        if self.compare_with is not None and self.variants:
            raise ValueError("sft.compare_with: only a variant names the checkpoint it is compared with")
        for name in self.variants:
            if "variants" in self.variants[name]:
                raise ValueError(f"sft.variants.{name}: a variant cannot have variants of its own")
            other = self.variant(name).compare_with
            if other is not None and (other == name or other not in {"sft", *self.variants}):
                raise ValueError(f"sft.variants.{name}.compare_with: {other!r} is not `sft` or another variant "
                                 f"({', '.join(v for v in self.variants if v != name) or 'none'})")
        return self

    def variant(self, name: str) -> SFTParams:
        """This block with variant `name`'s overrides applied (and no variants of its own)."""
        merged = deep_merge(self.model_dump(exclude={"variants"}), self.variants[name])
        try:
            return SFTParams.model_validate(merged)
        except ValidationError as err:
            raise ValueError(f"sft.variants.{name}: " + "; ".join(_describe(e) for e in err.errors(include_url=False)))


class PreferenceParams(Strict):
    """Stage 04: student overgeneration, refusal rates, containment threshold tau, pairs."""

    sets: list[str] = Field(default_factory=list)  # prompt sets: seemingly-toxic, harmful, and optionally general
    sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(n=4, temperature=0.8, top_p=0.95))
    tau: float = Field(default=0.5, ge=0.0, le=1.0)  # prompts refused at a rate >= tau become pairs
    teacher: str | None = None  # teacher for chosen answers not already overgenerated in stage 01
    safety_pair_share: float = Field(default=1.0, ge=0.0, le=1.0)  # share of unsafe compliances kept as pairs
    # where a safety pair's rejected (unsafe) answer comes from: the student's samples only (POROver), or,
    # for harmful prompts the student always refuses, an unsafe teacher completion from stage 01
    safety_rejected: Literal["student", "student_or_teacher"] = "student"


class POVariantParams(Strict):
    """One DPO-family objective; loss types are TRL DPOTrainer's (nca_pair is Safe-NCA's)."""

    # TRL 1.16 DPOConfig.loss_type values, checked here so a typo fails at load time, not mid-run
    LOSS_TYPES: ClassVar[tuple[str, ...]] = (
        "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
        "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")

    loss_type: list[str] = Field(default_factory=lambda: ["sigmoid"], min_length=1)
    start: str = "sft"  # the SFT adapter it continues and takes as its reference: sft or an sft.variants name
    loss_weights: list[float] | None = None  # one weight per loss type (weighted sum); None: all 1.0
    beta: float = Field(default=0.1, gt=0)
    # robust DPO's label-flip probability (paper: 0.1; with 0 'robust' equals 'sigmoid'); EXO's epsilon
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=0.5)
    # train only on the pairs whose prompt has one of these roles (over-refusal pairs of general prompts
    # are "general", of seemingly-toxic ones "seemingly_toxic"; safety pairs "harmful"); None: every pair
    pair_roles: list[str] | None = None
    learning_rate: float | None = Field(default=None, gt=0, le=1.0)  # None: the po block's

    @model_validator(mode="after")
    def _losses_known(self) -> POVariantParams:
        unknown = [t for t in self.loss_type if t not in self.LOSS_TYPES]
        if unknown:
            raise ValueError(f"unknown loss_type {unknown}; allowed: {list(self.LOSS_TYPES)}")
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError(f"loss_weights has {len(self.loss_weights)} entries for "
                             f"{len(self.loss_type)} loss types {self.loss_type}")
        if self.pair_roles is not None and (not self.pair_roles or set(self.pair_roles) - set(ROLES)):
            raise ValueError(f"pair_roles {self.pair_roles} must name one or more of {list(ROLES)}")
        if "exo_pair" in self.loss_type and self.label_smoothing == 0.0:
            raise ValueError("loss_type 'exo_pair' needs label_smoothing > 0 (the EXO paper uses 1e-3)")
        return self


class POParams(Strict):
    """Stage 05: DPO-family preference optimisation, continuing from the SFT adapter."""

    variants: dict[str, POVariantParams] = Field(default_factory=lambda: {"po": POVariantParams()})
    epochs: float = Field(default=2.0, gt=0)
    max_steps: int = Field(default=-1, ge=-1)
    learning_rate: float = Field(default=5e-5, gt=0, le=1.0)
    batch_size: int = Field(default=4, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    max_length: int = Field(default=512, ge=16)
    gradient_checkpointing: bool = False
    save_steps: int = Field(default=50, ge=1)  # Trainer checkpoint interval: an interrupted run resumes from it
    # one reference pass over the pairs before training instead of one per step (same numbers, ~1/3 less work)
    precompute_ref_log_probs: bool = True
    # chosen and rejected cut to their first k tokens, with no end of turn (porover_lib/openings.py): the
    # preference falls on the refuse/answer decision. None: whole answers, as TRL builds them
    opening_tokens: int | None = Field(default=None, ge=1)
    # any other DPOConfig field under TRL's own name, e.g. {rpo_alpha: 1.0}
    trl: dict[str, Any] = Field(default_factory=dict)

    @field_validator("trl")
    @classmethod
    def _trl_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_trl_keys(value, "DPOConfig")


class AttackParams(Strict):
    """The completion attack (DeRTa §4): a held-out harmful prompt with the first words of an unsafe
    answer already in the assistant turn; the checkpoint is safe if its continuation refuses."""

    set: str  # a harmful prompt set of `prompts`, also in evaluate.sets
    # prefixes are the first words of the base model's own answers to these prompts that were judged
    # unsafe in this stage, never the prompts' references
    prefix_words: int = Field(default=12, ge=1, le=200)


class ProbeParams(Strict):
    """Stage 06's probe (probe.py): a logistic regression per layer on each checkpoint's hidden states at the
    last prompt token, fitted on training prompts, scored on held-out ones (harmful against seemingly-toxic)."""

    fit: list[str]  # prompt sets to fit on (their harmful and seemingly-toxic prompts), e.g. the training sets
    test: list[str]  # prompt sets to score on, e.g. the evaluation sets
    max_prompts: int | None = Field(default=None, ge=2)  # per set (round robin over categories); None: all


class EvaluateParams(Strict):
    """Stage 06: responses per (checkpoint, prompt set), judged, with bootstrap CIs."""

    sets: list[str] = Field(default_factory=list)
    checkpoints: list[str] = Field(default_factory=lambda: ["base", "sft", "po"])
    sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(n=1, temperature=0.0))
    n_boot: int = Field(default=1000, ge=10)
    attack: AttackParams | None = None
    probe: ProbeParams | None = None


class Params(Strict):
    """A whole profile. Sections map one-to-one onto the notebooks."""

    profile: str
    description: str = ""
    seed: int = 0
    student: ModelParams = Field(default_factory=ModelParams)
    # the student's checkpoints served by an OpenAI-compatible server (`vllm serve <student> --enable-lora
    # --lora-modules sft=checkpoints/sft po=checkpoints/po/po ...`): stages 04 and 06 sample through it, the
    # base as `api_model`, every adapter under its checkpoint name. None: transformers in this process
    student_server: BackendParams | None = None
    prompts: dict[str, PromptSetParams] = Field(default_factory=dict)
    teachers: dict[str, BackendParams] = Field(default_factory=dict)
    overgenerate: OvergenerateParams = Field(default_factory=OvergenerateParams)
    judges: JudgesParams = Field(default_factory=JudgesParams)
    select: SelectParams = Field(default_factory=SelectParams)
    sft: SFTParams = Field(default_factory=SFTParams)
    preference: PreferenceParams = Field(default_factory=PreferenceParams)
    po: POParams = Field(default_factory=POParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)

    @field_validator("prompts")
    @classmethod
    def _roles_known(cls, prompts: dict[str, PromptSetParams]) -> dict[str, PromptSetParams]:
        for name, spec in prompts.items():
            if spec.source == "file" and spec.role is None and "label" not in spec.columns:
                raise ValueError(f"prompt set {name!r} from a file needs 'role' (one of {list(ROLES)}) "
                                 "or a 'label' column to derive it from")
            for other in spec.drop_overlap_with:
                if other not in prompts or other == name:
                    raise ValueError(f"prompts.{name}.drop_overlap_with: {other!r} is not another prompt set; "
                                     f"defined: {sorted(prompts)}")
                if prompts[other].drop_overlap_with:
                    raise ValueError(f"prompts.{name}.drop_overlap_with: {other!r} drops overlaps itself; name "
                                     "evaluation sets here, which drop nothing")
        return prompts

    @model_validator(mode="after")
    def _references_resolve(self) -> Params:
        """Names used by one section must be defined in another: fail now, not an hour into a run."""
        def need(kind: str, name: str | None, where: str, pool: dict) -> None:
            if name is not None and name not in pool:
                raise ValueError(f"{where}: unknown {kind} {name!r}; defined: {sorted(pool)}")

        for set_name in self.overgenerate.sets:
            need("prompt set", set_name, "overgenerate.sets", self.prompts)
            for teacher in self.overgen_teachers(set_name):
                if teacher != "reference":
                    need("teacher", teacher, f"overgenerate.sets.{set_name}", self.teachers)
        for set_name in self.select.sets:
            need("prompt set", set_name, "select.sets", self.overgenerate.sets)
        for set_name, teachers in self.select.teachers.items():
            need("prompt set", set_name, "select.teachers", dict.fromkeys(self.select.sets))
            for teacher in teachers:
                need("teacher", teacher, f"select.teachers.{set_name}", dict.fromkeys(self.overgen_teachers(set_name)))
        for set_name in self.preference.sets:
            need("prompt set", set_name, "preference.sets", self.prompts)
        if self.preference.teacher not in (None, "reference"):
            need("teacher", self.preference.teacher, "preference.teacher", self.teachers)
        for set_name in self.evaluate.sets:
            need("prompt set", set_name, "evaluate.sets", self.prompts)
        for judge in (self.judges.refusal, self.judges.safety, self.judges.reward):
            need("teacher", judge.backend, f"judges.{judge.name}.backend", self.teachers)
        if self.student_server is not None and self.student_server.kind != "openai":
            raise ValueError(f"student_server: kind {self.student_server.kind!r}; a served student is reached "
                             "through kind 'openai' (vLLM, or any OpenAI-compatible server)")
        adapters = {"sft": None, **self.sft.variants}
        for name, variant in self.po.variants.items():
            need("SFT adapter", variant.start, f"po.variants.{name}.start", adapters)
        clash = sorted(set(self.sft.variants) & (set(self.po.variants) | {"base", "sft"}))
        if clash:
            raise ValueError(f"sft.variants: {clash} also name a po variant or base/sft; checkpoint names must be unique")
        if "base" in self.po.variants or "sft" in self.po.variants:
            raise ValueError("po.variants: 'base' and 'sft' are checkpoint names of their own; rename the variant")
        for name in self.evaluate.checkpoints:
            need("checkpoint", name, "evaluate.checkpoints", self.checkpoint_starts())
        if self.evaluate.probe is not None:
            for set_name in self.evaluate.probe.fit + self.evaluate.probe.test:
                need("prompt set", set_name, "evaluate.probe", self.prompts)
        if self.evaluate.attack is not None:
            need("prompt set", self.evaluate.attack.set, "evaluate.attack.set", dict.fromkeys(self.evaluate.sets))
            if "base" not in self.evaluate.checkpoints:
                raise ValueError("evaluate.attack: its prefixes come from the base model's answers; "
                                 "add 'base' to evaluate.checkpoints")
        return self

    def checkpoint_starts(self) -> dict[str, str | None]:
        """Every checkpoint name -> the checkpoint it was trained from (what the text compares it with)."""
        return {"base": None, "sft": "base", **{name: self.sft.variant(name).compare_with or "sft"
                                                  for name in self.sft.variants},
                **{name: v.start for name, v in self.po.variants.items()}}

    def derta_checkpoints(self) -> set[str]:
        """Checkpoints trained with DeRTa's objective, or continuing one (plots set them apart)."""
        ours = {name for name in self.sft.variants if self.sft.variant(name).objective == "derta"}
        return ours | {name for name, v in self.po.variants.items() if v.start in ours}

    def overgen_teachers(self, set_name: str) -> list[str]:
        teachers = self.overgenerate.sets[set_name]
        return [teachers] if isinstance(teachers, str) else list(teachers)

    def teacher(self, name: str) -> BackendParams:
        """The backend named `name`; `reference` is built in (team-written safe responses)."""
        if name == "reference":
            return BackendParams(kind="reference")
        return self.teachers[name]


class ParamsError(ValueError):
    """A profile that cannot be loaded; the message names file, key, value and what is allowed."""


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None and isinstance(out.get(key), dict):
            del out[key]  # `key: null` in a child profile removes a section the parent defined
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_raw(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a profile YAML and apply `extends:` chains (relative to the file's folder)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    if path.resolve() in _seen:
        raise ParamsError(f"{path}: 'extends' forms a cycle: {' -> '.join(map(str, _seen))}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: the top level must be a mapping of keys, got {type(raw).__name__}")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    parent_path = path.parent / (parent if str(parent).endswith(".yaml") else f"{parent}.yaml")
    return deep_merge(resolve_raw(parent_path, _seen + (path.resolve(),)), raw)


def _describe(err: dict) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        return f"unknown key '{key}' (value {err['input']!r}); check the spelling against the schema in porover_lib/config.py"
    if err["type"] == "missing":
        return f"missing key '{key}': {msg}"
    if err["type"] == "value_error":  # a validator's sentence names what is wrong; the input may be the whole profile
        sentence = msg.removeprefix("Value error, ")
        return f"{key}: {sentence}" if err["loc"] else sentence
    return f"key '{key}': value {err['input']!r} is not allowed: {msg}"


def validate(raw: dict[str, Any], source: str = "<params>") -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        lines = [_describe(e) for e in err.errors(include_url=False)]
        raise ParamsError(f"{source}: invalid params:\n  " + "\n  ".join(lines)) from None


def load_params(path: str | Path) -> Params:
    """Load, resolve `extends`, and validate a profile."""
    return validate(resolve_raw(path), str(path))


def dump_resolved(params: Params) -> str:
    """The fully resolved profile as YAML (what `params/active.yaml` holds, for DVC to track)."""
    return yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def write_active(profile: str | Path, target: str | Path = "params/active.yaml") -> Params:
    """Resolve a profile into the one file the notebooks read and DVC tracks."""
    params = load_params(profile)
    header = f"# Resolved from {profile} by `make profile`; edit {profile}, not this file.\n"
    Path(target).write_text(header + dump_resolved(params))
    return params


if __name__ == "__main__":
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="Validate a params profile; print the resolved copy, or write it.")
    parser.add_argument("profile", help="e.g. params/default.yaml")
    # no default: validating a profile must not replace params/active.yaml, which the next `dvc repro` would run
    parser.add_argument("--write", help="where the resolved profile goes (`make profile`: params/active.yaml)")
    args = parser.parse_args()
    try:
        if args.write is None:
            print(dump_resolved(load_params(args.profile)), end="")
        else:
            resolved = write_active(args.profile, args.write)
            print(f"{args.profile} -> {args.write} (profile '{resolved.profile}')")
    except ParamsError as err:
        sys.exit(str(err))
