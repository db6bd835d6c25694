# Two commands: `make demo` and `make test`. Both create .venv and install requirements.txt first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_RUN ?= digits_demo

.PHONY: setup demo test lint bench clean

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/python train_digits.py run=$(DEMO_RUN)
	$(BIN)/python score_digits_checkpoint.py run=$(DEMO_RUN)
	$(BIN)/python holdout.py run=$(DEMO_RUN)
	$(BIN)/python analyze_curvature.py run=$(DEMO_RUN)
	$(BIN)/python memorization_report.py run=$(DEMO_RUN)

# Two pytest-xdist workers (one thread each); a file's tests stay on one worker (its module fixtures are built once).
TEST_WORKERS ?= 2
test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: setup
	$(BIN)/ruff check .

# One command on a GPU machine (<= 8 min on one H200): precision vs fp64, device-resident vs DataLoader throughput,
# the paper recipe on CIFAR-10 dev with online scoring and its AUROC table -> $(GPU_CHECK_OUT)/summary.{json,md}.
# Needs $(DATA_ROOT)/cifar10-jpeg-dev; no install step (runs with .venv's python if there is one, else $(PY)).
.PHONY: gpu-check
GPU_CHECK_OUT ?= benchmarks/results/gpu_check
GPU_PY = $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PY))
gpu-check:
	$(GPU_PY) benchmarks/gpu_check.py --data-root "$(DATA_ROOT)" --out "$(GPU_CHECK_OUT)" $(GPU_CHECK_ARGS)

clean:
	rm -rf pretrained curv_scores logs
