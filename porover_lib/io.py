"""Files of the pipeline: JSON Lines that survive interruption (appends fsynced, rewrites atomic), JSON reports.

A process killed in the middle of an append leaves at most one torn line at the end of the file;
`read_jsonl` drops it (with a warning) and `repair_jsonl_tail` cuts it off before the next append,
so a resumed run never glues new rows onto half a row.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)


class JsonlError(ValueError):
    """A JSONL file that cannot be read; the message names the file and the line."""


def read_jsonl(path: str | Path) -> list[dict]:
    """All rows of `path`; a torn last line (no newline, not valid JSON) is dropped with a warning."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: JSONL file not found")
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    torn = lines.pop()  # text after the last newline: "" for a complete file
    rows = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            rows.append(_parse(path, number, line))
    if torn.strip():
        try:
            rows.append(json.loads(torn))
        except json.JSONDecodeError:
            log.warning("%s: dropping a torn last line %d (an interrupted write)", path, len(lines) + 1)
    return rows


def _parse(path: Path, number: int, line: str) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise JsonlError(f"{path}: line {number} is not valid JSON: {err}") from None
    if not isinstance(row, dict):
        raise JsonlError(f"{path}: line {number} is a {type(row).__name__}, expected a JSON object")
    return row


def repair_jsonl_tail(path: str | Path) -> None:
    """Make `path` end in a newline: cut a torn last line, or terminate a complete one."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        end = f.seek(0, os.SEEK_END)
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return
        start = end  # find the last newline, reading backwards: the file may be large
        while start > 0:
            step = min(1 << 16, start)
            f.seek(start - step)
            cut = f.read(step).rfind(b"\n")
            start -= step
            if cut >= 0:
                start += cut + 1
                break
        f.seek(start)
        try:
            json.loads(f.read())
            f.write(b"\n")
        except ValueError:
            log.warning("%s: cutting a torn last line (an interrupted write)", path)
            f.truncate(start)
        f.flush()
        os.fsync(f.fileno())


def _dumps(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def append_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """Append rows in one write, then flush and fsync: once this returns they are on disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = _dumps(rows)
    if not text:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """Replace `path` atomically (temp file + rename): readers see the old file or the new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(_dumps(rows))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj) -> Path:
    """Replace `path` with `obj` as indented JSON, atomically (a report is never half written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def records(df) -> list[dict]:
    """DataFrame rows as plain dicts (NaN -> None) for the selection and preference code."""
    return json.loads(df.to_json(orient="records"))


def write_rows(path: str | Path, rows) -> Path:
    """Rows (dicts or a DataFrame) as a JSONL file, replaced atomically."""
    rows = records(rows) if hasattr(rows, "to_json") else rows
    path = Path(path)
    write_jsonl(path, rows)
    return path


def read_rows(folder: str | Path, pattern: str = "*.jsonl"):
    """All rows of the JSONL files in `folder` as one DataFrame; none found means the stage before did not run."""
    import pandas as pd

    files = sorted(Path(folder).glob(pattern))
    if not files:
        raise FileNotFoundError(f"{folder}: no {pattern} files; run the previous stage first")
    return pd.DataFrame([row for f in files for row in read_jsonl(f)])
