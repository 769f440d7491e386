#!/usr/bin/env bash
# One-command performance check on an accelerator machine (one H100/H200: under 8 minutes).
#   benchmarks/gpu_check.sh [OUT.json] [gpu_check.py options, e.g. --device cpu --tiny]
# Writes every figure to OUT.json (default results/bench/gpu_check.json); see benchmarks/gpu_check.py.
# GENPROMP_GPU_CHECK_TINY=1 runs it with narrow models at small sizes (works on the CPU in seconds).
# PYTHON picks the interpreter (default: the repository's .venv, else python3).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then py="$repo/.venv/bin/python"; else py=python3; fi
fi
out="${1:-$repo/results/bench/gpu_check.json}"
shift || true
cd "$repo"
export HF_HUB_OFFLINE=1
# 470 s: stop before the 8-minute budget rather than run on with partial figures.
exec timeout 470 "$py" benchmarks/gpu_check.py --out "$out" "$@"
