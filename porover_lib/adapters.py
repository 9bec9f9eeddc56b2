"""Checkpoint names -> adapter folders: where stages 03 and 05 write each adapter, and 05 and 06 find it.

`base` is the untrained student (no folder), `sft` the SFT adapter, an `sft.variants` name an adapter
under the SFT variants folder, a `po.variants` name one under the preference-optimisation folder.
"""
from __future__ import annotations

from pathlib import Path

from .config import Params


def checkpoint_dir(params: Params, name: str, sft_dir: str | Path = "checkpoints/sft",
                   po_dir: str | Path = "checkpoints/po",
                   sft_variants_dir: str | Path = "checkpoints/sft_variants") -> Path | None:
    """The adapter folder of a checkpoint name (None for `base`)."""
    if name == "base":
        return None
    if name == "sft":
        return Path(sft_dir)
    return Path(sft_variants_dir) / name if name in params.sft.variants else Path(po_dir) / name


def checkpoint_dirs(params: Params, sft_dir: str | Path = "checkpoints/sft",
                    po_dir: str | Path = "checkpoints/po",
                    sft_variants_dir: str | Path = "checkpoints/sft_variants") -> dict[str, Path | None]:
    """Name -> adapter folder of every evaluated checkpoint, each checked to exist."""
    out = {}
    for name in params.evaluate.checkpoints:
        out[name] = checkpoint_dir(params, name, sft_dir, po_dir, sft_variants_dir)
        if out[name] is not None and not out[name].is_dir():
            raise FileNotFoundError(f"checkpoint {name!r}: {out[name]} not found; run its training stage first")
    return out


def start_dirs(params: Params, sft_dir: str | Path = "checkpoints/sft",
               sft_variants_dir: str | Path = "checkpoints/sft_variants") -> dict[str, Path]:
    """po.variants name -> the SFT adapter it continues (its `start`): sft, or an sft.variants adapter."""
    return {name: checkpoint_dir(params, v.start, sft_dir, sft_variants_dir=sft_variants_dir)
            for name, v in params.po.variants.items()}
