"""The time and cost tables of params/README.md are what `python -m porover_lib.cost` prints for the profiles."""
from pathlib import Path

import pytest

from porover_lib.config import load_params
from porover_lib.cost import CARDS, estimate, table

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("profile", ["paper", "paper_small"])
def test_the_readme_tables_are_the_estimator_output(profile):
    text = (REPO / "params" / "README.md").read_text()
    assert table(estimate(load_params(REPO / "params" / f"{profile}.yaml"), CARDS["4090"])) in text


def test_the_estimate_follows_the_profile():
    paper, small = (load_params(REPO / "params" / f"{p}.yaml") for p in ("paper", "paper_small"))
    big, little = (estimate(p, CARDS["4090"]) for p in (paper, small))
    assert big[0]["prompts"] == 20_000 + 20_000 + 520 and little[0]["prompts"] == 2_000 + 1_500 + 520
    assert big[0]["samples"] == 4 * big[0]["prompts"] and big[3]["samples"] == 8 * big[3]["prompts"]
    served, local = estimate(paper, CARDS["4090"], "vllm"), estimate(paper, CARDS["4090"], "hf")
    assert local[3]["GPU hours"] > 2 * served[3]["GPU hours"]  # sampling the student is where vLLM pays
