#!/usr/bin/env bash
# The README's second command: the whole test suite: typecheck, lint, unit tests
# (seconds), integration tests that boot real QEMU VMs, the security suite
# (test/security: each attack on the API, the proxies and the agent, against a
# real hearthd, a real VM and Chromium), and browser tests of the dashboard
# (Debian's Chromium). VM tests run on their own XFS filesystem (reflink
# disks, as production uses), made here on a loop device and removed at the end.
# The build cache (kernel, debootstrap) is shared in /var/cache/hearth.
set -euo pipefail
cd "$(dirname "$0")/.."
HEARTH_SETUP_EXTRA=chromium bash scripts/setup.sh
npm run --silent typecheck
npm run --silent lint
npm run --silent test:unit

export HEARTH_TEST_CACHE="${HEARTH_TEST_CACHE:-/var/cache/hearth}"
export HEARTH_IMAGE_CACHE="$HEARTH_TEST_CACHE"
if [ -z "${HEARTH_TEST_TMP:-}" ]; then
  xfs_img=$(mktemp /var/tmp/hearth-test-XXXXXX.xfs)
  xfs_dir=$(mktemp -d /var/tmp/hearth-test-XXXXXX)
  loop=""
  cleanup() {
    if mountpoint -q "$xfs_dir"; then umount "$xfs_dir" || umount -l "$xfs_dir"; fi
    [ -n "$loop" ] && losetup -d "$loop" 2>/dev/null || true
    rm -rf "$xfs_img" "$xfs_dir"
  }
  trap cleanup EXIT
  truncate -s 40G "$xfs_img"
  mkfs.xfs -q -m reflink=1 "$xfs_img"
  loop=$(losetup --find --show "$xfs_img")
  mount -o noatime "$loop" "$xfs_dir"
  export HEARTH_TEST_TMP="$xfs_dir" HEARTH_IMAGE_DIR="$xfs_dir/image" HEARTH_EXPECT_REFLINK=1
fi
npm run --silent test:integration
npm run --silent test:security
npm run --silent test:browser
