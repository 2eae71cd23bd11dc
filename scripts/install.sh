#!/usr/bin/env bash
# Builds release binaries and installs spfs, spfs-vfs and spfs-enter into
# PREFIX/bin (default /usr/local). spfs-enter gets the cap_sys_admin file
# capability, so that `spfs run` can give every user's runtime a bound view
# (a mount namespace whose mount point shows only that runtime's view; see
# "Bound views" in the README). Run as root, or as `scripts/setup.sh
# --install`. Safe to run again.
#
# Usage: scripts/install.sh [--no-helper-capability]
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/usr/local}
if [ "$(id -u)" != 0 ]; then
	echo "scripts/install.sh must run as root (it installs into $PREFIX/bin and sets a file capability)" >&2
	exit 1
fi
command -v setcap >/dev/null || { echo "setcap is missing: run scripts/setup.sh first" >&2; exit 1; }
echo "== building (release)"
cargo build --release -q -p spfs-cli --bins
install -d "$PREFIX/bin"
for b in spfs spfs-vfs spfs-enter; do
	install -m 0755 "target/release/$b" "$PREFIX/bin/$b"
done
if [ "${1:-}" = "--no-helper-capability" ]; then
	setcap -r "$PREFIX/bin/spfs-enter" 2>/dev/null || true
	echo "installed without the helper's capability: users' runtimes are routed"
else
	# The helper does one thing with it: bind the caller's own view over the
	# service's mount point in a new mount namespace, then drop it and run
	# the command (see crates/spfs-fuse/src/bind.rs).
	setcap cap_sys_admin+ep "$PREFIX/bin/spfs-enter"
	echo "spfs-enter: $(getcap "$PREFIX/bin/spfs-enter")"
fi
echo "installed spfs, spfs-vfs and spfs-enter into $PREFIX/bin"
