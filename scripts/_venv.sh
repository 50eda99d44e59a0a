# Sourced by scripts/demo and scripts/test: create or refresh .venv, installing the project (and extras).
# Usage: ensure_venv [extra]. Idempotent: reinstalls only when pyproject.toml changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

ensure_venv() {
  local extra="${1:-}"
  local python="${PYTHON:-python3}"
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "plugin_pool needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
    exit 2
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV" >&2
    "$python" -m venv "$VENV"
  fi
  local stamp="$VENV/.installed-${extra:-base}"
  local want
  want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[setup] installing plugin_pool${extra:+[$extra]} into $VENV" >&2
    local log="$VENV/install.log"
    if ! { "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip \
           && "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT${extra:+[$extra]}"; } \
         >"$log" 2>&1; then
      cat "$log" >&2
      echo "[setup] pip install failed; the log above is also in $log" >&2
      exit 1
    fi
    echo "$want" > "$stamp"
  fi
}
