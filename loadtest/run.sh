#!/usr/bin/env bash
# Runs the benchmark: installs what it needs (distribution, nginx), builds stevedore and
# loadtest in release mode, and runs `loadtest` with the given arguments, e.g.
#   bash loadtest/run.sh --quick
#   bash loadtest/run.sh all --blob-mib 1024 --json loadtest.json
# The first argument defaults to `all`. stevedore runs with its content store
# (loadtest/store.toml) unless --stevedore-extra-config is given or LOADTEST_NO_STORE=1.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
missing=()
[ -x /usr/bin/docker-registry ] || missing+=(docker-registry)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}"
fi
# Debian's packages may start system services; the benchmark starts its own instances.
systemctl stop docker-registry nginx >/dev/null 2>&1 || true

# s3-tier and cold-fanout-3 run a Garage node (the S3 store replicas share).
if ! command -v garage >/dev/null 2>&1; then
  cargo install --locked garage
fi

cargo build --release -p loadtest -p stevedore

args=("$@")
if [ ${#args[@]} -eq 0 ] || [[ "${args[0]}" == -* ]]; then
  args=(all "${args[@]}")
fi
extra=()
if [ "${LOADTEST_NO_STORE:-0}" != 1 ] && [[ " ${args[*]} " != *" --stevedore-extra-config"* ]]; then
  extra=(--stevedore-extra-config loadtest/store.toml)
fi
exec target/release/loadtest "${args[@]}" "${extra[@]}"
