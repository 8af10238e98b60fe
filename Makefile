# Two commands on a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
DEMO := out/demo

.PHONY: install demo test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed

demo: install
	mkdir -p out
	$(BIN)/edge export csm-tiny --backend all --out $(DEMO) --force
	$(BIN)/edge inspect $(DEMO)
	$(BIN)/edge -v speak "Hello from edge, running on this machine." --bundle $(DEMO) --backend onnx --out out/demo.wav
	$(BIN)/edge speak "Hello from edge, running on this machine." --bundle $(DEMO) --backend executorch --out out/demo-et.wav --json
	$(BIN)/edge quantize $(DEMO) --recipe lm=int8,depth=int8,codec=fp16 --backend onnx --out out/demo-int8 --force
	$(BIN)/edge speak "Hello from edge, running on this machine." --bundle out/demo-int8 --out out/demo-int8.wav
	$(BIN)/edge profile --compare $(DEMO) out/demo-int8 --backend onnx --frames 20 --device raspberry-pi-5 --report out/report
	@echo "Open out/report/index.html for the charts. csm-tiny has random weights, so out/demo.wav is babble with"
	@echo "the right shape and timing; a trained default voice is issue 8."

lint: install
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest -q

# Speed against eager transformers and the bandwidth bound: writes BENCHMARKS.md and benchmarks/results.json
# (about 20 minutes on 2 cores). The Piper reference point also needs the espeak-ng program (apt-get install espeak-ng).
bench: install
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) out
