# Sourced by the other scripts: create .venv (once) and install the project with the given extras.
# Usage: . scripts/_venv.sh EXTRAS   (e.g. "demo" or "test,lint,demo,codecs")
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DATAMINT_PIPES_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
extras="$1"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
stamp="$VENV/.installed-$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" | sha256sum | cut -c1-16)-${extras//,/_}"
if [ ! -f "$stamp" ]; then
  # torch first, from the pinned CPU wheel, so nothing below can pull a CUDA build.
  "$VENV/bin/python" -m pip install --quiet -c "$ROOT/constraints.txt" "torch==2.13.0"
  "$VENV/bin/python" -m pip install --quiet -c "$ROOT/constraints.txt" -e "$ROOT[$extras]"
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
