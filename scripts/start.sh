#!/usr/bin/env bash
# The README's first command: set up everything, give the data dir reflinks if its
# filesystem has none (an XFS image on a loop device: sandbox disks and memory
# files are then O(1) clones), build the default guest image if it is missing
# (about a minute the first time), and start hearthd in the background.
# Options are passed to `hearth up` (e.g. --port 3030 --data-dir /var/lib/hearth).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
data_dir=/var/lib/hearth
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  [ "${args[$i]}" = "--data-dir" ] && data_dir="${args[$((i + 1))]}"
done
data_dir="${HEARTH_DATA_DIR_OVERRIDE:-$data_dir}"
if [ "${HEARTH_NO_STORAGE_INIT:-}" != "1" ]; then
  ./bin/hearth storage init --data-dir "$data_dir" || echo "start: no reflinks for $data_dir; sandboxes use full copies" >&2
fi
exec ./bin/hearth up "$@"
