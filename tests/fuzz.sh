#!/usr/bin/env bash
# Builds every cargo-fuzz target in fuzz/ and runs each for a bounded time from its corpus,
# seeded with the real captured fixtures (fuzz/seed.sh). Exits non-zero if any target crashed,
# timed out or ran out of memory, and says where the input is and how to replay it.
#
#   FUZZ_SECONDS=25     seconds per target (default 25)
#   FUZZ_TARGETS="a b"  only these targets (default: all, from `cargo fuzz list`)
#   FUZZ_SANITIZER=none to build without AddressSanitizer (default: address)
#   FUZZ_TARGET_DIR     where the instrumented build goes (default: $CARGO_TARGET_DIR/fuzz)
#
# cargo-fuzz needs nightly flags (-Zsanitizer, sancov): RUSTC_BOOTSTRAP=1 unlocks them on the
# stable toolchain. cargo-fuzz itself is installed from crates.io when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

secs=${FUZZ_SECONDS:-25}
sanitizer=${FUZZ_SANITIZER:-address}
target_dir=${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$root/target}/fuzz}
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz (crates.io)"
  cargo install cargo-fuzz --locked
fi

fuzz/seed.sh >/dev/null

fuzz() { cargo fuzz "$1" --sanitizer "$sanitizer" --target-dir "$target_dir" "${@:2}"; }

if [ -n "${FUZZ_TARGETS:-}" ]; then
  read -r -a targets <<<"$FUZZ_TARGETS"
else
  mapfile -t targets < <(cargo fuzz list)
fi
[ ${#targets[@]} -gt 0 ] || { echo "no fuzz targets found" >&2; exit 1; }

echo "building ${#targets[@]} fuzz targets (sanitizer: $sanitizer) into $target_dir"
fuzz build

# Long logs make slow inputs; the windows of 40 lines and the small entry caps the header picks
# cover the same ground faster.
extra_args() {
  case $1 in
    log_classifier) echo "-max_len=16384" ;;
  esac
}

failed=()
summary=()
for t in "${targets[@]}"; do
  echo "--- $t: ${secs}s"
  mkdir -p "fuzz/artifacts/$t"
  log="fuzz/artifacts/$t/fuzz.log"
  read -r -a extra <<<"$(extra_args "$t")"
  # -timeout: one input taking seconds is a bug; -rss_limit_mb: so is a parser eating memory.
  if fuzz run "$t" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    "${extra[@]}" >"$log" 2>&1; then
    status=ok
  else
    status=FAILED
    failed+=("$t")
    tail -n 60 "$log"
    artifact=$({ grep -o 'Test unit written to [^ ]*' "$log" || true; } | tail -n 1 | sed 's/Test unit written to //')
    if [ -n "$artifact" ]; then
      case $artifact in /*) ;; *) artifact="$root/fuzz/${artifact#./}" ;; esac
      echo "!!! $t: crash input at $artifact"
      echo "    replay: RUSTC_BOOTSTRAP=1 cargo fuzz run --target-dir $target_dir $t $artifact"
    fi
  fi
  # A run that crashed prints no final stats: these may find nothing.
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1) || true
  corp=$({ grep -o 'corp: [0-9]*/[0-9a-zA-Z]*' "$log" || true; } | tail -n 1 | sed 's/corp: //')
  slowest=$(sed -n 's/^stat::slowest_unit_time_sec: *//p' "$log" | tail -n 1) || true
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -n 1) || true
  summary+=("$(printf '%-24s %-7s %11s runs %5ss  corpus %-14s slowest %ss  peak RSS %s MB' \
    "$t" "$status" "${runs:-?}" "$secs" "${corp:-?}" "${slowest:-?}" "${rss:-?}")")
done

echo
echo "=== fuzzing summary"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz targets that failed: ${failed[*]}" >&2
  exit 1
fi
echo "no crash in ${#targets[@]} targets"
