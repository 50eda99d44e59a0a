# Sourced by scripts/demo and scripts/test: create or refresh .venv, installing the project (and extras).
# Usage: ensure_venv [extra]. Idempotent: reinstalls only when pyproject.toml or the interpreter changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

# The interpreter: $PYTHON if set; else a system Python 3.11+ (in /usr/bin) when there is one, because
# sandbox workers can drop to the unprivileged uid 'nobody' only if that uid can read the Python runtime
# (an interpreter under /root, mode 0700, forces the weaker user-namespace fallback; docs/SANDBOX.md);
# else the first python3 on PATH.
_pick_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
  local candidate
  for candidate in /usr/bin/python3.13 /usr/bin/python3.12 /usr/bin/python3.11 /usr/bin/python3; do
    if [ -x "$candidate" ] && "$candidate" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' \
         2>/dev/null; then
      echo "$candidate"; return
    fi
  done
  echo python3
}

ensure_venv() {
  local extra="${1:-}"
  local python
  python="$(_pick_python)"
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "plugin_pool needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
    exit 2
  fi
  local base
  base="$("$python" -c 'import sys; print(sys.base_prefix)')"
  if [ -x "$VENV/bin/python" ] && [ "$("$VENV/bin/python" -c 'import sys; print(sys.base_prefix)')" != "$base" ]; then
    echo "[setup] $VENV was made with another interpreter; recreating it with $python" >&2
    rm -rf "$VENV"
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV with $python" >&2
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
