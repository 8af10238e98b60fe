# Two commands on a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
DEMO := out/demo

.PHONY: install demo test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,qnn,coreml]'
	touch $@

install: $(BIN)/.installed

demo: install
	mkdir -p out
	$(BIN)/edge speak "Hello from edge, running on this machine." --out out/hello.wav
	$(BIN)/edge export edge-voice --backend all --out $(DEMO) --force
	$(BIN)/edge inspect $(DEMO)
	$(BIN)/edge -v speak "Hello from edge, running on this machine." --bundle $(DEMO) --backend onnx --out out/demo.wav
	$(BIN)/edge speak "Hello from edge, running on this machine." --bundle $(DEMO) --backend executorch --out out/demo-et.wav --json
	$(BIN)/edge quantize $(DEMO) --recipe lm=int8,depth=int8,codec=fp16 --backend onnx --out out/demo-int8 --force
	$(BIN)/edge speak "Hello from edge, running on this machine." --bundle out/demo-int8 --out out/demo-int8.wav
	$(BIN)/edge profile --compare $(DEMO) out/demo-int8 --backend onnx --frames 20 --device raspberry-pi-5 --report out/report
	@echo "out/hello.wav is edge's default voice (edge-voice, exported on first use into ~/.cache/edge);"
	@echo "open out/report/index.html for the charts."

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
