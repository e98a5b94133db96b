#!/usr/bin/env bash
# Prepares the carry folder of bench/gpu/check.sh (git-ignored): what the GPU machine lacks, since it has no network.
#   CARRY/wheels/  the pure-Python packages our GPU code paths import that the machine does not have (pydantic and
#                  its pieces, pydantic-settings, pytest-timeout), at the versions of our venv, for manylinux x86-64
#                  and CPython $PYVER (pydantic-core is compiled: its cp312 manylinux wheel);
#   CARRY/model/   the SmolLM2 tokenizer and config files of the demo model (no weights: check.sh builds every
#                  model from a config with random weights).
# It prints the packages, versions and sizes, and the total that travels (working tree + carry), which must stay
# under 64 MiB; then the command to run on the GPU machine.
#
# Usage: bench/gpu/wheels.sh [CARRY]   (default bench/gpu/carry)
#   env PYVER (default 3.12), PLATFORM (default manylinux2014_x86_64), PY (default .venv/bin/python)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
CARRY="${1:-bench/gpu/carry}"
PYVER="${PYVER:-3.12}"
PLATFORM="${PLATFORM:-manylinux2014_x86_64}"
PY="${PY:-.venv/bin/python}"
PACKAGES=(pydantic pydantic-core annotated-types typing-inspection typing-extensions pydantic-settings python-dotenv
          pytest-timeout)
DEMO="${SAMPLEFLEET_CACHE:-$HOME/.cache/samplefleet}/models/smollm2-135m-instruct"

PINS=()
for p in "${PACKAGES[@]}"; do
  PINS+=("$p==$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$p")")
done
rm -rf "$CARRY/wheels" "$CARRY/model"
mkdir -p "$CARRY/wheels" "$CARRY/model"
"$PY" -m pip download -q --disable-pip-version-check --only-binary=:all: --no-deps --platform "$PLATFORM" \
  --python-version "$PYVER" --implementation cp --abi "cp${PYVER/./}" -d "$CARRY/wheels" "${PINS[@]}"
[ -f "$DEMO/tokenizer.json" ] || { echo "wheels.sh: no demo model at $DEMO (make setup)" >&2; exit 1; }
for f in config.json generation_config.json tokenizer.json tokenizer_config.json special_tokens_map.json \
         chat_template.jinja; do
  [ -f "$DEMO/$f" ] && cp "$DEMO/$f" "$CARRY/model/"
done

"$PY" - "$CARRY" <<'EOF'
import subprocess, sys
from pathlib import Path

carry = Path(sys.argv[1])
print(f"{'file':<78} {'bytes':>10}")
for f in sorted(carry.rglob("*")):
    if f.is_file():
        print(f"{str(f.relative_to(carry)):<78} {f.stat().st_size:>10}")
files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], capture_output=True,
                       check=True).stdout.decode().split("\0")
tree = sum(Path(f).stat().st_size for f in files if f and Path(f).is_file())
size = sum(f.stat().st_size for f in carry.rglob("*") if f.is_file())
total, limit = tree + size, 64 * 2**20
print(f"carry {size / 2**20:.1f} MiB + working tree {tree / 2**20:.1f} MiB = {total / 2**20:.1f} MiB "
      f"(limit 64 MiB): {'ok' if total < limit else 'TOO BIG'}")
sys.exit(0 if total < limit else 1)
EOF
echo "on the GPU machine: bash bench/gpu/check.sh --carry $CARRY   (carry: [\"$CARRY\"]; results in \$OUT)"
