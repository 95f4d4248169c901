#!/usr/bin/env bash
# The whole check: lint, types, tests. Developers and CI run exactly this.
# Extra arguments go to pytest (e.g. scripts/test.sh -k pipeline -x).
set -euo pipefail
. "$(dirname "$0")/_venv.sh" "test,lint,demo,codecs,serve,ray"
echo "== ruff"
ruff check datamint_pipes compat tests benchmarks
ruff format --check datamint_pipes compat tests benchmarks
echo "== mypy"
mypy datamint_pipes compat
echo "== pytest"
python -m pytest "$@"
