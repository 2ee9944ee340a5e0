#!/usr/bin/env bash
# Installs what Hearth needs on a Debian host (idempotent): checks Node.js, installs the apt
# packages for every host tool hearthd and the tests run, the npm dependencies, and builds
# (TypeScript, generated protobuf code, native addon, agent bundle, dashboard).
set -euo pipefail
cd "$(dirname "$0")/.."

# Node.js >= 20 on the host (package.json "engines"). Debian 12's own nodejs is 18: that one
# is for the guest image, not for hearthd, the CLI or the tests.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "setup: Hearth needs Node.js 20 or newer with npm on the host, and node/npm are not on PATH." >&2
  echo "setup: install Node.js 20+ (e.g. from https://nodejs.org or NodeSource's Debian packages), then run this again." >&2
  exit 1
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "setup: Hearth needs Node.js 20 or newer on the host; found $(node --version) at $(command -v node)." >&2
  echo "setup: install Node.js 20+ (e.g. from https://nodejs.org or NodeSource's Debian packages) and put it first on PATH." >&2
  exit 1
fi

# Host tools, by what runs them:
#   qemu-system-x86 qemu-utils          the QEMU driver and the accelerator probe
#   debootstrap e2fsprogs busybox-static cpio zstd lz4 xz-utils
#                                       the guest image (rootfs, initramfs; the kernel's vmlinux comes out of Debian's bzImage)
#   gcc libc6-dev                       the guest's static hearth-pty helper (and the PTY unit tests)
#   util-linux                          nsenter, unshare, setpriv, losetup, mount, findmnt, blockdev, dmesg
#   iproute2 nftables procps            network slots (ip, nft, sysctl)
#   dmsetup                             the device-mapper storage backend
#   xfsprogs                            `hearth storage init` and the test filesystem (mkfs.xfs)
#   curl                                integration tests reach guests through their namespaces
#   ca-certificates                     debootstrap and npm over HTTPS
#   postgresql                          cluster mode's tests start their own PostgreSQL (initdb, pg_ctl;
#                                       /usr/lib/postgresql/15/bin on Debian 12)
APT_REQUIRED=(qemu-system-x86 qemu-utils debootstrap e2fsprogs busybox-static cpio zstd lz4 xz-utils gcc libc6-dev
  util-linux iproute2 nftables procps dmsetup xfsprogs curl ca-certificates postgresql)
# Used when present (the code and the tests work without them, with less):
#   attr       getfattr/setfattr: the agent's file metadata (xattrs); its tests skip without them
#   conntrack  flushes a released slot's connection table (the ruleset's generation mark already
#              cuts old flows)
APT_OPTIONAL=(attr conntrack)
# HEARTH_SETUP_EXTRA adds more required packages (the test command adds chromium).
# shellcheck disable=SC2206
APT_REQUIRED+=(${HEARTH_SETUP_EXTRA:-})

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
missing_required=()
missing_optional=()
for p in "${APT_REQUIRED[@]}"; do installed "$p" || missing_required+=("$p"); done
for p in "${APT_OPTIONAL[@]}"; do installed "$p" || missing_optional+=("$p"); done

if [ "${#missing_required[@]}" -gt 0 ] || [ "${#missing_optional[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    if [ "${#missing_required[@]}" -gt 0 ]; then
      echo "setup: need root to install: ${missing_required[*]} ${missing_optional[*]}" >&2
      exit 1
    fi
    echo "setup: not root, so not installing the optional ${missing_optional[*]}" >&2
  else
    echo "setup: installing ${missing_required[*]} ${missing_optional[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || true
    if ! apt-get install -y -qq --no-install-recommends "${missing_required[@]}" "${missing_optional[@]}" >/dev/null; then
      if [ "${#missing_required[@]}" -gt 0 ]; then
        echo "setup: could not install ${missing_required[*]} ${missing_optional[*]}" >&2
        exit 1
      fi
      echo "setup: could not install the optional ${missing_optional[*]} (no package source?); continuing without" >&2
    fi
  fi
fi

stamp=node_modules/.hearth-install-stamp
if [ ! -f "$stamp" ] || [ package-lock.json -nt "$stamp" ]; then
  echo "setup: npm ci" >&2
  npm ci --no-audit --no-fund --loglevel=error
  touch "$stamp"
fi

echo "setup: building" >&2
npm run --silent build
