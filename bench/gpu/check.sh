#!/usr/bin/env bash
# The GPU path in one command, for a CUDA machine with no network (see bench/README.md, "GPU check"):
#   1. installs the carried wheels (CARRY/wheels/*.whl, made by bench/gpu/wheels.sh) into a temporary site folder
#      with `pip install --no-index --no-deps --target`, first on PYTHONPATH (nothing is installed system-wide);
#   2. runs the tests marked `gpu` (tests/model/test_gpu.py) and keeps their log;
#   3. runs bench/gpu/bench.py: our transformers engine vs bare generate vs generate_batch, and PRM batching;
#   4. leaves gpu-check.json, gpu-check.md, gpu-tests.log and bench.log in the output folder, prints a summary.
# The tokenizer and config of SmolLM2 come from CARRY/model (made by wheels.sh: no weights travel; every model
# is built from a config with random weights), else from the demo model folder.
#
# Usage: bench/gpu/check.sh [--cpu] [--carry DIR] [--out DIR] [--python PY] [--no-tests] [-- BENCH_ARGS...]
#   --cpu      the same steps on the CPU with tiny sizes (tests/model/test_gpu_check.py runs this, so it cannot rot)
#   --carry    folder with wheels/ and model/ (default bench/gpu/carry; none with --cpu)
#   --out      results folder (default $OUT, else bench/out/gpu-check)
#   --python   interpreter (default: python3 on a GPU machine, .venv/bin/python with --cpu when it exists)
# Exit status: 0 when the tests passed and every benchmark ran, 1 otherwise (the results are written either way).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
MODE=gpu CARRY="" RESULTS="${OUT:-}" PY="" TESTS=1 BENCH_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) MODE=cpu ;;
    --carry) CARRY="$2"; shift ;;
    --out) RESULTS="$2"; shift ;;
    --python) PY="$2"; shift ;;
    --no-tests) TESTS=0 ;;
    --) shift; BENCH_ARGS=("$@"); break ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
RESULTS="${RESULTS:-bench/out/gpu-check}"
# --cpu runs in our venv, which has every package: its default is no carry folder (the wheels are for the GPU's Python)
[ -z "$CARRY" ] && [ "$MODE" = gpu ] && CARRY=bench/gpu/carry
CARRY="${CARRY:-/nonexistent}"
if [ -z "$PY" ]; then
  if [ "$MODE" = cpu ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
mkdir -p "$RESULTS"
RESULTS="$(cd "$RESULTS" && pwd)"
SITE="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-site.XXXXXX")"
trap 'rm -rf "$SITE"' EXIT
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# --cpu: the tiny models gain nothing from a second thread, and spinning threads cost a shared machine dearly
[ "$MODE" = cpu ] && export OMP_NUM_THREADS=1 SAMPLEFLEET_THREADS=1

# 1. the carried wheels
shopt -s nullglob
WHEELS=("$CARRY"/wheels/*.whl)
if [ ${#WHEELS[@]} -gt 0 ]; then
  echo "== installing ${#WHEELS[@]} wheels from $CARRY/wheels into $SITE"
  if "$PY" -m pip --version >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --disable-pip-version-check --target "$SITE" "${WHEELS[@]}" || {
      echo "check.sh: pip could not install the wheels of $CARRY/wheels (made for another Python?)" >&2; exit 1; }
  else  # no pip: a wheel is a zip of its site-packages files, which is all a --target install makes of it
    for w in "${WHEELS[@]}"; do "$PY" -m zipfile -e "$w" "$SITE" || exit 1; done
  fi
fi
export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# The SmolLM2 tokenizer + config: the carried copy becomes the demo model's folder of a private cache.
if [ -f "$CARRY/model/tokenizer.json" ]; then
  export SAMPLEFLEET_CACHE="$SITE/cache"
  mkdir -p "$SAMPLEFLEET_CACHE/models"
  cp -r "$CARRY/model" "$SAMPLEFLEET_CACHE/models/smollm2-135m-instruct"
fi
TOKENIZER="${SAMPLEFLEET_CACHE:-$HOME/.cache/samplefleet}/models/smollm2-135m-instruct"
[ -f "$TOKENIZER/tokenizer.json" ] || { echo "check.sh: no SmolLM2 tokenizer at $TOKENIZER: run bench/gpu/wheels.sh (or make setup)" >&2; exit 1; }
"$PY" - <<'EOF' || exit 1
import importlib.util, sys
missing = [m for m in ("torch", "transformers", "pydantic", "pytest") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"check.sh: missing {', '.join(missing)} (carry them as wheels: bench/gpu/wheels.sh)")
import torch, transformers
print(f"== python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}, "
      f"cuda {torch.cuda.is_available()}" + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
EOF

# 2. the gpu tests (with --cpu they run on the CPU: GPU_CHECK_DEVICE=cpu)
STATUS=0 TESTS_LINE="not run"
if [ "$TESTS" = 1 ]; then
  echo "== tests marked gpu"
  [ "$MODE" = cpu ] && export GPU_CHECK_DEVICE=cpu
  "$PY" -m pytest -q -p no:cacheprovider -o timeout=180 -m gpu -rs tests/model/test_gpu.py >"$RESULTS/gpu-tests.log" 2>&1
  RC=$?
  unset GPU_CHECK_DEVICE
  tail -n 15 "$RESULTS/gpu-tests.log"
  TESTS_LINE="$(grep -E '(passed|failed|skipped|error)' "$RESULTS/gpu-tests.log" | tail -n 1) (rc $RC)"
  [ $RC -eq 0 ] || STATUS=1
  # on the GPU machine a run where every test skipped proved nothing
  [ "$MODE" = gpu ] && ! grep -q " passed" "$RESULTS/gpu-tests.log" && STATUS=1
fi

# 3. the benchmarks
echo "== benchmarks"
MODE_ARGS=()
[ "$MODE" = cpu ] && MODE_ARGS=(--cpu)
"$PY" bench/gpu/bench.py --out "$RESULTS" --tokenizer "$TOKENIZER" --tests "$TESTS_LINE" "${MODE_ARGS[@]}" \
  "${BENCH_ARGS[@]}" 2>"$RESULTS/bench.log" || { STATUS=1; echo "== bench.log ends:"; tail -n 5 "$RESULTS/bench.log"; }

echo "== gpu tests: $TESTS_LINE"
echo "== results in $RESULTS (gpu-check.json, gpu-check.md, gpu-tests.log, bench.log); status $STATUS"
exit $STATUS
