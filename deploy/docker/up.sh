#!/usr/bin/env bash
# Local development in one command: builds stevedore on this host, stages its image's build
# context (deploy/docker/stage.sh → target/docker), starts stevedore from docker-compose.yml,
# waits until the container reports healthy, then starts the file's other services.
#
# usage: bash deploy/docker/up.sh [options for `compose up`, e.g. --force-recreate]
#   STEVEDORE_PROFILE=debug   build with the dev profile (faster to build, slower to run)
#   STEVEDORE_PORT, STEVEDORE_ADMIN_PORT, STEVEDORE_CONFIG_DIR: see docker-compose.yml
# Stop with `docker compose down` (or docker-compose down); add -v to drop the store.
set -euo pipefail
cd "$(dirname "$0")/../.."

profile="${STEVEDORE_PROFILE:-release}"
if [ "$profile" = release ]; then
  cargo build --release --bin stevedore
  binary=target/release/stevedore
else
  cargo build --bin stevedore
  binary=target/debug/stevedore
fi
bash deploy/docker/stage.sh "$binary" target/docker

if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null; then
  compose=(docker-compose)
else
  echo "up.sh: neither docker compose nor docker-compose is installed" >&2
  exit 1
fi
# stevedore first: other services may name their images through it, and compose v1 pulls
# every image of the services it starts before it starts any of them.
"${compose[@]}" up -d --build "$@" stevedore

container="$("${compose[@]}" ps -q stevedore)"
status=starting
for _ in $(seq 60); do
  status="$(docker inspect --format '{{.State.Health.Status}}' "$container")"
  [ "$status" = starting ] || break
  sleep 1
done
if [ "$status" != healthy ]; then
  echo "up.sh: stevedore is $status; its log:" >&2
  docker logs --tail 30 "$container" >&2
  exit 1
fi
"${compose[@]}" up -d "$@"
echo "stevedore is healthy: mirror http://127.0.0.1:${STEVEDORE_PORT:-5000}," \
  "admin http://127.0.0.1:${STEVEDORE_ADMIN_PORT:-9102}/metrics"
