#!/usr/bin/env bash
# Runs netev's benchmark suite (see benches/README.md): builds every server
# and the load generator, then benches/run.py does the runs and the tables.
#   benches/run.sh                 full run: 3 rounds, 5 s per run, pinned + unpinned
#   benches/run.sh --quick         smoke test: tiny durations, 1 round
#   benches/run.sh --help          every option
set -euo pipefail
exec python3 "$(dirname "$0")/run.py" "$@"
