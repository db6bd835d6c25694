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
	$(BIN)/python analyze_curvature.py run=$(DEMO_RUN)

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf pretrained curv_scores logs
