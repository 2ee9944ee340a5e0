#!/usr/bin/env bash
# Installs what Hearth needs on a Debian host (idempotent): apt packages, npm
# dependencies, and the build (TypeScript, generated protobuf code, agent bundle).
set -euo pipefail
cd "$(dirname "$0")/.."

# lz4: the guest kernel's vmlinux is extracted from Debian's bzImage; util-linux: nsenter, losetup;
# gcc + libc6-dev: the guest's static hearth-pty helper. HEARTH_SETUP_EXTRA adds more (tests add chromium).
APT_PACKAGES=(qemu-system-x86 qemu-utils debootstrap e2fsprogs busybox-static cpio zstd lz4 util-linux iproute2 nftables xfsprogs ca-certificates gcc libc6-dev ${HEARTH_SETUP_EXTRA:-})

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then echo "setup: need root to install: ${missing[*]}" >&2; exit 1; fi
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp=node_modules/.hearth-install-stamp
if [ ! -f "$stamp" ] || [ package-lock.json -nt "$stamp" ]; then
  echo "setup: npm ci" >&2
  npm ci --no-audit --no-fund --loglevel=error
  touch "$stamp"
fi

echo "setup: building" >&2
npm run --silent build
