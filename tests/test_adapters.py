"""Checkpoint names map to the adapter folders stages 03 and 05 write."""
from pathlib import Path

import pytest

from porover_lib import adapters
from porover_lib.config import load_params

PARAMS = Path(__file__).resolve().parents[1] / "params"


def test_checkpoint_and_start_folders_follow_the_variant_names(tmp_path):
    params = load_params(PARAMS / "default.yaml")
    sft, po, variants = tmp_path / "sft", tmp_path / "po", tmp_path / "sft_variants"
    dirs = [sft] + [variants / name for name in params.sft.variants] + [po / name for name in params.po.variants]
    for d in dirs:
        d.mkdir(parents=True)
    found = adapters.checkpoint_dirs(params, sft, po, variants)
    assert found["base"] is None and found["sft"] == sft and found["derta"] == variants / "derta"
    assert found["po"] == po / "po" and found["po_derta"] == po / "po_derta"
    starts = adapters.start_dirs(params, sft, variants)
    assert starts["po"] == sft and starts["po_derta"] == variants / "derta"
    (variants / "derta").rmdir()
    with pytest.raises(FileNotFoundError, match="checkpoint 'derta'"):
        adapters.checkpoint_dirs(params, sft, po, variants)
