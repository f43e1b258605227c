#!/usr/bin/env bash
# Installs what netev's test suite needs and a fresh machine may lack, then
# exits. Quiet when nothing is missing. Used by scripts/test.sh (the
# README's test command) and by .ci/run.
#
# - System packages, through apt, only when one is missing (as root, or
#   with sudo). Add a line per new need.
# - pytest, in a virtual environment under target/test-venv (never in the
#   system's Python); tests/python.rs and tests/python_wheel.rs use that
#   environment when it exists.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

need_pkgs=()
command -v cc >/dev/null || need_pkgs+=(gcc)
command -v make >/dev/null || need_pkgs+=(make)
command -v python3 >/dev/null || need_pkgs+=(python3)
command -v curl >/dev/null || need_pkgs+=(curl)                  # tests/interop.rs, make -C examples-c run
command -v socat >/dev/null || need_pkgs+=(socat)                # tests/interop.rs
command -v valgrind >/dev/null || need_pkgs+=(valgrind)          # C tests under valgrind
command -v nm >/dev/null || need_pkgs+=(binutils)                # hygiene_symbols
command -v readelf >/dev/null || need_pkgs+=(binutils)           # tests/install.rs
command -v abidiff >/dev/null || need_pkgs+=(abigail-tools)      # tests/abi.rs
command -v openssl >/dev/null || need_pkgs+=(openssl)            # TLS tests: certificates, s_server/s_client peers
command -v pkg-config >/dev/null || need_pkgs+=(pkg-config)      # benches/run.py, tests/benches_smoke.rs, tests/install.rs
command -v cmake >/dev/null || need_pkgs+=(cmake)                # tests/install.rs (find_package(netev))
command -v doxygen >/dev/null || need_pkgs+=(doxygen)            # tests/api_docs.rs
pkg-config --exists libuv 2>/dev/null || need_pkgs+=(libuv1-dev) # benches/uv_echo.c
# ASan/UBSan runtimes for the C tests built with -fsanitize=address,undefined
echo 'int main(void){return 0;}' | cc -x c -fsanitize=address,undefined -o /dev/null - 2>/dev/null ||
  need_pkgs+=(libasan8 libubsan1)

apt_install() {
  local sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || {
      echo "test-deps.sh: missing $*; install them (not root, no sudo)" >&2
      exit 1
    }
    sudo="sudo"
  fi
  echo "==> installing $*"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ((${#need_pkgs[@]})); then
  apt_install "${need_pkgs[@]}"
fi

venv="$root/target/test-venv"
if ! "$venv/bin/python" -c 'import pytest' 2>/dev/null; then
  echo "==> installing pytest in target/test-venv"
  rm -rf "$venv"
  python3 -m venv "$venv" 2>/dev/null || {
    # A distribution's python3 without its venv module.
    apt_install python3-venv
    python3 -m venv "$venv"
  }
  "$venv/bin/python" -m pip install -q pytest >/dev/null
fi
