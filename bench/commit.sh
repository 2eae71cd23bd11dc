#!/usr/bin/env bash
# Benchmark of `spfs commit --path` (not a test; not run by CI).
#
# Builds the release binary, then in a temporary directory:
#   (a) 20,000 files of 4 KiB in 200 directories,
#   (b) one 1 GiB file of random data,
# commits each into a fresh repository, and in the same run hashes the same
# files with `openssl dgst -sha256` on all cores (xargs -P$(nproc)) and
# measures the raw durable write speed of the disk with dd conv=fsync (the
# ceiling for a commit, which must make its copy durable). Each case runs
# cold (page cache dropped before each timed command, when this user can:
# root) and warm (the sources read once before). It also compares
# `spfs write -f` of the big file into a repository that already holds it
# (read + hash + temporary copy, no fsync) with openssl, which shows that
# our SHA-256 takes the accelerated (SHA-NI) path.
#
# Each timing is the best of REPEAT runs (default 3): on a shared machine
# the other runs measure the neighbours.
#
# Usage: bench/commit.sh      (BENCH_DIR=/path to work elsewhere, REPEAT=n)
#
# Nothing is deleted between timed runs: on ext4, creating files right after
# deleting many others is slow (recently deleted inodes are skipped), which
# would measure the deletions rather than the commit.
set -euo pipefail

cd "$(dirname "$0")/.."
cargo build --release -q -p spfs-cli --bin spfs
SPFS="$PWD/target/release/spfs"
NPROC=$(nproc)
WORK=$(mktemp -d "${BENCH_DIR:-/tmp}/spfs-bench.XXXXXX")
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
export HOME="$WORK" SPFS_CONFIG="$WORK/empty.toml"
: >"$SPFS_CONFIG"

if [ -w /proc/sys/vm/drop_caches ]; then CAN_DROP=1; else CAN_DROP=0; fi
drop_caches() { sync; [ "$CAN_DROP" = 1 ] && echo 3 >/proc/sys/vm/drop_caches || true; }
warm() { find "$1" -type f -print0 | xargs -0 -P"$NPROC" -n 500 cat >/dev/null; sync; }
now() { date +%s.%N; }
REPEAT=${REPEAT:-3}
# time_cmd VAR CMD...: run CMD, store its wall time in seconds in VAR, or
# keep VAR's earlier value if that was faster.
time_cmd() {
	local var=$1
	shift
	local t0 t1 t old
	t0=$(now)
	"$@" >/dev/null
	t1=$(now)
	t=$(echo "$t1 - $t0" | bc -l)
	old=${!var:-}
	if [ -z "$old" ] || [ "$(echo "$t < $old" | bc -l)" = 1 ]; then
		printf -v "$var" '%s' "$t"
	fi
}
div() { echo "scale=3; $1 / $2" | bc -l; }
commit_into() { SPFS_STORAGE_ROOT="$WORK/repo-$1" "$SPFS" commit --path "$2"; }
hash_small() { find "$WORK/small" -type f -print0 | xargs -0 -P"$NPROC" -n 500 openssl dgst -sha256; }
hash_big() { openssl dgst -sha256 "$WORK/big/big.bin"; }

echo "== preparing data in $WORK ($NPROC cores)"
openssl rand -out "$WORK/rand.bin" $((20000 * 4096))
for d in $(seq 0 199); do
	mkdir -p "$WORK/small/d$d"
	dd if="$WORK/rand.bin" bs=4096 skip=$((d * 100)) count=100 status=none |
		split -b 4096 -a 3 -d - "$WORK/small/d$d/f"
done
rm -f "$WORK/rand.bin"
mkdir -p "$WORK/big"
openssl rand -out "$WORK/big/big.bin" $((1 << 30))
FILES=$(find "$WORK/small" -type f | wc -l)
MB=$(echo "(1024 * 1024 * 1024) / 1000000" | bc -l)
sync
sleep 2

declare -A R
T_DD="" T_WRITE="" T_SSL=""
for rep in $(seq 1 "$REPEAT"); do
	echo "== run $rep of $REPEAT"
	# The disk's durable write speed, from the page cache (random data).
	warm "$WORK/big"
	time_cmd T_DD dd if="$WORK/big/big.bin" of="$WORK/dd-$rep.out" bs=1M conv=fsync status=none
	for mode in cold warm; do
		if [ "$mode" = cold ] && [ "$CAN_DROP" = 0 ]; then
			echo "== cold runs skipped: cannot drop the page cache (not root)"
			continue
		fi
		prep() { if [ "$mode" = cold ]; then drop_caches; else warm "$1"; fi; }
		prep "$WORK/small"
		time_cmd "R[$mode,small,spfs]" commit_into "small-$mode-$rep" "$WORK/small"
		prep "$WORK/small"
		time_cmd "R[$mode,small,openssl]" hash_small
		prep "$WORK/big"
		time_cmd "R[$mode,big,spfs]" commit_into "big-$mode-$rep" "$WORK/big"
		prep "$WORK/big"
		time_cmd "R[$mode,big,openssl]" hash_big
	done
	# The SHA-256 path: `spfs write` of a blob the repository already has
	# reads, hashes and copies to a temporary file, but syncs nothing.
	warm "$WORK/big"
	SPFS_STORAGE_ROOT="$WORK/repo-big-warm-1" "$SPFS" write -f "$WORK/big/big.bin" >/dev/null
	time_cmd T_WRITE env SPFS_STORAGE_ROOT="$WORK/repo-big-warm-1" "$SPFS" write -f "$WORK/big/big.bin"
	time_cmd T_SSL hash_big
done
DD_MBS=$(div "$MB" "$T_DD")

echo
echo "== results, best of $REPEAT (cold = page cache dropped before each run, warm = sources cached)"
printf 'disk durable write (dd 1 GiB of random data, conv=fsync): %.2f s = %.0f MB/s\n' "$T_DD" "$DD_MBS"
for mode in cold warm; do
	[ -n "${R[$mode,small,spfs]:-}" ] || continue
	s_fps=$(div "$FILES" "${R[$mode,small,spfs]}")
	o_fps=$(div "$FILES" "${R[$mode,small,openssl]}")
	b_mbs=$(div "$MB" "${R[$mode,big,spfs]}")
	o_mbs=$(div "$MB" "${R[$mode,big,openssl]}")
	printf '[%s] (a) %d x 4 KiB: spfs commit %.2f s = %.0f files/s; openssl %.2f s = %.0f files/s; ratio %.2f\n' \
		"$mode" "$FILES" "${R[$mode,small,spfs]}" "$s_fps" "${R[$mode,small,openssl]}" "$o_fps" "$(div "$s_fps" "$o_fps")"
	printf '[%s] (b) 1 GiB: spfs commit %.2f s = %.0f MB/s; openssl %.2f s = %.0f MB/s; ratio vs openssl %.2f, vs dd %.2f\n' \
		"$mode" "${R[$mode,big,spfs]}" "$b_mbs" "${R[$mode,big,openssl]}" "$o_mbs" "$(div "$b_mbs" "$o_mbs")" "$(div "$b_mbs" "$DD_MBS")"
done
printf 'sha256 path: spfs write -f 1 GiB (already stored, no fsync) %.2f s = %.0f MB/s; openssl dgst %.2f s = %.0f MB/s\n' \
	"$T_WRITE" "$(div "$MB" "$T_WRITE")" "$T_SSL" "$(div "$MB" "$T_SSL")"
