#!/usr/bin/env bash
# The README's test command: installs what the tests need and is missing (Debian's chromium, the
# browser test's node packages, the Python API clients), then runs `cargo test "$@"`.
# Each install step runs only when its check fails, so a second run goes straight to cargo.
#   ./test.sh                       everything
#   ./test.sh --test web_ui         any cargo test arguments pass through
# Set LIMNER_TEST_NO_INSTALL=1 to only check (and fail) instead of installing.
set -euo pipefail
cd "$(dirname "$0")"

# Compiled dependencies live outside the clone so every clone on this machine shares them
# (a from-scratch candle build takes ~8 minutes on 2 cores).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/limner-target}"

say() { printf 'test.sh: %s\n' "$*" >&2; }
install_allowed() { [ "${LIMNER_TEST_NO_INSTALL:-0}" != 1 ]; }

if ! command -v cargo >/dev/null 2>&1; then
  say "cargo is required: install a Rust toolchain (https://rustup.rs)"
  exit 1
fi

# The web UI test drives Debian's chromium through playwright-core (tests/browser).
chromium="${CHROMIUM_PATH:-/usr/bin/chromium}"
if [ ! -x "$chromium" ]; then
  install_allowed || { say "missing $chromium (apt-get install -y chromium)"; exit 1; }
  say "installing chromium (apt-get)"
  sudo_cmd=""
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then sudo_cmd="sudo"; fi
  $sudo_cmd apt-get update
  $sudo_cmd apt-get install -y chromium
fi

# npm records what it installed in node_modules/.package-lock.json; reinstall when the lock file
# is newer or the record is missing.
installed_lock=tests/browser/node_modules/.package-lock.json
if [ ! -f "$installed_lock" ] || [ tests/browser/package-lock.json -nt "$installed_lock" ]; then
  install_allowed || { say "tests/browser/node_modules is missing or stale (npm ci --prefix tests/browser)"; exit 1; }
  say "installing the browser test's node packages (npm ci)"
  npm ci --prefix tests/browser --no-audit --no-fund
fi

# The compatibility tests run the real A1111 (webuiapi) and OpenAI clients from PyPI.
if ! python3 -c "import webuiapi, openai, PIL, requests" >/dev/null 2>&1; then
  install_allowed || { say "Python clients missing (python3 -m pip install -r tests/compat_clients/requirements.txt)"; exit 1; }
  say "installing the Python API clients (pip)"
  pip_install() { python3 -m pip install --quiet --disable-pip-version-check "$@"; }
  pip_install -r tests/compat_clients/requirements.txt \
    || pip_install --break-system-packages -r tests/compat_clients/requirements.txt
fi

exec cargo test "$@"
