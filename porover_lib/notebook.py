"""What a rendered notebook shows, and what stays in the terminal that runs it.

A rendered notebook is read next to the paper: tables, figures, a few lines of text. Progress bars,
library logging and per-step training lines are for whoever runs it, so they go to the terminal
(papermill's stderr), never into the saved notebook. Warnings we cannot fix at their source are
filtered here, in one place, each with the reason.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings

from .config import Params, load_params


def quiet() -> None:
    """Library chatter to the terminal, known-harmless warnings off. Call before torch or transformers load."""
    quiet_libraries()
    sys.stderr = _terminal()


def quiet_libraries() -> None:
    """Known-harmless warnings and import-time log lines off (the notebooks and the `porover` command)."""
    # tqdm.auto wants ipywidgets in a kernel and warns without them; its plain bars are what we want.
    warnings.filterwarnings("ignore", message="IProgress not found")
    # peft (0.21) still reads transformers' deprecated `is_gradient_checkpointing`; not our call to change.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    # bitsandbytes tries an optional hub kernel for 4-bit CPU matmuls on import and logs when it is absent;
    # we never install it (no downloads at run time) and its built-in CPU path is used instead.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def _terminal():
    """The stream the terminal shows. In a kernel, ipykernel captures fd 2 into the notebook but keeps a
    copy of the original stderr, which `sys.stderr.fileno()` returns; outside one, stderr already is it."""
    if sys.stderr is sys.__stderr__:
        return sys.stderr
    try:
        return open(sys.stderr.fileno(), "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    except (AttributeError, OSError, ValueError):  # no terminal behind this kernel: drop the chatter
        return open(os.devnull, "w")


def to_terminal(line: str) -> None:
    """Print a line for whoever runs the notebook, not for its reader."""
    print(line, file=sys.stderr, flush=True)


def training_log(line: str) -> None:
    """`log` for training: per-step lines ("step k/n: {...}") to the terminal, since log_history.json keeps
    them all; the rest (data size, precision and optimiser choices, where the adapter went) to the reader."""
    (to_terminal if line.startswith("step ") else print)(line)


def setup(params_path: str) -> Params:
    """A notebook's first call: quiet libraries, inline figures, the profile's params, seeded RNGs."""
    quiet()
    from IPython import get_ipython
    from transformers import set_seed

    shell = get_ipython()
    if shell is not None:
        shell.run_line_magic("matplotlib", "inline")  # plots.py figures render as PNGs in the notebook
    params = load_params(params_path)
    set_seed(params.seed)
    print(f"profile {params.profile!r}: {params.description}")
    return params
