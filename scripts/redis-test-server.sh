#!/usr/bin/env bash
# A throwaway redis-server for the Feast Redis tests and CI, bound to 127.0.0.1 only.
#
#   scripts/redis-test-server.sh install             install redis-server with apt-get if missing
#   scripts/redis-test-server.sh start [PORT] [DIR]  install if missing, start on 127.0.0.1:PORT
#                                                    (default 19500) with DIR/redis.pid, wait until
#                                                    it answers, print the connection string
#   scripts/redis-test-server.sh stop [DIR]          end the server whose pid is in DIR/redis.pid
#
# DIR defaults to /tmp/recsynth-redis-PORT for start and must be the same for stop. The server keeps
# nothing on disk (no RDB snapshots, no AOF). Debian's package does not start the service in a
# container; if it does elsewhere, that server on 6379 is left alone: this script only ends the pid
# it wrote. Then run the Redis test with the connection string, e.g.
#   RECSYNTH_REDIS_CONNECTION_STRING=127.0.0.1:19500 pytest -m integration tests/components
set -euo pipefail

install_redis() {
  if command -v redis-server >/dev/null 2>&1; then
    return 0
  fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
  fi
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends redis-server
}

start_redis() {
  local port="${1:-19500}"
  local dir="${2:-/tmp/recsynth-redis-${port}}"
  if [ "$port" -lt 19500 ] || [ "$port" -gt 19599 ]; then
    echo "port $port is outside this project's Redis test range 19500-19599" >&2
    exit 2
  fi
  install_redis
  mkdir -p "$dir"
  if [ -s "$dir/redis.pid" ] && kill -0 "$(cat "$dir/redis.pid")" 2>/dev/null; then
    echo "a server started by this script is already running (pid $(cat "$dir/redis.pid"))" >&2
    exit 1
  fi
  redis-server --bind 127.0.0.1 --port "$port" --protected-mode yes \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --dir "$dir" \
    --save "" --appendonly no
  for _ in $(seq 1 50); do
    if redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; then
      echo "127.0.0.1:${port}"
      return 0
    fi
    sleep 0.1
  done
  echo "redis-server did not answer on 127.0.0.1:${port}; see $dir/redis.log" >&2
  exit 1
}

stop_redis() {
  local dir="${1:-/tmp/recsynth-redis-19500}"
  if [ ! -s "$dir/redis.pid" ]; then
    echo "no pid file at $dir/redis.pid: nothing this script started is running there" >&2
    exit 1
  fi
  local pid
  pid="$(cat "$dir/redis.pid")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$dir/redis.pid"; return 0; }
    sleep 0.1
  done
  echo "redis-server pid $pid did not stop" >&2
  exit 1
}

case "${1:-}" in
  install) install_redis ;;
  start) shift; start_redis "$@" ;;
  stop) shift; stop_redis "$@" ;;
  *) echo "usage: $0 install | start [PORT] [DIR] | stop [DIR]" >&2; exit 2 ;;
esac
