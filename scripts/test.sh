#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, property, command-line and
# VFS end-to-end tests (the VFS tests need root and /dev/fuse; this script
# makes them mandatory).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# Throwaway users left behind by a killed security test run.
remove_test_users() {
  awk -F: '/^spfs-t[0-9]+-[0-9]+:/ {print $1}' /etc/passwd | while read -r u; do
    pkill -KILL -u "$u" 2>/dev/null || true
    userdel "$u" 2>/dev/null || true
  done
}
remove_test_users
trap remove_test_users EXIT
SPFS_REQUIRE_VFS_TESTS=1 SPFS_REQUIRE_S3_TESTS=1 cargo test --workspace 2>&1
