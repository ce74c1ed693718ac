#!/usr/bin/env bash
# A shared MLflow tracking server on PostgreSQL, with artifacts served by the server itself, so a
# sweep on another machine logs with only MLFLOW_TRACKING_URI=http://<this host>:<MLFLOW_PORT>.
#
#   MLFLOW_PORT                   the server's port (the Makefile sets it, 5000 by default)
#   MLFLOW_HOST (0.0.0.0)         the address it listens on
#   MLFLOW_SERVER_DIR (.mlflow-server)  PostgreSQL data, its socket, the artifact store (git-ignored)
#   MLFLOW_PG_PORT (5433)         PostgreSQL's port (localhost only)
#
# Debian's postgresql is installed with apt when its binaries are missing. PostgreSQL refuses to
# run as root, so under root the cluster belongs to the `postgres` user. Ctrl-C stops both.
set -euo pipefail

PORT=${MLFLOW_PORT:?set MLFLOW_PORT, or start this with make mlflow-server}
HOST=${MLFLOW_HOST:-0.0.0.0}
DIR=$(realpath -m "${MLFLOW_SERVER_DIR:-.mlflow-server}")
PG_PORT=${MLFLOW_PG_PORT:-5433}
RUN=${RUN:-uv run --frozen}

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

if [ -z "$(pg_bin)" ]; then
  echo "PostgreSQL not found: installing Debian's postgresql" >&2
  if [ "$(id -u)" -eq 0 ]; then apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq postgresql >/dev/null; fi
fi
BIN=$(pg_bin)

as_owner() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

mkdir -p "$DIR/artifacts" "$DIR/socket"
if [ "$(id -u)" -eq 0 ]; then chown postgres: "$DIR" "$DIR/socket"; fi
if [ ! -s "$DIR/pgdata/PG_VERSION" ]; then
  as_owner "$BIN/initdb" -D "$DIR/pgdata" -U mlflow --auth=trust >"$DIR/initdb.log"
fi
as_owner "$BIN/pg_ctl" -D "$DIR/pgdata" -l "$DIR/postgres.log" -w \
  -o "-p $PG_PORT -k $DIR/socket -c listen_addresses=localhost" start >/dev/null
trap 'as_owner "$BIN/pg_ctl" -D "$DIR/pgdata" -m fast stop >/dev/null' EXIT
as_owner "$BIN/psql" -h "$DIR/socket" -p "$PG_PORT" -U mlflow -d postgres -tAc \
  "SELECT 1 FROM pg_database WHERE datname='mlflow'" | grep -q 1 ||
  as_owner "$BIN/createdb" -h "$DIR/socket" -p "$PG_PORT" -U mlflow mlflow

echo "MLflow tracking server: http://$HOST:$PORT (PostgreSQL on localhost:$PG_PORT, data in $DIR)"
echo "log a sweep from another machine: MLFLOW_TRACKING_URI=http://$(hostname):$PORT fishbench sweep"
$RUN mlflow server \
  --backend-store-uri "postgresql+psycopg2://mlflow@localhost:$PG_PORT/mlflow" \
  --serve-artifacts --artifacts-destination "$DIR/artifacts" \
  --host "$HOST" --port "$PORT" --workers 1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; as_owner "$BIN/pg_ctl" -D "$DIR/pgdata" -m fast stop >/dev/null' EXIT
trap 'exit 0' INT TERM
wait $SERVER
