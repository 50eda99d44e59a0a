# Sourced by scripts/test. ensure_postgres sets PLUGIN_POOL_TEST_DSN to a reachable PostgreSQL server.
# Order: an explicit $PLUGIN_POOL_TEST_DSN; the local server at 127.0.0.1:5432 (starting the machine's
# cluster if it is installed but stopped); a throwaway cluster under a temp dir. With CI set, failing is fatal.

_pg_ok() {
  "$VENV/bin/python" - "$1" <<'PY' >/dev/null 2>&1
import sys, psycopg
with psycopg.connect(sys.argv[1], connect_timeout=3) as conn:
    conn.execute("select 1")
PY
}

ensure_postgres() {
  if [ -n "${PLUGIN_POOL_TEST_DSN:-}" ]; then
    if _pg_ok "$PLUGIN_POOL_TEST_DSN"; then echo "[postgres] using \$PLUGIN_POOL_TEST_DSN" >&2; return 0; fi
    echo "[postgres] PLUGIN_POOL_TEST_DSN is set but the server does not answer: $PLUGIN_POOL_TEST_DSN" >&2
    exit 1
  fi
  local local_dsn="postgresql://postgres@127.0.0.1:5432/test"
  if _pg_ok "$local_dsn"; then PLUGIN_POOL_TEST_DSN="$local_dsn"; echo "[postgres] using $local_dsn" >&2; return 0; fi
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start >/dev/null 2>&1 || true
    for _ in $(seq 1 20); do
      if _pg_ok "$local_dsn"; then PLUGIN_POOL_TEST_DSN="$local_dsn"; echo "[postgres] started the local cluster" >&2; return 0; fi
      sleep 0.5
    done
  fi
  local bindir
  bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
  if [ -n "$bindir" ] && [ -x "$bindir/initdb" ]; then
    local dir port=55432 runas=()
    dir="$(mktemp -d /tmp/plugin-pool-pg.XXXXXX)"
    if [ "$(id -u)" = 0 ]; then chown postgres "$dir" 2>/dev/null && runas=(runuser -u postgres --); fi
    if "${runas[@]}" "$bindir/initdb" -D "$dir/data" -U postgres -A trust >/dev/null \
      && "${runas[@]}" "$bindir/pg_ctl" -D "$dir/data" -o "-p $port -k $dir -c listen_addresses=127.0.0.1" \
           -l "$dir/log" -w start >/dev/null; then
      "${runas[@]}" "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres test >/dev/null 2>&1 || true
      PLUGIN_POOL_TEST_DSN="postgresql://postgres@127.0.0.1:$port/test"
      # The throwaway cluster stops when the test run ends.
      trap "${runas[*]} '$bindir/pg_ctl' -D '$dir/data' -m fast stop >/dev/null 2>&1; rm -rf '$dir'" EXIT
      echo "[postgres] started a throwaway cluster at $PLUGIN_POOL_TEST_DSN" >&2
      return 0
    fi
  fi
  if [ -n "${CI:-}" ]; then
    echo "[postgres] no PostgreSQL server is reachable and none could be started; CI needs one" >&2
    exit 1
  fi
  echo "[postgres] no PostgreSQL server: tests that need one will fail; set PLUGIN_POOL_TEST_DSN" >&2
  PLUGIN_POOL_TEST_DSN=""
}
