#!/usr/bin/env bash
# Read throughput of the HTTP API with wrk: one authenticated GET /api/characters/{id} (as the
# character's owner, a player), a finished job's status, GET /health and a plain 404 (the HTTP stack's floor), against a
# release build on a fresh data dir; with the server's CPU time per request.
#   cargo build --release && benches/http_read.sh [seconds]
# LIMNER_BIN overrides the binary; WRK_ARGS the load (default: 2 threads, 64 connections).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${LIMNER_BIN:-${CARGO_TARGET_DIR:-target}/release/limner}
SECS=${1:-10}
WRK_ARGS=${WRK_ARGS:--t2 -c64}
command -v wrk >/dev/null || { echo "wrk is required: apt-get install -y wrk" >&2; exit 1; }
DIR=$(mktemp -d)
RUST_LOG=${RUST_LOG:-info} "$BIN" serve --model tiny-fixture --port 0 --data-dir "$DIR" \
  >"$DIR/stdout" 2>"$DIR/stderr" &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 200); do grep -q "^admin token" "$DIR/stdout" 2>/dev/null && break; sleep 0.1; done
BASE=$(sed -n 's/^limner listening on //p' "$DIR/stdout")
PLAYER=$("$BIN" token create --name alice --role player --data-dir "$DIR" 2>/dev/null)
ID=$(curl -sf -H "Authorization: Bearer $PLAYER" -H 'Content-Type: application/json' \
  -d '{"name":"Garrick","race":"Human","gender":"Male","character_class":"Fighter","age_category":"Adult","facial_expression":"Confident","attire":"plate armor"}' \
  "$BASE/api/characters" | sed -n 's/^{"id":"\([^"]*\)".*/\1/p')
[ -n "$ID" ] || { echo "could not create a character" >&2; cat "$DIR/stderr" >&2; exit 1; }
curl -sf -o /dev/null -H "Authorization: Bearer $PLAYER" "$BASE/api/characters/$ID"
# The server's CPU time (user + system, clock ticks) so far: shared machines make req/s noisy,
# CPU time per request much less so.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
load() { # NAME URL [wrk args...]
  local name=$1 url=$2; shift 2
  echo "== $name"
  local before out
  before=$(cpu_ticks)
  # shellcheck disable=SC2086
  out=$(wrk $WRK_ARGS -d"${SECS}s" --latency "$@" "$url")
  echo "$out"
  local reqs ticks
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  ticks=$(( $(cpu_ticks) - before ))
  echo "server CPU per request: $(( ticks * 1000000 / $(getconf CLK_TCK) / reqs )) us; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
}
load "GET /api/characters/$ID (owner's bearer token)" "$BASE/api/characters/$ID" \
  -H "Authorization: Bearer $PLAYER"
# A finished job's status, as a client polling for its portrait reads it.
JOB=$(curl -sf -H "Authorization: Bearer $PLAYER" -H 'Content-Type: application/json' \
  -d '{"width":64,"height":64,"steps":2,"hires":false}' \
  "$BASE/api/characters/$ID/portrait/generate?async=true" | sed -n 's/.*"job_id":"\([^"]*\)".*/\1/p')
[ -n "$JOB" ] || { echo "could not submit a job" >&2; exit 1; }
for _ in $(seq 600); do
  curl -sf -H "Authorization: Bearer $PLAYER" "$BASE/api/jobs/$JOB" | grep -q '"state":"done"' && break
  sleep 0.1
done
load "GET /api/jobs/$JOB (finished, owner's token)" "$BASE/api/jobs/$JOB" \
  -H "Authorization: Bearer $PLAYER"
load "GET /health" "$BASE/health"
# The floor of the HTTP stack on this machine: a JSON 404, no credentials, no database.
load "GET /api/none (404)" "$BASE/api/none"
