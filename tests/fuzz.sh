#!/usr/bin/env bash
# Runs every cargo-fuzz target of stevedore (fuzz/fuzz_targets/) for SECONDS each, one after
# the other. Not part of CI: it needs a nightly toolchain and takes SECONDS per target plus a
# build.
#
#   bash tests/fuzz.sh SECONDS [TARGET...]      # e.g. bash tests/fuzz.sh 60, or 300 route
#
# Environment: FUZZ_SANITIZER (default none: the targets are safe Rust; use address to check
# unsafe code too), FUZZ_TOOLCHAIN (default nightly), FUZZ_RSS_LIMIT_MB (default 2048).
#
# Exits non-zero when a target finds a crash (a panic is a crash: the targets assert the
# parsers' properties), printing the artifact that reproduces it:
#   cargo +nightly fuzz run --fuzz-dir fuzz <target> <artifact>
# Every crash found becomes a plain #[test] in tests/properties/regressions.rs with the input inlined.
# The corpus grows in fuzz/corpus/<target> (seeded from fuzz/seeds/<target>); crashes land in
# fuzz/artifacts/<target>/; both are git-ignored.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

usage() {
  echo "usage: bash tests/fuzz.sh SECONDS [TARGET...]" >&2
  exit 2
}
[ $# -ge 1 ] || usage
secs=$1
shift
[[ "$secs" =~ ^[1-9][0-9]*$ ]] || usage

toolchain=${FUZZ_TOOLCHAIN:-nightly}
sanitizer=${FUZZ_SANITIZER:-none}
rss_limit=${FUZZ_RSS_LIMIT_MB:-2048}

if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing the $toolchain toolchain" >&2
  rustup toolchain install "$toolchain" --profile minimal || exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked || exit 2
fi

fuzz=(cargo "+$toolchain" fuzz)
if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <("${fuzz[@]}" list --fuzz-dir fuzz)
fi
[ ${#targets[@]} -gt 0 ] || { echo "fuzz.sh: no fuzz targets found" >&2; exit 2; }

echo "fuzz.sh: building ${targets[*]} (sanitizer: $sanitizer)"
for t in "${targets[@]}"; do
  "${fuzz[@]}" build --fuzz-dir fuzz --sanitizer "$sanitizer" "$t" || exit 2
done

logs=fuzz/artifacts/logs
mkdir -p "$logs"
failed=()
summary=()
for t in "${targets[@]}"; do
  corpus=fuzz/corpus/$t
  seeds=fuzz/seeds/$t
  artifacts=fuzz/artifacts/$t
  mkdir -p "$corpus" "$artifacts"
  dirs=("$corpus")
  [ -d "$seeds" ] && dirs+=("$seeds")
  args=(-max_total_time="$secs" -timeout=10 -rss_limit_mb="$rss_limit" -print_final_stats=1)
  [ -f "fuzz/dict/$t.dict" ] && args+=(-dict="fuzz/dict/$t.dict")
  log=$logs/$t.log
  echo "fuzz.sh: $t for ${secs}s (log: $log)"
  # No standard input: a target must never wait on it.
  "${fuzz[@]}" run --fuzz-dir fuzz --sanitizer "$sanitizer" "$t" "${dirs[@]}" -- "${args[@]}" \
    </dev/null >"$log" 2>&1
  rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  if [ -z "$runs" ]; then
    runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -n1)
  fi
  artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n1)
  if [ $rc -ne 0 ] || [ -n "$artifact" ]; then
    failed+=("$t")
    summary+=("$t: FAILED after ${runs:-?} runs (exit $rc)${artifact:+, artifact $artifact}")
    echo "fuzz.sh: $t FAILED (exit $rc); the end of its log:" >&2
    tail -n 40 "$log" >&2
    if [ -n "$artifact" ]; then
      echo "fuzz.sh: reproduce with: cargo +$toolchain fuzz run --fuzz-dir fuzz --sanitizer $sanitizer $t $artifact" >&2
    fi
  else
    summary+=("$t: ok, ${runs:-?} runs in ${secs}s, corpus $(find "$corpus" -type f | wc -l) inputs")
  fi
done

echo
echo "fuzz.sh: summary"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: crashes in: ${failed[*]} (artifacts under fuzz/artifacts/<target>/)" >&2
  exit 1
fi
