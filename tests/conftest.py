"""Shared test set-up: no hub access, the shared benchmark folder, and the embedded tokenizer."""
import os

# Nothing in the suite may reach a model hub.
for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[var] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """`../shared/data` beside the repository (CI puts it there), or $POROVER_SHARED_DATA."""
    return Path(os.environ.get("POROVER_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared benchmark data not found at {path} (set POROVER_SHARED_DATA to its folder)")
    return path


@pytest.fixture(scope="session")
def tokenizer():
    from tiny import embedded_tokenizer

    return embedded_tokenizer()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine their
    spin-waits made steps 5-15x slower; modules opt in with `pytestmark`, restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
