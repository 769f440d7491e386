#!/usr/bin/env bash
# Snakemake (--sdm conda) runs this inside the rules' environment (environment.yml) right after
# creating it: it installs genpromp itself, editable from the checkout, so every rule runs the
# checkout's code with the environment's pinned dependencies. The checkout is $GENPROMP_SOURCE,
# else the directory Snakemake runs in (the checkout itself when the workflow is run from it).
set -euo pipefail
src="${GENPROMP_SOURCE:-$PWD}"
if [[ ! -f "$src/genpromp/__init__.py" || ! -f "$src/pyproject.toml" ]]; then
  echo "environment.post-deploy.sh: $src is not a genpromp checkout; run Snakemake from the" \
       "checkout or set GENPROMP_SOURCE=/path/to/genpromp" >&2
  exit 1
fi
python -m pip install --no-deps -e "$src"
