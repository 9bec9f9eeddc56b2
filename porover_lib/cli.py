"""The `porover` command line. Subcommands live in `build_parser`: `check`, `judge` and `train`.

    porover check paper          # params/paper.yaml ready to run? one line per problem, exit 1 if not

    porover judge --kind refusal --judge keyword --input completions.csv \
        --prompt-column prompt --response-column completion --output judged.csv
    accelerate launch --config_file params/accelerate/fsdp.yaml -m porover_lib.cli train sft

Errors a user can fix (missing file, missing column, a judge without its server) exit with
status 2 and a message naming the file, the column and what is available.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from .judges import judge_class, judge_names, make_judge

OUTPUT_COLUMNS = ("label", "score", "reason", "judge")
TABLE_SUFFIXES = (".csv", ".jsonl", ".json")


class CLIError(Exception):
    """A problem the user can fix; main() prints it and exits with status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="porover", description="POROver reproduction tools.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_judge_command(commands)
    _add_train_command(commands)
    _add_check_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .notebook import quiet_libraries

    quiet_libraries()  # before torch, transformers and bitsandbytes load: their import chatter is not the user's first line
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except CLIError as err:
        print(f"porover {args.command}: error: {err}", file=sys.stderr)
        return 2


# ------------------------------------------------------------------------------------ judge

def _add_judge_command(commands) -> None:
    p = commands.add_parser(
        "judge", help="run a refusal, safety or reward judge over a CSV/JSONL file",
        description="Add label, score, reason and judge columns to every row of a CSV or JSONL file.")
    p.add_argument("--kind", required=True, choices=judge_names())
    p.add_argument("--judge", required=True, help="judge name: " + "; ".join(
        f"{kind}: {', '.join(judge_names(kind))}" for kind in judge_names()))
    p.add_argument("--input", required=True, type=Path, help="a .csv, .jsonl or JSON Lines .json file")
    p.add_argument("--output", required=True, type=Path, help="a .csv or .jsonl file (format from the extension)")
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--response-column", default="response")
    p.add_argument("--column-prefix", default="", help="prefix for the added columns, e.g. 'refusal_'")
    p.add_argument("--refusal-judge", default="keyword", help="inner refusal judge of refusal_proxy (keyword or llm)")

    local = p.add_argument_group("model-based judges (llama_guard, hf_reward_model, heuristic, llm)")
    local.add_argument("--model", help="hub id, local path or embedded:smollm2-135m-instruct")
    local.add_argument("--revision", help="hub commit to pin")
    local.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (ArmoRM needs it)")
    local.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    local.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    local.add_argument("--batch-size", type=int, default=8)

    server = p.add_argument_group("judges through an OpenAI-compatible server (llm, llama_guard)")
    server.add_argument("--base-url", help="e.g. http://localhost:8000/v1 (vLLM)")
    server.add_argument("--api-model", help="model name the server serves")
    server.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    server.add_argument("--max-concurrency", type=int, default=8)
    server.add_argument("--timeout", type=float, default=120.0)
    server.add_argument("--max-retries", type=int, default=6)
    p.set_defaults(run=run_judge)


def run_judge(args: argparse.Namespace) -> int:
    if args.judge not in judge_names(args.kind):
        raise CLIError(f"unknown {args.kind} judge {args.judge!r}; allowed: {', '.join(judge_names(args.kind))}")
    if args.output.suffix.lower() not in (".csv", ".jsonl", ".json"):
        raise CLIError(f"{args.output}: output must end in .csv, .jsonl or .json")
    table = read_table(args.input)
    for column in (args.prompt_column, args.response_column):
        if column not in table.columns:
            raise CLIError(f"{args.input}: column {column!r} not found; available columns: {', '.join(map(str, table.columns))}")
    added = [args.column_prefix + c for c in OUTPUT_COLUMNS]
    if clash := [c for c in added if c in table.columns]:
        raise CLIError(f"{args.input} already has column(s) {', '.join(clash)}; pass --column-prefix (e.g. 'refusal_')")

    try:
        judge = make_judge(args.kind, args.judge, **_judge_options(args))
    except ValueError as err:  # a judge refusing its options, e.g. ArmoRM without --trust-remote-code
        raise CLIError(str(err)) from None
    prompts = _texts(table[args.prompt_column])
    responses = _texts(table[args.response_column])
    verdicts = judge.judge(prompts, responses)
    for column in OUTPUT_COLUMNS:
        table[args.column_prefix + column] = [getattr(v, column) for v in verdicts]
    write_table(table, args.output)
    counts = pd.Series([v.label for v in verdicts]).value_counts().to_dict()
    print(f"judged {len(table)} rows with {judge.name}: {counts} -> {args.output}", file=sys.stderr)
    return 0


def _texts(column: pd.Series) -> list[str]:
    """Cells as strings; a missing cell (NaN/None) is an empty response, not the text 'nan'."""
    return ["" if pd.isna(v) else str(v) for v in column]


def _judge_options(args: argparse.Namespace) -> dict:
    """Constructor options for the chosen judge from the command-line flags."""
    name = args.judge
    if name == "keyword":
        return {}
    if name == "llm":
        return {"backend": _chat_backend(args, "the llm judge")}
    if name == "refusal_proxy":
        if args.refusal_judge == "llm":
            return {"refusal_judge": "llm", "backend": _chat_backend(args, "refusal_proxy with --refusal-judge llm")}
        return {"refusal_judge": args.refusal_judge}
    if name == "llama_guard" and args.base_url:
        return {"backend": _server_backend(args)}
    if name in ("llama_guard", "hf_reward_model"):
        return {"model": _model_params(args, judge_class(args.kind, name).default_model),
                "batch_size": args.batch_size}
    if name == "heuristic":  # text-only unless a scoring model is named
        return {"model": _model_params(args)} if args.model else {}
    raise CLIError(f"no command-line options known for judge {name!r}")


