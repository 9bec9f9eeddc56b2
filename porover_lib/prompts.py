"""Prompt sources, all normalised to one record schema.

Three kinds of source feed the pipeline:
- `embedded`: sets written by this team and shipped in `porover_lib/data/embedded/` (general
  instructions, clearly harmful requests with safe reference responses, seemingly-toxic benign requests);
- `hub`: benchmark datasets for real runs, described by one declarative table (`HUB_SOURCES`);
- `file`: a local CSV / JSON / JSONL (JSON Lines saved as `.json` too) with a column mapping.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable

import pandas as pd

from .config import PromptSetParams

EMBEDDED_DIR = Path(__file__).parent / "data" / "embedded"
EMBEDDED_SETS = {  # name -> role; label follows from the role
    "general": "general",
    "harmful": "harmful",
    "seemingly_toxic": "seemingly_toxic",
}
FIELDS = ("id", "prompt", "category", "label", "split", "pair_id")
EVAL_SHARE = 0.3  # held-out share for sources that carry no split of their own
VAL_SHARE = 0.15  # share of the training prompts kept back for tuning (split "val"), never trained on


@dataclass
class PromptRecord:
    id: str
    prompt: str
    source: str
    category: str
    label: str  # "safe" | "unsafe": whether a good assistant should answer
    split: str  # "train" | "val" | "eval"
    role: str  # "general" | "harmful" | "seemingly_toxic": what the pipeline does with it
    references: list[str] = field(default_factory=list)  # team-written safe responses (embedded harmful)
    prefill: str = ""  # the start of the assistant's answer, which the model continues (completion attack)
    # twin link of the embedded sets: a harmful prompt and a benign one sharing their alarming words and topic
    pair_id: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class HubSource:
    """How one hub dataset maps onto PromptRecord: which columns, which role, which label."""

    path: str
    config: str | None
    split: str
    columns: dict[str, str]  # our field -> dataset column
    role: str | None = None  # None: from each row's label (unsafe -> harmful, safe -> seemingly_toxic)
    label: str | None = None
    template: str | None = None  # e.g. Alpaca joins instruction and input
    # read this file of the repository directly, for repositories whose loading script datasets >= 4 refuses
    data_file: str | None = None


HUB_SOURCES: dict[str, HubSource] = {
    "alpaca": HubSource("tatsu-lab/alpaca", None, "train", {"prompt": "instruction"}, "general", "safe",
                        template="{instruction}\n\n{input}"),
    "alpaca_eval": HubSource("tatsu-lab/alpaca_eval", "alpaca_eval", "train",
                             {"prompt": "instruction", "category": "dataset"}, "general", "safe",
                             data_file="alpaca_eval.json"),
    "or-bench-80k": HubSource("bench-llm/or-bench", "or-bench-80k", "train",
                              {"prompt": "prompt", "category": "category"}, "seemingly_toxic", "safe"),
    "or-bench-hard-1k": HubSource("bench-llm/or-bench", "or-bench-hard-1k", "train",
                                  {"prompt": "prompt", "category": "category"}, "seemingly_toxic", "safe"),
    "or-bench-toxic": HubSource("bench-llm/or-bench", "or-bench-toxic", "train",
                                {"prompt": "prompt", "category": "category"}, "harmful", "unsafe"),
    "xstest": HubSource("Paul/XSTest", None, "train",
                        {"id": "id", "prompt": "prompt", "category": "type", "label": "label"}),
    "advbench": HubSource("walledai/AdvBench", None, "train", {"prompt": "prompt"}, "harmful", "unsafe"),
    "harmbench": HubSource("walledai/HarmBench", "standard", "train",
                           {"prompt": "prompt", "category": "category"}, "harmful", "unsafe"),
}


class PromptSourceError(ValueError):
    """Bad prompt input; the message names the file (or dataset) and the row or column."""


def _split_of(prompt_id: str) -> str:
    """A stable train/eval assignment for sources without splits: same id, same split, any machine."""
    bucket = int(hashlib.sha1(prompt_id.encode()).hexdigest()[:8], 16) % 1000
    return "eval" if bucket < EVAL_SHARE * 1000 else "train"


def _carve_validation(record: PromptRecord) -> PromptRecord:
    """Training prompts whose id (a twin's pair id, so both twins go together) hashes into the validation
    share become split "val": the prompts the recipe is tuned on, so the held-out eval sets stay untouched
    until the final comparison."""
    if record.split != "train":
        return record
    bucket = int(hashlib.sha1(f"val:{record.pair_id or record.id}".encode()).hexdigest()[:8], 16) % 1000
    return replace(record, split="val") if bucket < VAL_SHARE * 1000 else record


# The role a row takes from its label when its set declares none.
LABEL_ROLES = {"unsafe": "harmful", "safe": "seemingly_toxic"}


def _role_and_label(where: str, row_no: int, label, role: str | None, default_label: str | None):
    if label is None or (isinstance(label, float) and pd.isna(label)):
        label = default_label or ("unsafe" if role == "harmful" else "safe" if role else None)
    if label is None:
        raise PromptSourceError(f"{where}: row {row_no}: no label and no role to derive one from")
    label = str(label).strip().lower()
    if label not in ("safe", "unsafe"):
        raise PromptSourceError(f"{where}: row {row_no}: label {label!r} is not 'safe' or 'unsafe'")
    if role is None:
        role = LABEL_ROLES[label]
    return role, label


def normalise(rows: Iterable[dict], source: str, where: str, columns: dict[str, str] | None = None,
              role: str | None = None, label: str | None = None, template: str | None = None,
              references_column: str | None = None) -> list[PromptRecord]:
    """Map raw rows onto PromptRecord and check them: prompts present, ids unique, labels valid."""
    rows = list(rows)
    if not rows:
        raise PromptSourceError(f"{where}: the prompt set is empty")
    columns = dict(columns or {})
    available = list(rows[0].keys())
    prompt_column = columns.get("prompt", "prompt")
    needed = [c for c in [prompt_column, *(columns.get(f) for f in FIELDS if f != "prompt")] if c]
    if template is None:
        missing = [c for c in needed if c not in available]
        if missing:
            raise PromptSourceError(f"{where}: missing column(s) {missing}; the file has {available}")
    records, seen = [], {}
    stem = Path(where).stem if source == "file" else where
    for i, row in enumerate(rows, start=1):
        text = template.format(**row).strip() if template else row.get(prompt_column)
        if text is None or (isinstance(text, float) and pd.isna(text)) or not str(text).strip():
            raise PromptSourceError(f"{where}: row {i}: empty prompt in column {prompt_column!r}")
        pid = str(row[columns["id"]]) if "id" in columns else f"{stem}-{i:05d}"
        if pid in seen:
            raise PromptSourceError(f"{where}: row {i}: duplicate id {pid!r} (first seen in row {seen[pid]})")
        seen[pid] = i
        rrole, rlabel = _role_and_label(where, i, row.get(columns["label"]) if "label" in columns else None,
                                        role, label)
        split = str(row[columns["split"]]) if "split" in columns else _split_of(pid)
        category = str(row[columns["category"]]) if "category" in columns else "none"
        refs = list(row.get(references_column) or []) if references_column else []
        pair = str(row.get(columns["pair_id"]) or "") if "pair_id" in columns else ""
        records.append(PromptRecord(pid, str(text).strip(), source, category, rlabel, split, rrole, refs, pair_id=pair))
    return records


def read_table(path: str | Path) -> list[dict]:
    """Rows of a CSV, JSON array, or JSON Lines file (also when JSON Lines is saved as `.json`)."""
    path = Path(path)
    if not path.is_file():
        raise PromptSourceError(f"{path}: prompt file not found")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False).to_dict("records")
    if suffix not in (".json", ".jsonl"):
        raise PromptSourceError(f"{path}: unsupported file type {suffix!r}; use .csv, .json or .jsonl")
    text = path.read_text(encoding="utf-8")
    if suffix == ".json" and text.lstrip().startswith("["):
        return json.loads(text)
    rows = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise PromptSourceError(f"{path}: line {line_no} is not valid JSON: {err.msg}") from None
    return rows


def load_embedded(name: str) -> list[PromptRecord]:
    if name not in EMBEDDED_SETS:
        raise PromptSourceError(f"unknown embedded prompt set {name!r}; known: {sorted(EMBEDDED_SETS)}")
    path = EMBEDDED_DIR / f"{name}.jsonl"
    columns = {"id": "id", "prompt": "prompt", "category": "category", "split": "split"}
    if name != "general":  # harmful and seemingly-toxic prompts come in twin pairs
        columns["pair_id"] = "pair_id"
    return normalise(read_table(path), "embedded", str(path), columns, role=EMBEDDED_SETS[name],
                     references_column="references")


def load_file(path: str | Path, columns: dict[str, str] | None = None, role: str | None = None,
              label: str | None = None) -> list[PromptRecord]:
    return normalise(read_table(path), "file", str(path), columns, role, label)


def load_hub(name: str, revision: str | None = None, local_path: str | None = None) -> list[PromptRecord]:
    """Load a benchmark from the hub through `datasets` (at `revision`, a commit of the dataset repository),
    or from `local_path`, a local copy of its repository read the same way (the ids stay the hub's).
    Each record's `source` names the repository and the revision it was read at."""
    if name not in HUB_SOURCES:
        raise PromptSourceError(f"unknown hub prompt set {name!r}; known: {sorted(HUB_SOURCES)}")
    import datasets

    src = HUB_SOURCES[name]
    # a local copy is read afresh: `datasets` keys its cache of a folder by the files' names, so an edited copy
    # would otherwise be served from the rows of the copy it first read
    fresh = {"download_mode": "force_redownload", "verification_mode": "no_checks"} if local_path else {}
    if src.data_file:
        root = local_path or f"hf://datasets/{src.path}@{revision or 'main'}"
        data = datasets.load_dataset(Path(src.data_file).suffix.lstrip("."), data_files=f"{root}/{src.data_file}",
                                     split=src.split, **fresh)
    else:
        data = datasets.load_dataset(local_path or src.path, src.config, split=src.split,
                                     revision=None if local_path else revision, **fresh)
    at = "local copy" if local_path else revision or "unpinned"
    return normalise(data, f"hub:{src.path}@{at}", f"{src.path}[{src.config or ''}:{src.split}]",
                     src.columns, src.role, src.label, src.template)


def possible_roles(spec: PromptSetParams) -> set[str]:
    """The roles a params entry's prompts can have, known before any row is read: the role the entry
    gives all of them, else any a row's label gives (unsafe -> harmful, safe -> seemingly_toxic)."""
    if spec.source == "embedded":
        role = EMBEDDED_SETS.get(spec.name)
    elif spec.source == "hub":
        role = HUB_SOURCES[spec.name].role if spec.name in HUB_SOURCES else None
    else:
        role = spec.role
    return {role} if role else set(LABEL_ROLES.values())


def load_prompt_set(spec: PromptSetParams, exclude: Iterable[str] = (),
                    dropped: list[PromptRecord] | None = None) -> list[PromptRecord]:
    """The records a params entry describes, filtered by split, without the prompts that overlap one of
    `exclude` (texts of evaluation sets, `overlap.py`; those go to `dropped` when given), capped by `limit`."""
    if spec.source == "embedded":
        records = load_embedded(spec.name)
    elif spec.source == "hub":
        records = load_hub(spec.name, revision=spec.revision, local_path=spec.local_path)
    else:
        records = load_file(spec.name, spec.columns, spec.role, spec.label)
    records = [_carve_validation(r) for r in records]
    if spec.split != "all":
        records = [r for r in records if r.split == spec.split]
    exclude = list(exclude)
    if exclude and records:
        from .overlap import overlapping

        leak = {i for i, _, _ in overlapping([r.prompt for r in records], exclude)}
        if dropped is not None:
            dropped.extend(records[i] for i in sorted(leak))
        if len(leak) == len(records):
            raise PromptSourceError(f"prompt set {spec.name!r} ({spec.source}, split {spec.split!r}): all its "
                                    f"{len(records)} prompts are also in the evaluation sets of drop_overlap_with")
        records = [r for i, r in enumerate(records) if i not in leak]
    if spec.limit is not None and records:
        records = _round_robin(records, spec.limit)
    if not records:
        raise PromptSourceError(f"prompt set {spec.name!r} ({spec.source}, split {spec.split!r}) has no prompts")
    return records


def _round_robin(records: list[PromptRecord], limit: int) -> list[PromptRecord]:
    """The first `limit` records taken across categories in turn, so a small cap keeps every category;
    twins in pair order, so capped harmful and seemingly-toxic sets hold the same pairs."""
    by_category: dict[str, list[PromptRecord]] = {}
    for record in records:
        by_category.setdefault(record.category, []).append(record)
    queues = [sorted(q, key=lambda r: r.pair_id) if all(r.pair_id for r in q) else q for q in by_category.values()]
    picked: list[PromptRecord] = []
    for depth in range(max(len(q) for q in queues)):
        picked.extend(q[depth] for q in queues if depth < len(q))
    return picked[:limit]


def load_sets(params, names: Iterable[str], dropped: dict[str, dict[str, int]] | None = None
              ) -> dict[str, list[PromptRecord]]:
    """Load the named prompt sets of a profile. A set's `drop_overlap_with` names evaluation sets whose
    prompts it must not hold: those are dropped before its `limit`, and `dropped` (when given) records
    how many per evaluation set, {set: {evaluation set: count}}."""
    loaded: dict[str, list[PromptRecord]] = {}

    def get(name: str) -> list[PromptRecord]:
        if name not in loaded:
            spec = params.prompts[name]
            texts = [r.prompt for other in spec.drop_overlap_with for r in get(other)]
            gone: list[PromptRecord] = []
            loaded[name] = load_prompt_set(spec, texts, gone)
            if spec.drop_overlap_with and dropped is not None:
                from .overlap import overlapping

                gone_texts = [r.prompt for r in gone]
                dropped[name] = {other: len(overlapping(gone_texts, [r.prompt for r in get(other)]))
                                 for other in spec.drop_overlap_with}
        return loaded[name]

    return {name: get(name) for name in names}
