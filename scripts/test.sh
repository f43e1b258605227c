#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: installs what the tests need
# when it is missing (scripts/test-deps.sh), then `cargo test` with any
# arguments given (e.g. scripts/test.sh --test c_programs -- abi_).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/test-deps.sh"
cd "$root"
exec cargo test "$@"