def _model_params(args: argparse.Namespace, default: str | None = None):
    from .config import ModelParams

    return ModelParams(name=args.model or default, revision=args.revision, trust_remote_code=args.trust_remote_code,
                       dtype=args.dtype, device=args.device)


def _chat_backend(args: argparse.Namespace, who: str):
    """An OpenAI-compatible server if --base-url is given, else a local transformers model."""
    if args.base_url:
        return _server_backend(args)
    if not args.model:
        raise CLIError(f"{who} needs a chat model: --base-url and --api-model for a server, or --model for a local one")
    from .generation import HFBackend
    from .models import load_model, load_tokenizer

    spec = _model_params(args)
    return HFBackend(load_model(spec), load_tokenizer(spec), model_name=args.model, revision=args.revision)


def _server_backend(args: argparse.Namespace):
    if not args.api_model:
        raise CLIError("--base-url needs --api-model (the model name the server serves)")
    try:
        from .backends import GenerationError, OpenAIBackend
    except ImportError as err:
        raise CLIError(f"the server backend is unavailable (porover_lib.backends.OpenAIBackend: {err})") from None
    try:
        return OpenAIBackend(base_url=args.base_url, model=args.api_model, api_key_env=args.api_key_env,
                             max_concurrency=args.max_concurrency, timeout=args.timeout, max_retries=args.max_retries)
    except GenerationError as err:  # e.g. the API key variable is not set
        raise CLIError(str(err)) from None


# ------------------------------------------------------------------------------------ table IO

def read_table(path: Path) -> pd.DataFrame:
    """A CSV, JSONL, or .json file (JSON Lines, or one JSON array of objects)."""
    if not path.is_file():
        raise CLIError(f"input file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise CLIError(f"{path}: unsupported input type {suffix!r}; use one of {', '.join(TABLE_SUFFIXES)}")
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix == ".json" and path.read_text(encoding="utf-8").lstrip().startswith("["):
            return pd.DataFrame(json.loads(path.read_text(encoding="utf-8")))
        return pd.read_json(path, lines=True, dtype=False)
    except (ValueError, pd.errors.ParserError) as err:
        raise CLIError(f"{path}: cannot be read as {suffix[1:].upper()}: {err}") from None


def write_table(table: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        table.to_csv(path, index=False)
    else:
        table.to_json(path, orient="records", lines=True, force_ascii=False)



# ------------------------------------------------------------------------------------ train

def _add_train_command(commands) -> None:
    p = commands.add_parser(
        "train", help="run stage 03 (sft) or 05 (po) outside the notebooks, e.g. under `accelerate launch`",
        description="The same training as notebooks 03 and 05, as a script, so that `accelerate launch` "
                    "with a DeepSpeed or FSDP config (params/accelerate/) can spread it over several GPUs.")
    p.add_argument("stage", choices=("sft", "po"))
    p.add_argument("--params", default="params/active.yaml", type=Path)
    p.add_argument("--data", type=Path, help="default: data/sft/train.jsonl (sft) or data/preference/pairs.jsonl (po)")
    p.add_argument("--sft-dir", default=Path("checkpoints/sft"), type=Path)
    p.add_argument("--out", type=Path, help="default: checkpoints/sft or checkpoints/po")
    p.set_defaults(run=_run_train)


def _run_train(args) -> int:
    from .config import ParamsError, load_params
    from .io import read_jsonl
    from . import training

    try:
        params = load_params(args.params)
    except ParamsError as err:
        raise CLIError(str(err)) from None
    data = args.data or Path("data/sft/train.jsonl" if args.stage == "sft" else "data/preference/pairs.jsonl")
    if not data.is_file():
        raise CLIError(f"{data}: not found; run the stage before this one first")
    rows = read_jsonl(data)
    if args.stage == "sft":
        training.train_sft(rows, params.student, params.sft, args.out or Path("checkpoints/sft"), seed=params.seed)
        return 0
    for name, variant in params.po.variants.items():
        training.train_po(rows, params.student, args.sft_dir, name, variant, params.po,
                          (args.out or Path("checkpoints/po")) / name, seed=params.seed)
    return 0

# ------------------------------------------------------------------------------------ check

def _add_check_command(commands) -> None:
    p = commands.add_parser(
        "check", help="check a profile before a run: prompt files, model names, API keys, checkpoints, GPU",
        description="Load a profile and check what it points at, without running anything: prompt files exist "
                    "and parse, models resolve (on the hub too unless HF_HUB_OFFLINE=1), API key variables are "
                    "set, evaluated checkpoints exist in the profile, a CUDA GPU is there if asked for. "
                    "Prints one line per problem and exits 1 if there is any; notes that stop nothing (a model "
                    "pinned to bf16 on a CPU that can only emulate it) go to stderr.")
    p.add_argument("profile", nargs="?", default="default", help="a name in params/ (default, paper) or a YAML path")
    p.set_defaults(run=_run_check)


def _run_check(args) -> int:
    from .checks import check_profile, cpu_notes, pin_notes, profile_path, report
    from .config import load_params

    problems = check_profile(args.profile)
    print(report(args.profile, problems), file=sys.stderr if problems else sys.stdout)
    if not problems:  # advice, on stderr, so that stdout stays the one-line verdict
        params = load_params(profile_path(args.profile))
        for note in cpu_notes(params) + pin_notes(params):
            print(f"note: {note}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
