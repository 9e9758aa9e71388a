#!/usr/bin/env bash
# README.md's first command: sets the machine up (scripts/setup-host.sh, the
# same setup path as scripts/test-all.sh), then runs `shoal demo` from a
# release build. Arguments go to `shoal demo` (e.g. --keep; see --help).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-host.sh
exec cargo run --release --locked --bin shoal -- demo "$@"
