#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, property, command-line and
# VFS end-to-end tests (the VFS tests need root and /dev/fuse; this script
# makes them mandatory).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
SPFS_REQUIRE_VFS_TESTS=1 cargo test --workspace 2>&1
