#!/usr/bin/env bash
# Writes the baseline of a new ABI into tests/abi/, at the release that
# starts it (a new SONAME: libnetev.so.0.MINOR before 1.0, .MAJOR after):
#
#   tests/abi/netev-<ABI>.h        include/netev.h as released; the
#                                  abi_released_* tests of
#                                  tests/c_programs.rs compile C tests
#                                  against it and run them on the library
#   tests/abi/libnetev-<ABI>.abi   `abidw` of the library as released;
#                                  tests/abi.rs runs abidiff against it
#
# Both are written once per ABI and never updated: they are what hosts
# compiled against that release have. Refuses to overwrite them unless
# given --force (only before the release is published).
#
# The library is the in-tree debug build (`cargo build --lib`, as `cargo
# test` builds it: full DWARF, SONAME libnetev.so). abidw describes only
# the exported netev_ functions (the suppression below drops every other
# function of the Rust crates it sees) and the types they reach; paths
# under the cargo registry are shortened so the file names no machine.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
force=0
[[ ${1:-} == --force ]] && force=1
command -v abidw >/dev/null || {
  echo "abi-baseline.sh: abidw is missing (apt-get install abigail-tools)" >&2
  exit 1
}

version=$(cargo metadata --no-deps --format-version 1 |
  python3 -c 'import json, sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "netev"))')
if [[ ! $version =~ ^([0-9]+)\.([0-9]+)\.([0-9]+)$ ]]; then
  echo "abi-baseline.sh: version '$version' is not MAJOR.MINOR.PATCH" >&2
  exit 1
fi
if ((BASH_REMATCH[1] == 0)); then abi="0.${BASH_REMATCH[2]}"; else abi="${BASH_REMATCH[1]}"; fi
header="tests/abi/netev-$abi.h"
baseline="tests/abi/libnetev-$abi.abi"
if ((!force)) && [[ -e $header || -e $baseline ]]; then
  echo "abi-baseline.sh: $header or $baseline exists: ABI $abi was released with them" >&2
  exit 1
fi

cargo build --lib
lib="${CARGO_TARGET_DIR:-target}/debug/libnetev.so"
suppr=$(mktemp)
trap 'rm -f "$suppr"' EXIT
cat >"$suppr" <<'SUPPR'
[suppress_function]
  name_not_regexp = ^netev_
  drop = yes
SUPPR
registry="${CARGO_HOME:-$HOME/.cargo}/registry/src/"
abidw --no-corpus-path --no-comp-dir-path --no-show-locs --no-elf-needed \
  --drop-undefined-syms --type-id-style hash --suppressions "$suppr" "$lib" |
  python3 -c '
import re, sys
registry = sys.argv[1]
text = sys.stdin.read()
# "/home/u/.cargo/registry/src/index.crates.io-<hash>/tokio-1.54.1/..." -> "cargo-registry/tokio-1.54.1/..."
text = re.sub(re.escape(registry) + r"[^/]*/", "cargo-registry/", text)
sys.stdout.write(text)
' "$registry" >"$baseline"
cp include/netev.h "$header"
echo "wrote $header and $baseline (ABI $abi, netev $version)"
