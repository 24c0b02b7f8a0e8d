#!/usr/bin/env bash
# Runs every check and test of stevedore on a Debian machine, as root, installing what the
# tests need: a real registry (distribution), real clients (skopeo, podman, containerd's ctr, a
# private Docker engine, docker-compose) and the tools the harness uses (htpasswd, openssl, ip
# for test addresses on lo).
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
need=(docker-registry skopeo containerd podman docker.io docker-compose binutils ca-certificates apache2-utils openssl tar gzip iproute2)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}"
fi
# The registry package starts a system service on :5000 on some installs; the tests start
# their own registries and do not need it.
systemctl stop docker-registry >/dev/null 2>&1 || true
# tests/deploy.rs renders deploy/kubernetes with kubectl's kustomize and checks it with
# kubernetes-validate (which brings PyYAML, used to read the rendered YAML back).
if ! command -v kubectl >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq kubernetes-client
fi
if ! command -v kubernetes-validate >/dev/null; then
  python3 -m pip --version >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq python3-pip; }
  python3 -m pip install -q kubernetes-validate 2>/dev/null ||
    python3 -m pip install -q --break-system-packages kubernetes-validate
fi

# tests/shared_store.rs runs a Garage cluster (the S3 store of replicas); built once, skipped
# when present.
if ! command -v garage >/dev/null; then
  cargo install --locked garage
fi

# A clean build (CI) gains nothing from incremental compilation, which doubles target/.
if [ -n "${CI:-}" ]; then
  export CARGO_INCREMENTAL=0
fi

rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --all-targets --no-fail-fast -- --test-threads=4
