#!/usr/bin/env bash
# Builds release binaries and installs spfs, spfs-vfs and spfs-enter into
# PREFIX/bin (default /usr/local). spfs-enter gets the cap_sys_admin file
# capability, so that `spfs run` can give every user's runtime a bound view
# (a mount namespace whose mount point shows only that runtime's view; see
# "Bound views" in the README). Run as root, or as `scripts/setup.sh
# --install`. Safe to run again.
#
# It also installs the systemd units of the VFS service (spfs-vfs.socket,
# spfs-vfs.service; see docs/service.md) into $UNITDIR (default
# /etc/systemd/system) and, where systemd runs, enables the socket: the
# service then starts on the first `spfs run`, and `systemctl reload
# spfs-vfs` hands it over to a new worker (after an upgrade, say).
# Without systemd the service starts on demand, as it does for a user.
#
# Usage: scripts/install.sh [--no-helper-capability] [--no-systemd]
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
helper=yes; systemd=yes
for arg in "$@"; do
	case "$arg" in
	--no-helper-capability) helper=no ;;
	--no-systemd) systemd=no ;;
	*) echo "unknown option $arg (see the header of $0)" >&2; exit 2 ;;
	esac
done
DOCDIR=$PREFIX/share/doc/spfs
install -d "$DOCDIR"
install -m 0644 docs/*.md "$DOCDIR/"
if [ "$helper" = no ]; then
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
if [ "$systemd" = yes ]; then
	UNITDIR=${UNITDIR:-/etc/systemd/system}
	install -d "$UNITDIR"
	for unit in spfs-vfs.service spfs-vfs.socket; do
		sed -e "s|@BINDIR@|$PREFIX/bin|g" -e "s|@DOCDIR@|$DOCDIR|g" \
			"packaging/systemd/$unit" > "$UNITDIR/$unit.new"
		chmod 0644 "$UNITDIR/$unit.new"
		mv "$UNITDIR/$unit.new" "$UNITDIR/$unit"
	done
	if [ -d /run/systemd/system ]; then
		systemctl daemon-reload
		systemctl enable --now spfs-vfs.socket
		# A running service picks up the new binary without a pause.
		systemctl try-reload-or-restart spfs-vfs.service || true
		echo "systemd: spfs-vfs.socket enabled (the service starts on the first connection)"
	else
		echo "systemd units installed in $UNITDIR (systemd is not running here:"
		echo "  enable them later with: systemctl enable --now spfs-vfs.socket)"
	fi
fi
