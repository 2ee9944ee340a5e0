#!/usr/bin/env bash
# The README's first command: set up everything, build the default guest image
# if it is missing (a few minutes the first time), and start hearthd in the background.
# Options are passed to `hearth up` (e.g. --port 3030 --data-dir /var/lib/hearth).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec ./bin/hearth up "$@"
