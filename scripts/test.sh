#!/usr/bin/env bash
# The whole suite on SQLite, then every catalog-touching test again on PostgreSQL
# (127.0.0.1:5432, database `test`, or STRATUS_TEST_PG_URL). With no PostgreSQL answering, says so and
# runs the SQLite half only, unless STRATUS_REQUIRE_POSTGRES=1 (CI), where that is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
PG_URL=${STRATUS_TEST_PG_URL:-postgresql://postgres@127.0.0.1:5432/test}

echo "== tests on SQLite"
STRATUS_TEST_DATABASE=sqlite $BIN/pytest -q -p no:cacheprovider "$@"
sqlite_rc=$?

if $BIN/python -c "import psycopg,sys; psycopg.connect(sys.argv[1], connect_timeout=3).close()" "$PG_URL" 2>/dev/null; then
  echo "== catalog tests on PostgreSQL ($PG_URL)"
  STRATUS_TEST_DATABASE=postgresql STRATUS_TEST_PG_URL=$PG_URL $BIN/pytest -q -p no:cacheprovider -m db "$@"
  pg_rc=$?
elif [ "${STRATUS_REQUIRE_POSTGRES:-0}" = 1 ]; then
  echo "PostgreSQL at $PG_URL is not answering, and this run requires it (STRATUS_REQUIRE_POSTGRES=1)"
  pg_rc=1
else
  echo "PostgreSQL at $PG_URL is not answering: ran the SQLite half only"
  pg_rc=0
fi
[ $sqlite_rc = 0 ] && [ $pg_rc = 0 ]
