#!/usr/bin/env bash
# The README's second command: the whole test suite. Unit tests first (seconds),
# then integration tests that boot real QEMU VMs (they build the default image
# into /var/lib/hearth once if it is missing; HEARTH_IMAGE_DIR overrides).
set -euo pipefail
cd "$(dirname "$0")/.."
# Chromium (Debian's) drives the dashboard's browser tests.
HEARTH_SETUP_EXTRA=chromium bash scripts/setup.sh
# One image cache for every suite (the default data dir's, which `scripts/start.sh` also fills).
export HEARTH_TEST_CACHE="${HEARTH_TEST_CACHE:-/var/lib/hearth/cache}"
npm run --silent typecheck
npm run --silent lint
npm run --silent test:unit
npm run --silent test:integration
npm run --silent test:browser
