"""The public benchmark's prompt sample: which files, how many, seeded, and a clear error when one is missing."""

import json

import pytest

from porover_lib.public_eval import AREAS, donotanswer_prompts


def _write_areas(tmp_path, rows_per_area=12, skip=None):
    for area in AREAS:
        if area == skip:
            continue
        lines = [json.dumps({"prompt": f"placeholder request {i} of {area}", "intents": ["x"]})
                 for i in range(rows_per_area)]
        (tmp_path / f"{area}.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "human_chatbox.jsonl").write_text(json.dumps({"prompt": "left out"}) + "\n")
    return tmp_path


def test_sample_per_area_is_seeded_and_harmful(tmp_path):
    data = _write_areas(tmp_path)
    records = donotanswer_prompts(data, per_area=5, seed=0)
    assert [r.category for r in records] == [a for a in AREAS for _ in range(5)]
    assert {r.role for r in records} == {"harmful"} and {r.label for r in records} == {"unsafe"}
    assert all("left out" not in r.prompt for r in records)
    assert [r.id for r in donotanswer_prompts(data, per_area=5, seed=0)] == [r.id for r in records]
    assert [r.id for r in donotanswer_prompts(data, per_area=5, seed=1)] != [r.id for r in records]
    assert len(donotanswer_prompts(data, per_area=50, seed=0)) == 12 * len(AREAS)  # an area smaller than asked


def test_missing_area_names_the_file(tmp_path):
    data = _write_areas(tmp_path, skip="information_hazard")
    with pytest.raises(FileNotFoundError, match="information_hazard.jsonl"):
        donotanswer_prompts(data, per_area=5, seed=0)
