#!/usr/bin/env bash
# lab.sh — a multi-host talkingdata IPAM lab on one machine, for tests and by hand. Needs root.
# `scripts/lab.sh help` tells how; the lab is Go (internal/lab, whose tests use it directly):
# this builds its command line (tools/lab, incremental) and runs it with the same arguments and
# environment (TDLAB_*).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GO=${TDLAB_GO:-$(command -v go || echo /usr/local/go/bin/go)}
BIN="$REPO/.cache/lab/lab"
(cd "$REPO" && "$GO" build -o "$BIN" ./tools/lab) >&2
exec "$BIN" "$@"
