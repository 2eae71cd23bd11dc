#!/usr/bin/env bash
# The demo: builds spfs, creates a sample repository in a temporary
# directory, commits two layers of a sample tree, inspects them (ls, info,
# diff, log), then runs commands inside environments through the VFS
# service (needs root for the mount). Leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
cargo build --release --quiet -p spfs-cli
PATH="$PWD/target/release:$PATH"

demo=$(mktemp -d /tmp/spfs-demo.XXXXXX)
cg="$(awk '$9 == "cgroup2" {print $5; exit}' /proc/self/mountinfo)/spfs-demo-$$"
export SPFS_CONFIG="$demo/empty.toml" SPFS_STORAGE_ROOT="$demo/repo" \
  SPFS_VFS_MOUNTPOINT="$demo/spfs" SPFS_VFS_LISTEN="unix:$demo/vfs.sock" \
  SPFS_VFS_LOG_FILE="$demo/vfs.log" SPFS_VFS_CGROUP_ROOT="$cg"
: > "$SPFS_CONFIG"
cleanup() {
  spfs-vfs service --stop >/dev/null 2>&1 || true
  rmdir "$cg"/* "$cg" 2>/dev/null || true
  rm -f "/run/spfs/mounts/${SPFS_VFS_MOUNTPOINT//\//%2F}.lock"
  rm -rf "$demo"
}
trap cleanup EXIT

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

# A sample tree: a tiny "python" layer and a plug-in layer over it.
mkdir -p "$demo/base/bin" "$demo/base/lib/python3/site-packages" "$demo/plugins/lib/python3/site-packages/tool"
printf '#!/bin/sh\necho "python 3 (demo) says: $*"\n' > "$demo/base/bin/python"
chmod 755 "$demo/base/bin/python"
echo "VERSION = '1.0'" > "$demo/base/lib/python3/site-packages/version.py"
ln -s python "$demo/base/bin/python3"
echo "VERSION = '2.0'" > "$demo/plugins/lib/python3/site-packages/version.py"
echo "def run(): pass" > "$demo/plugins/lib/python3/site-packages/tool/__init__.py"

step spfs init repo "$SPFS_STORAGE_ROOT"
step spfs commit --path "$demo/base" -t demo/python
step spfs commit --path "$demo/plugins" -t demo/plugins
echo "VERSION = '2.1'" > "$demo/plugins/lib/python3/site-packages/version.py"
step spfs commit --path "$demo/plugins" -t demo/plugins
step spfs ls -R demo/python+demo/plugins
step spfs ls -l demo/python bin
step spfs info demo/plugins
step spfs diff demo/python demo/plugins
step spfs log demo/plugins
step spfs read demo/python+demo/plugins lib/python3/site-packages/version.py

if [ "$(id -u)" = 0 ] && [ -e /dev/fuse ]; then
  # One mount, many views: two environments at the same path, side by side.
  step spfs run demo/python -- sh -c "ls $SPFS_VFS_MOUNTPOINT; cat $SPFS_VFS_MOUNTPOINT/lib/python3/site-packages/version.py"
  step spfs run demo/python+demo/plugins -- sh -c "$SPFS_VFS_MOUNTPOINT/bin/python3 hello; cat $SPFS_VFS_MOUNTPOINT/lib/python3/site-packages/version.py"
  step spfs run demo/python+demo/plugins~1 -- cat "$SPFS_VFS_MOUNTPOINT/lib/python3/site-packages/version.py"
  echo "(outside any runtime, $SPFS_VFS_MOUNTPOINT is empty: $(ls -A "$SPFS_VFS_MOUNTPOINT" | wc -l) entries)"
  step spfs-vfs status
else
  echo "(skipping the VFS part of the demo: it needs root and /dev/fuse)"
fi
echo
echo "demo done"
