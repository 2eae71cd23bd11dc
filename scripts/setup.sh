#!/usr/bin/env bash
# Installs what building, testing and benchmarking spfs need on a fresh
# Debian machine (run as root). Safe to run again: it installs only what is
# missing. `--bench` adds the benchmark's tools; `--install` also installs
# spfs itself, with the spfs-enter helper (scripts/install.sh).
set -euo pipefail

need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v unshare >/dev/null || need+=(util-linux)
command -v setpriv >/dev/null || need+=(util-linux)
command -v python3 >/dev/null || need+=(python3)
command -v openssl >/dev/null || need+=(openssl)
command -v pgrep >/dev/null || need+=(procps)
command -v useradd >/dev/null || need+=(passwd)
# setcap gives the spfs-enter helper its file capability (scripts/install.sh,
# and the tests of bound views for users).
command -v setcap >/dev/null || need+=(libcap2-bin)
# systemd's tools check the service's units and stand in for systemd in
# the tests (socket activation, notifications); systemd need not run.
command -v systemd-socket-activate >/dev/null || need+=(systemd)
if [ "${1:-}" = "--bench" ]; then
  command -v squashfuse >/dev/null || need+=(squashfuse)
  command -v mksquashfs >/dev/null || need+=(squashfs-tools)
  command -v hyperfine >/dev/null || need+=(hyperfine)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The FUSE device must exist (it does on any kernel with FUSE built in).
if [ ! -e /dev/fuse ]; then
  modprobe fuse 2>/dev/null || true
fi
command -v cargo >/dev/null || { echo "cargo (Rust) is required: install it with rustup" >&2; exit 1; }
# A real S3 server for the S3 remote's tests (s3s-fs: S3 over a directory).
if ! command -v s3s-fs >/dev/null; then
  echo "installing s3s-fs (S3 test server) with cargo"
  cargo install --quiet --locked s3s-fs@0.14.1 --features binary
fi
# --install: also build and install spfs, spfs-vfs and the spfs-enter
# helper with its file capability (scripts/install.sh).
if [ "${1:-}" = "--install" ]; then
  bash "$(dirname "$0")/install.sh"
fi
echo "setup complete"
