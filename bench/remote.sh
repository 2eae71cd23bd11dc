#!/usr/bin/env bash
# Benchmark of remotes (not a test; not run by CI): push and pull to and
# from each kind of remote, and reading through the VFS from a remote.
#
# Builds release binaries, then in a private world under /var/tmp (local
# repository, remotes, servers on loopback, mount point, control socket,
# log, cgroup root <cgroup2>/spfs-bench-remote-$$), all removed on exit:
#   - one file of BENCH_BIG_MB (default 1024) MiB of random bytes and
#     BENCH_SMALL_FILES (default 20,000) files of 4 KiB in 200 directories,
#     committed as bench/big and bench/small;
#   - the remotes: a directory (file:), `spfs server` (grpc://127.0.0.1:P,
#     with a token: a writable server needs one) and S3 (s3s-fs on
#     127.0.0.1, s3://bench/spfs), fresh for every run.
#
# Transfers, for each remote kind (BENCH_KINDS, default "dir grpc s3") and
# each data set (big, small): `spfs push TAG --to R` from the local
# repository and `spfs pull TAG --from R` into an empty repository, each
# against a reference moving the same bytes:
#   dir   `cp -r` of the source tree, then syncfs of the copy (spfs makes
#         every payload durable before it is renamed into place, so the
#         reference is a durable copy too; the time without the syncfs is
#         printed beside it); pull: `cp -r` of that copy.
#   grpc  the same server (`spfs server`: same repository code, durable
#         writes) called by curl over HTTP/2 with hand-made request bodies
#         (bench/remote_raw.py, made before the clock starts): one
#         WritePayload call per file (push), one ReadPayload call per file
#         with the responses written to files, then syncfs (pull); curl runs
#         BENCH_JOBS (default 8, spfs's --jobs) calls at once. So the ratio
#         is the cost of the spfs client and transfer (graph walk, existence
#         checks, objects, tags, verification) over the bare RPCs of the
#         same server. curl before 8.0 cannot reuse an HTTP/2
#         prior-knowledge connection (curl/curl#10634), so with such a curl
#         every call has a connection of its own (a TCP connect and an
#         HTTP/2 preface more per call than spfs, a fraction of a
#         millisecond on loopback). The spfs transfer through the directory
#         remote is shown as a second reference (same transfer code, no
#         network).
#   s3    the same S3 server called by curl (--aws-sigv4): one PUT per
#         file, or one GET per file written to files then syncfs; BENCH_JOBS
#         transfers at once.
# Before every timed command dirty pages are flushed (sync) and every
# source is in the page cache: the transfer path is measured, not the
# disk. Note that s3s-fs is a test server, not a fast one: it bounds the
# S3 figures (reference and spfs alike).
#
# Read-through through the VFS (root only: FUSE, cgroups), for gRPC and S3:
# bench/big only on the remote, the local repository empty, `[remote.origin]`
# pointing to that remote, a VFS service of its own (vfs defaults, e.g.
# cache_opens), inside `spfs run bench/big`, with vfs.remote_ranged_reads
# off (the default: a first read waits for the whole, checked payload) and
# on (BENCH_RANGED, default "off on"):
#   rt_read  first full read of the uncached big file (open to last byte,
#            1 MiB reads), against a raw read of the same object to
#            /dev/null (S3: curl GET of payloads/DIGEST; gRPC: ReadPayload
#            of the whole payload by a bare HTTP/2 client, remote_raw.py
#            h2-read, until its last DATA byte: curl's end would wait for
#            the call's trailers, which this server sends late). Target
#            >= 0.8x. Also shown: `spfs pull` of the tag from the same
#            remote (which, like the read-through, stores the blob
#            durably; the raw read stores nothing).
#   rt_ttfb  open + one 4 KiB read at offset min(512 MiB, half the file)
#            of the uncached big file, against a raw ranged read of the same
#            4 KiB (S3: curl -r, until the last byte; gRPC: curl
#            ReadPayload offset, length, until the response headers, which
#            arrive in one segment with the 4 KiB). Target <= 2x. Also
#            shown: how long the whole blob took to be stored locally in
#            the background.
# Both readers are a few lines of Python (timing starts before open(2), so
# a fetch done at open is counted); the wall time of the whole `spfs run`
# (registration, fetching the objects) is printed too. The remote's copy
# is read once before (warm on the server side, for spfs and reference
# alike). The read bytes are checked (4 KiB against the source; the whole
# file by a second, hashed read, which also shows the local speed once the
# blob is stored). Last, one 4 KiB ReadPayload by curl shows the gRPC
# server's per-call latency (response headers against trailers).
#
# BENCH_RUNS (default 1 quick, 2 full): each timing is the best of that
# many runs (every run with fresh remotes). BENCH_QUICK=1: 64 MiB, 2,000
# files (about 2 minutes on a 2-vCPU VM, after the build). The machine's
# disk and CPUs are shared: small cases vary by several times from run to
# run; use more runs for figures worth quoting. BENCH_READTHROUGH=0 skips
# the VFS part. BENCH_REMOTE_TIMEOUT (default 300): vfs.remote_timeout of
# the read-through services. BENCH_JSON=F also writes every result to F.
#
# Usage: bench/remote.sh                       (as root for read-through)
#        BENCH_QUICK=1 bench/remote.sh
#        BENCH_QUICK=1 BENCH_KINDS="grpc" BENCH_RANGED=on bench/remote.sh
set -euo pipefail

cd "$(dirname "$0")/.."
. bench/lib.sh
BIG_MB=${BENCH_BIG_MB:-$(quick 64 1024)}
SMALL_FILES=${BENCH_SMALL_FILES:-$(quick 2000 20000)}
RUNS=${BENCH_RUNS:-$(quick 1 2)}
JOBS=${BENCH_JOBS:-8}
RT_TIMEOUT=${BENCH_REMOTE_TIMEOUT:-300}
read -r -a KINDS <<<"${BENCH_KINDS:-dir grpc s3}"
for k in "${KINDS[@]}"; do case $k in dir | grpc | s3) ;; *) echo "BENCH_KINDS: unknown kind $k (dir, grpc, s3)" >&2; exit 2 ;; esac; done
[ ${#KINDS[@]} -gt 0 ] || { echo "empty BENCH_KINDS" >&2; exit 2; }
READTHROUGH=${BENCH_READTHROUGH:-1}
read -r -a RANGED <<<"${BENCH_RANGED:-off on}"
for r in "${RANGED[@]}"; do case $r in on | off) ;; *) echo "BENCH_RANGED: $r (on, off)" >&2; exit 2 ;; esac; done
[ ${#RANGED[@]} -gt 0 ] || READTHROUGH=0
if [ "$READTHROUGH" = 1 ] && [ "$(id -u)" != 0 ]; then
	echo "== not root: the read-through part (FUSE, cgroups) is skipped; transfers only"
	READTHROUGH=0
fi
RT_KINDS=()
for k in "${KINDS[@]}"; do [ "$k" != dir ] && RT_KINDS+=("$k"); done
[ ${#RT_KINDS[@]} -gt 0 ] || READTHROUGH=0
BIG_BYTES=$((BIG_MB << 20))
# The 4 KiB read of rt_ttfb: at 512 MiB, or the middle of a smaller file.
TTFB_OFF=$(((BIG_MB >= 1024 ? 512 : BIG_MB / 2) << 20))
S3_KEY=AKIASPFSBENCH
S3_SECRET=bench-secret-$$-$RANDOM
GRPC_TOKEN=bench-token-$$-$RANDOM$RANDOM

echo "== building (release)"
cargo build --release -q -p spfs-cli --bins
T="$PWD/target/release"
SPFS="$T/spfs"
SPFS_VFS="$T/spfs-vfs"
RAW="$PWD/bench/remote_raw.py"
for b in "$SPFS" "$SPFS_VFS"; do [ -x "$b" ] || { echo "missing $b" >&2; exit 1; }; done
S3S=$(command -v s3s-fs || true)
[ -z "$S3S" ] && [ -x "$HOME/.cargo/bin/s3s-fs" ] && S3S="$HOME/.cargo/bin/s3s-fs"
for c in curl openssl python3 split; do
	command -v "$c" >/dev/null || { echo "missing $c" >&2; exit 1; }
done
if [[ " ${KINDS[*]} " == *" s3 "* ]] && [ -z "$S3S" ]; then
	echo "missing s3s-fs (scripts/setup.sh installs it), or leave s3 out of BENCH_KINDS" >&2
	exit 1
fi
# curl: --aws-sigv4 from 7.75, --parallel from 7.66, HTTP/2 for gRPC.
CURL_VERSION=$(curl --version | awk 'NR == 1 { print $2 }')
python3 -c 'import sys; v = tuple(int(x) for x in sys.argv[1].split("-")[0].split(".")[:2]); sys.exit(v < (7, 75))' "$CURL_VERSION" ||
	{ echo "curl $CURL_VERSION is too old (7.75 or later: --aws-sigv4)" >&2; exit 1; }
curl --version | grep -q 'HTTP2' || { echo "curl without HTTP/2 (needed to call spfs server)" >&2; exit 1; }
PY=$(python3 -c 'import os, sys; print(os.path.realpath(sys.executable))')

CG2=""
if [ "$READTHROUGH" = 1 ]; then
	[ -e /dev/fuse ] || { echo "no /dev/fuse: the read-through part needs FUSE (BENCH_READTHROUGH=0 skips it)" >&2; exit 1; }
	CG2=$(awk '$9 == "cgroup2" { print $5; exit }' /proc/self/mountinfo)
	[ -n "$CG2" ] || { echo "no cgroup2 mount (BENCH_READTHROUGH=0 skips the read-through part)" >&2; exit 1; }
fi

W=$(mktemp -d /var/tmp/spfs-remote-bench.XXXXXX)
chmod 755 "$W"
MNT="$W/mnt"
CGROOT=""
[ -n "$CG2" ] && CGROOT="$CG2/spfs-bench-remote-$$"
mkdir -p "$MNT"
: >"$W/empty.toml"
export HOME="$W" SPFS_CONFIG="$W/empty.toml" SPFS_STORAGE_ROOT="$W/repo" \
	SPFS_VFS_MOUNTPOINT="$MNT" SPFS_VFS_LISTEN="unix:$W/vfs.sock" \
	SPFS_VFS_LOG_FILE="$W/vfs.log" SPFS_VFS_TOKEN_FILE="$W/token" \
	SPFS_VFS_REMOTE_TIMEOUT="$RT_TIMEOUT"
[ -n "$CGROOT" ] && export SPFS_VFS_CGROUP_ROOT="$CGROOT"
unset SPFS_RUNTIME SPFS_VFS_CACHE_OPENS SPFS_VFS_BIND_VIEWS SPFS_VFS_PASSTHROUGH AWS_PROFILE
unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_ENDPOINT AWS_DEFAULT_REGION AWS_REGION
echo "$GRPC_TOKEN" >"$W/grpc.token"
chmod 600 "$W/grpc.token"
RES="$W/results.tsv" # every result, one line each, for the report at the end
: >"$RES"

SVC_PID=""
SERVER_PIDS=() # spfs server and s3s-fs processes of this script
cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	if [ -n "$SVC_PID" ]; then
		timeout 15 "$SPFS_VFS" service --stop >/dev/null 2>&1
		stop_pid "$SVC_PID" wait
	fi
	for p in "${SERVER_PIDS[@]}"; do stop_pid "$p"; done
	for _ in 1 2 3; do is_mounted "$MNT" && umount -l "$MNT" 2>/dev/null; done
	remove_cgroups "$CGROOT"
	# The service's per-mount-point lock file.
	rm -f "/run/spfs/mounts/${MNT//\//%2F}.lock"
	if [ $rc != 0 ] && [ -f "$W/vfs.log" ]; then
		echo "--- last lines of the service log ---" >&2
		tail -n 20 "$W/vfs.log" >&2
	fi
	rm -rf "$W"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f\n", b - a }'; }
# timed OUT CMD...: CMD (a program or a function) run after flushing the
# page cache, its stdout to OUT; prints its wall time in seconds.
timed() {
	local out=$1 t0 t1
	shift
	sync
	t0=$(now)
	if ! "$@" >"$out" 2>"$W/cmd.err"; then
		{ echo "FAILED: $*"; tail -n 20 "$W/cmd.err"; } >&2
		return 1
	fi
	t1=$(now)
	sub "$t0" "$t1"
}
# rec CASE KIND SYSTEM VALUE: one result (seconds unless said otherwise).
rec() { printf 'R\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$RUN" >>"$RES"; }
note() { printf 'N\t%s\n' "$*" >>"$RES"; echo "   NOTE: $*"; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

echo "== load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the CPUs skews the results)"
echo "== preparing data in $W ($(nproc) cores): ${BIG_MB} MiB file, $SMALL_FILES x 4 KiB files; curl $CURL_VERSION"
mkdir -p "$W/src-big/big" "$W/src-small/small"
openssl rand -out "$W/src-big/big/big.bin" "$BIG_BYTES"
make_small_tree "$W/src-small/small" "$SMALL_FILES"
(cd "$W/src-big" && find . -type f -printf '%P\n' | sort) >"$W/big.list"
(cd "$W/src-small" && find . -type f -printf '%P\n' | sort) >"$W/small.list"
BIG_DIGEST=$(python3 "$RAW" digest "$W/src-big/big/big.bin")
payload_rel() { echo "payloads/${1:0:2}/${1:2}"; } # a payload in an FsRepository

echo "== committing"
"$SPFS" init repo "$W/repo" >/dev/null
"$SPFS" commit --path "$W/src-big" -t bench/big >/dev/null
"$SPFS" commit --path "$W/src-small" -t bench/small >/dev/null
[ -f "$W/repo/$(payload_rel "$BIG_DIGEST")" ] || { echo "the big file's payload is not $BIG_DIGEST" >&2; exit 1; }
# Requests for the gRPC references (identical in every run). curl before
# 8.0 cannot reuse an HTTP/2 prior-knowledge connection (curl/curl#10634:
# "Error in the HTTP2 framing layer" from the second request on), so there
# every call gets a host name of its own (all sent to the server by
# --connect-to) and a connection of its own, which adds a TCP connect and
# an HTTP/2 preface per call (a fraction of a millisecond on loopback).
GRPC_HOST="http://c{i}.spfs-bench.invalid"
GRPC_REUSE=0
if python3 -c 'import sys; sys.exit(int(sys.argv[1].split(".")[0]) < 8)' "$CURL_VERSION"; then
	GRPC_HOST="http://spfs-bench.invalid"
	GRPC_REUSE=1
fi
for d in big small; do
	python3 "$RAW" curl-grpc-put "$W/$d.list" "$W/src-$d" "$GRPC_HOST" "$W/grpc-bodies/put-$d" "$W/grpc-put-$d.cfg"
	python3 "$RAW" curl-grpc-get "$W/$d.list" "$W/src-$d" "$GRPC_HOST" "$W/grpc-bodies/get-$d" "OUT_DIR" "$W/grpc-get-$d.tmpl"
done
python3 "$RAW" grpc-read "$BIG_DIGEST" 0 0 "$W/grpc-read-all.bin"
python3 "$RAW" grpc-read "$BIG_DIGEST" "$TTFB_OFF" 4096 "$W/grpc-read-4k.bin"
EXPECT_4K=$(dd if="$W/src-big/big/big.bin" bs=4096 skip=$((TTFB_OFF / 4096)) count=1 status=none | sha256sum | cut -d' ' -f1)
EXPECT_ALL=$(python3 -c 'import base64, sys; print(base64.b32decode(sys.argv[1]).hex())' "$BIG_DIGEST")
# Source trees and the local repository in the page cache.
cat "$W/src-big/big/big.bin" >/dev/null
find "$W/src-small" "$W/repo" -type f -print0 | xargs -0 -n 500 cat >/dev/null
sync

# start_grpc ROOT: `spfs server` over repository ROOT (made here) on a
# free loopback port; sets GRPC_ADDR (HOST:PORT).
start_grpc() {
	"$SPFS" init repo "$1" >/dev/null
	SPFS_STORAGE_ROOT="$1" "$SPFS" server --listen 127.0.0.1:0 --token-file "$W/grpc.token" >"$1.out" 2>"$1.err" &
	SERVER_PIDS+=($!)
	local pid=$!
	GRPC_ADDR=""
	for _ in $(seq 200); do
		GRPC_ADDR=$(grep -o 'grpc://[0-9.]*:[0-9]*' "$1.out" 2>/dev/null | head -n 1 | sed 's|grpc://||') || true
		[ -n "$GRPC_ADDR" ] && break
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	[ -n "$GRPC_ADDR" ] || { cat "$1.out" "$1.err" >&2; echo "spfs server did not start" >&2; exit 1; }
}
# start_s3 DATA: s3s-fs over DATA with bucket "bench"; sets S3_PORT.
start_s3() {
	mkdir -p "$1/bench"
	local pid
	S3_PORT=$(free_port)
	"$S3S" --host 127.0.0.1 --port "$S3_PORT" --access-key "$S3_KEY" --secret-key "$S3_SECRET" "$1" >"$1.log" 2>&1 &
	pid=$!
	SERVER_PIDS+=("$pid")
	for _ in $(seq 200); do
		curl -s -o /dev/null "http://127.0.0.1:$S3_PORT/" && return 0
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	cat "$1.log" >&2
	echo "s3s-fs did not start" >&2
	exit 1
}
stop_servers() {
	for p in "${SERVER_PIDS[@]}"; do stop_pid "$p"; done
	SERVER_PIDS=()
}
# remote_lines KIND: the [remote.X] body for this run's remote of KIND.
remote_lines() {
	case $1 in
	dir) echo "address = \"file:$RUN_DIR/dir\"" ;;
	grpc)
		echo "address = \"grpc://$GRPC_SPFS\""
		echo "token_file = \"$W/grpc.token\""
		;;
	s3)
		echo "address = \"s3://bench/spfs\""
		echo "endpoint = \"http://127.0.0.1:$S3_PORT\""
		echo "region = \"us-east-1\""
		echo "access_key_id = \"$S3_KEY\""
		echo "secret_access_key = \"$S3_SECRET\""
		;;
	esac
}
S3CURL=(curl -sS --fail --parallel --parallel-max "$JOBS" --create-dirs -w '%{http_code}\n'
	--aws-sigv4 "aws:amz:us-east-1:s3" --user "$S3_KEY:$S3_SECRET" -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD')
GRPC_HEADERS=(-X POST -H 'content-type: application/grpc' -H 'te: trailers' -H "authorization: Bearer $GRPC_TOKEN")
GCURL=(curl -sS --http2-prior-knowledge --parallel --parallel-max "$JOBS" --create-dirs -w '%{http_code}\n' "${GRPC_HEADERS[@]}")
ok_codes() { # ok_codes FILE N: N responses, all 200 or 206
	local good
	good=$(grep -c '^20[06]$' "$1" || true)
	[ "$good" = "$2" ] || { echo "curl: $good of $2 requests succeeded ($(sort "$1" | uniq -c | tr '\n' ' '))" >&2; return 1; }
}
# Reference transfers (see the header): each a function, timed by timed().
ref_cp() { cp -r "$1" "$2" && sync -f "$2"; }
ref_cp_nosync() { cp -r "$1" "$2"; }
ref_s3_put() { "${S3CURL[@]}" -K "$1"; }
ref_s3_get() { "${S3CURL[@]}" -K "$1" && sync -f "$2"; }
ref_grpc_put() { "${GCURL[@]}" --connect-to "::$GRPC_REF" -K "$1"; }
ref_grpc_get() { "${GCURL[@]}" --connect-to "::$GRPC_REF" -K "$1" && sync -f "$2"; }
count_of() { if [ "$1" = big ]; then echo 1; else echo "$SMALL_FILES"; fi; }
# check_stats JSON PAYLOADS: a transfer moved every payload.
check_stats() {
	python3 - "$1" "$2" <<'EOF' || { echo "unexpected transfer stats in $1" >&2; return 1; }
import json, sys
s = json.load(open(sys.argv[1]))["stats"]
sys.exit(0 if s["payloads_copied"] == int(sys.argv[2]) else 1)
EOF
}

# --- read-through (root) ---
CONN_CFG=""
RT_REPO=""
rt() { env SPFS_CONFIG="$CONN_CFG" SPFS_STORAGE_ROOT="$RT_REPO" "$@"; }
start_service() {
	rt "$SPFS_VFS" service >"$W/service.out" 2>&1 &
	SVC_PID=$!
	for _ in $(seq 300); do
		"$SPFS_VFS" status >/dev/null 2>&1 && return 0
		kill -0 "$SVC_PID" 2>/dev/null || break
		sleep 0.05
	done
	cat "$W/service.out" "$W/vfs.log" >&2
	echo "the VFS service did not start" >&2
	exit 1
}
stop_service() {
	timeout 15 "$SPFS_VFS" service --stop >/dev/null || true
	stop_pid "$SVC_PID" wait
	SVC_PID=""
	for _ in $(seq 100); do is_mounted "$MNT" || break; sleep 0.05; done
	is_mounted "$MNT" && { echo "the service left $MNT mounted" >&2; exit 1; }
	return 0
}
# The reader inside the runtime: open, then LEN bytes from OFF in reads of
# BS; prints when the open returned, the first read returned and the last,
# from just before open(2) (and the SHA-256 of the bytes if HASH is 1).
READER='import hashlib, os, sys, time
p, off, n, bs, hashed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
h = hashlib.sha256()
e0 = time.time(); t0 = time.perf_counter()
fd = os.open(p, os.O_RDONLY)
t1 = time.perf_counter()
buf = bytearray(bs); mv = memoryview(buf); got = 0; first = None
while got < n:
    k = os.preadv(fd, [mv[:min(bs, n - got)]], off + got)
    if first is None:
        first = time.perf_counter()
    if k <= 0:
        break
    if hashed:
        h.update(mv[:k])
    got += k
t2 = time.perf_counter()
os.close(fd)
print("start_epoch %.6f open_s %.6f first_s %.6f total_s %.6f bytes %d sha %s" % (e0, t1 - t0, first - t0, t2 - t0, got, h.hexdigest() if hashed else "-"))'
field() { awk -v k="$1" '{ for (i = 1; i < NF; i++) if ($i == k) { print $(i + 1); exit } }' "$2"; }
# rt_case KIND CASE RANGED: one read-through measurement with a fresh
# local repository and service (CASE: read or ttfb; RANGED: on or off,
# vfs.remote_ranged_reads); its results go to system spfs (off) or
# spfs_ranged (on).
rt_case() {
	local kind=$1 case=$2 ranged=$3 sys=spfs obj curl_t wall off len bs sha
	[ "$ranged" = on ] && sys=spfs_ranged
	RT_REPO="$RUN_DIR/rt-$kind-$case-$ranged"
	CONN_CFG="$RUN_DIR/rt-$kind-$ranged.toml"
	{
		echo "[remote.origin]"
		remote_lines "$kind"
		echo "[vfs]"
		echo "remote_timeout = $RT_TIMEOUT"
		echo "remote_ranged_reads = $([ "$ranged" = on ] && echo true || echo false)"
	} >"$CONN_CFG"
	"$SPFS" init repo "$RT_REPO" >/dev/null
	start_service
	# The remote's copy, warm (server side), for the reference and spfs.
	case $kind in
	grpc) obj="$RUN_DIR/grpc/$(payload_rel "$BIG_DIGEST")" ;;
	s3) obj="$RUN_DIR/s3/bench/spfs/payloads/$BIG_DIGEST" ;;
	esac
	[ -f "$obj" ] || { echo "the remote has no $obj" >&2; exit 1; }
	cat "$obj" >/dev/null
	sync
	if [ "$case" = read ]; then
		off=0 len=$BIG_BYTES bs=$((1 << 20))
	else
		off=$TTFB_OFF len=4096 bs=4096
	fi
	# The reference: a raw read of the same object from the same server.
	if [ "$kind" = s3 ]; then
		local range=()
		[ "$case" = ttfb ] && range=(-r "$off-$((off + len - 1))")
		curl_t=$(curl -sS --fail "${range[@]}" --aws-sigv4 "aws:amz:us-east-1:s3" --user "$S3_KEY:$S3_SECRET" \
			-H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' -o "$W/ref.out" -w '%{time_starttransfer} %{time_total} %{size_download}' \
			"http://127.0.0.1:$S3_PORT/bench/spfs/payloads/$BIG_DIGEST")
		[ "$(cut -d' ' -f3 <<<"$curl_t")" = "$len" ] || { echo "raw S3 read: $curl_t (expected $len bytes)" >&2; exit 1; }
	else
		local body="$W/grpc-read-all.bin"
		[ "$case" = ttfb ] && body="$W/grpc-read-4k.bin"
		curl_t=$(curl -sS --http2-prior-knowledge "${GRPC_HEADERS[@]}" \
			-T "$body" -o "$W/ref.out" -w '%{time_starttransfer} %{time_total} %{size_download}' \
			"http://$GRPC_SPFS/spfs.repo.Repo/ReadPayload")
		[ "$(python3 "$RAW" grpc-count "$W/ref.out")" = "$len" ] || { echo "raw gRPC read: not $len bytes" >&2; exit 1; }
		if [ "$case" = read ]; then
			# The whole payload until its last byte: curl's end waits for the
			# trailers, which come late (see the end of the report), so a
			# bare HTTP/2 client times the last DATA byte instead.
			local h2
			h2=$(python3 "$RAW" h2-read "$GRPC_SPFS" /spfs.repo.Repo/ReadPayload "$body" "$GRPC_TOKEN" "$(cut -d' ' -f3 <<<"$curl_t")")
			curl_t="$(awk '{ print $2, $4 }' <<<"$h2") $(cut -d' ' -f3 <<<"$curl_t")"
		else
			# 4 KiB: the response headers and the DATA frame arrive in one
			# segment (the trailers ~40 ms later): the time to the headers
			# is the time to the bytes.
			rec rt_ttfb_ref_complete "$kind" ref "$(cut -d' ' -f2 <<<"$curl_t")"
			curl_t="$(cut -d' ' -f1 <<<"$curl_t") $(cut -d' ' -f1 <<<"$curl_t") $(cut -d' ' -f3 <<<"$curl_t")"
		fi
	fi
	rm -f "$W/ref.out"
	rec "rt_$case" "$kind" ref "$(cut -d' ' -f2 <<<"$curl_t")"
	rec "rt_${case}_ref_headers" "$kind" ref "$(cut -d' ' -f1 <<<"$curl_t")"
	# spfs: a runtime of the tag found only on the remote.
	wall=$(timed "$W/reader.out" rt "$SPFS" run bench/big -- "$PY" -c "$READER" "$MNT/big/big.bin" "$off" "$len" "$bs" 0) ||
		{ echo "read-through failed ($kind, $case, ranged reads $ranged)" >&2; exit 1; }
	[ "$(field bytes "$W/reader.out")" = "$len" ] || { cat "$W/reader.out" >&2; echo "read-through: short read" >&2; exit 1; }
	rec "rt_$case" "$kind" "$sys" "$(field total_s "$W/reader.out")"
	rec "rt_${case}_open" "$kind" "$sys" "$(field open_s "$W/reader.out")"
	rec "rt_${case}_first" "$kind" "$sys" "$(field first_s "$W/reader.out")"
	rec "rt_${case}_run" "$kind" "$sys" "$wall"
	local start local_path stored="-"
	start=$(field start_epoch "$W/reader.out")
	local_path="$RT_REPO/$(payload_rel "$BIG_DIGEST")"
	if [ "$case" = ttfb ]; then
		# The bytes, and when the whole blob is stored here.
		rt "$SPFS" run bench/big -- "$PY" -c "$READER" "$MNT/big/big.bin" "$off" "$len" "$bs" 1 >"$W/check.out"
		sha=$(field sha "$W/check.out")
		[ "$sha" = "$EXPECT_4K" ] || { echo "read-through ($kind): wrong bytes at $off ($sha, expected $EXPECT_4K)" >&2; exit 1; }
		local deadline=$(($(date +%s) + RT_TIMEOUT))
		while [ ! -f "$local_path" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.02; done
		if [ -f "$local_path" ]; then
			stored=$(sub "$start" "$(now)")
			rec rt_ttfb_stored "$kind" "$sys" "$stored"
		else
			note "$kind, ranged reads $ranged: the blob was not stored locally within $RT_TIMEOUT s of the first read"
		fi
	else
		# Again, hashed: the bytes, and the speed once the blob is local.
		for _ in $(seq 100); do [ -f "$local_path" ] && break; sleep 0.1; done
		[ -f "$local_path" ] || note "$kind, ranged reads $ranged: 10 s after a full read the blob is not stored locally"
		rt "$SPFS" run bench/big -- "$PY" -c "$READER" "$MNT/big/big.bin" 0 "$len" "$bs" 1 >"$W/check.out"
		sha=$(field sha "$W/check.out")
		[ "$sha" = "$EXPECT_ALL" ] || { echo "read-through ($kind): wrong bytes ($sha, expected $EXPECT_ALL)" >&2; exit 1; }
		rec rt_read_again "$kind" "$sys" "$(field total_s "$W/check.out")"
	fi
	stop_service
	printf '   %-4s %-5s ranged reads %-3s: reference %s s (headers %s s); spfs %s s (open %s s, first read %s s; spfs run %s s; stored after %s s)\n' \
		"$kind" "$case" "$ranged" "$(cut -d' ' -f2 <<<"$curl_t")" "$(cut -d' ' -f1 <<<"$curl_t")" \
		"$(field total_s "$W/reader.out")" "$(field open_s "$W/reader.out")" "$(field first_s "$W/reader.out")" "$wall" "$stored"
}

for RUN in $(seq 1 "$RUNS"); do
	echo "== run $RUN of $RUNS"
	RUN_DIR="$W/run$RUN"
	mkdir -p "$RUN_DIR"
	GRPC_SPFS="" GRPC_REF="" S3_PORT=""
	for kind in "${KINDS[@]}"; do
		case $kind in
		dir) "$SPFS" init repo "$RUN_DIR/dir" >/dev/null ;;
		grpc)
			start_grpc "$RUN_DIR/grpc"
			GRPC_SPFS=$GRPC_ADDR
			start_grpc "$RUN_DIR/grpc-ref"
			GRPC_REF=$GRPC_ADDR
			;;
		s3) start_s3 "$RUN_DIR/s3" ;;
		esac
	done
	CFG="$RUN_DIR/remotes.toml"
	for kind in "${KINDS[@]}"; do
		echo "[remote.$kind]"
		remote_lines "$kind"
	done >"$CFG"
	export SPFS_CONFIG="$CFG"
	for kind in "${KINDS[@]}"; do
		for d in big small; do
			N=$(count_of $d)
			# push, then its reference
			t=$(timed "$RUN_DIR/push.json" "$SPFS" push "bench/$d" --to "$kind" --json --jobs "$JOBS")
			check_stats "$RUN_DIR/push.json" "$N"
			rec "push_$d" "$kind" spfs "$t"
			case $kind in
			dir)
				r=$(timed /dev/null ref_cp "$W/src-$d" "$RUN_DIR/cp-$d")
				r0=$(timed /dev/null ref_cp_nosync "$W/src-$d" "$RUN_DIR/cp0-$d")
				rec "push_$d" dir ref_nosync "$r0"
				;;
			grpc)
				r=$(timed "$RUN_DIR/codes" ref_grpc_put "$W/grpc-put-$d.cfg")
				ok_codes "$RUN_DIR/codes" "$N"
				got=$(find "$RUN_DIR/grpc-ref/payloads" -type f | wc -l)
				[ "$got" -ge "$N" ] || { echo "gRPC reference push stored $got of $N payloads" >&2; exit 1; }
				;;
			s3)
				python3 "$RAW" curl-s3-put "$W/$d.list" "$W/src-$d" "http://127.0.0.1:$S3_PORT/bench/ref" "$RUN_DIR/put.cfg"
				r=$(timed "$RUN_DIR/codes" ref_s3_put "$RUN_DIR/put.cfg")
				ok_codes "$RUN_DIR/codes" "$N"
				;;
			esac
			rec "push_$d" "$kind" ref "$r"
			# pull into an empty repository, then its reference
			"$SPFS" init repo "$RUN_DIR/pull-$kind-$d" >/dev/null
			t=$(timed "$RUN_DIR/pull.json" env SPFS_STORAGE_ROOT="$RUN_DIR/pull-$kind-$d" "$SPFS" pull "bench/$d" --from "$kind" --json --jobs "$JOBS")
			check_stats "$RUN_DIR/pull.json" "$N"
			rec "pull_$d" "$kind" spfs "$t"
			case $kind in
			dir)
				r=$(timed /dev/null ref_cp "$RUN_DIR/cp-$d" "$RUN_DIR/cp2-$d")
				r0=$(timed /dev/null ref_cp_nosync "$RUN_DIR/cp-$d" "$RUN_DIR/cp20-$d")
				rec "pull_$d" dir ref_nosync "$r0"
				;;
			grpc)
				sed "s|OUT_DIR|$RUN_DIR/grpc-got-$d|" "$W/grpc-get-$d.tmpl" >"$RUN_DIR/get.cfg"
				r=$(timed "$RUN_DIR/codes" ref_grpc_get "$RUN_DIR/get.cfg" "$RUN_DIR")
				ok_codes "$RUN_DIR/codes" "$N"
				# Every answer holds its payload (a failed call has no data).
				read -r nf nb < <(find "$RUN_DIR/grpc-got-$d" -type f -printf '%s\n' | awk '{ s += $1; n++ } END { print n + 0, s + 0 }')
				want=$((N * 4096))
				[ $d = big ] && want=$BIG_BYTES
				[ "$nf" = "$N" ] && [ "$nb" -ge "$want" ] ||
					{ echo "gRPC reference pull: $nf files, $nb bytes" >&2; exit 1; }
				;;
			s3)
				python3 "$RAW" curl-s3-get "$W/$d.list" "http://127.0.0.1:$S3_PORT/bench/ref" "$RUN_DIR/s3-got-$d" "$RUN_DIR/get.cfg"
				r=$(timed "$RUN_DIR/codes" ref_s3_get "$RUN_DIR/get.cfg" "$RUN_DIR")
				ok_codes "$RUN_DIR/codes" "$N"
				;;
			esac
			rec "pull_$d" "$kind" ref "$r"
			printf '   %-5s %-5s push %s s (reference %s s), pull %s s (reference %s s)\n' "$kind" "$d" \
				"$(awk -F'\t' -v c="push_$d" -v k="$kind" -v r="$RUN" '$2 == c && $3 == k && $4 == "spfs" && $6 == r { print $5 }' "$RES")" \
				"$(awk -F'\t' -v c="push_$d" -v k="$kind" -v r="$RUN" '$2 == c && $3 == k && $4 == "ref" && $6 == r { print $5 }' "$RES")" \
				"$t" "$r"
		done
	done
	export SPFS_CONFIG="$W/empty.toml"
	if [ "$READTHROUGH" = 1 ]; then
		echo "== read-through, run $RUN (bench/big only on the remote; ${BIG_MB} MiB; 4 KiB at $((TTFB_OFF >> 20)) MiB)"
		for ranged in "${RANGED[@]}"; do
			for kind in "${RT_KINDS[@]}"; do
				rt_case "$kind" read "$ranged"
				rt_case "$kind" ttfb "$ranged"
			done
		done
	fi
	# The gRPC server's per-request cost: a ranged read of 4 KiB, headers
	# (first byte) against the whole answer (trailers).
	if [ -n "$GRPC_SPFS" ]; then
		for _ in 1 2 3; do
			x=$(curl -sS --http2-prior-knowledge "${GRPC_HEADERS[@]}" \
				-T "$W/grpc-read-4k.bin" -o /dev/null -w '%{time_starttransfer} %{time_total}' \
				"http://$GRPC_SPFS/spfs.repo.Repo/ReadPayload")
			rec grpc_4k_headers grpc ref "${x% *}"
			rec grpc_4k_total grpc ref "${x#* }"
		done
	fi
	stop_servers
	rm -rf "$RUN_DIR"
	sync
done
echo "== load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$RES" "${BENCH_JSON:-}" "$BIG_MB" "$SMALL_FILES" "$RUNS" "$JOBS" "$TTFB_OFF" "${KINDS[*]}" "$READTHROUGH" "$GRPC_REUSE" <<'EOF'
import json, sys
tsv, out, big_mb, nfiles, runs, jobs, ttfb_off, kinds, readthrough, grpc_reuse = sys.argv[1:]
big_mb, nfiles, runs, ttfb_off = int(big_mb), int(nfiles), int(runs), int(ttfb_off)
kinds = kinds.split()
R, notes = {}, []
for line in open(tsv):
    f = line.rstrip("\n").split("\t")
    if f[0] == "R":
        key = (f[1], f[2], f[3])
        R[key] = min(R.get(key, float("inf")), float(f[4]))  # best of the runs
    elif f[0] == "N":
        notes.append(f[1])
big_b = big_mb << 20
small_b = nfiles * 4096

def get(case, kind, system):
    return R.get((case, kind, system))

def fmt_rate(case, t):
    if t is None:
        return "-"
    if case.endswith("small"):
        return f"{nfiles / t:,.0f} files/s ({small_b / t / 1e6:,.1f} MB/s, {t:.2f} s)"
    return f"{big_b / t / 1e6:,.0f} MB/s ({t:.2f} s)"

REF = {
    ("push", "dir"): "cp -r + syncfs",
    ("pull", "dir"): "cp -r + syncfs",
    ("push", "grpc"): "curl WritePayload/file",
    ("pull", "grpc"): "curl ReadPayload/file + syncfs",
    ("push", "s3"): "curl PUT/file",
    ("pull", "s3"): "curl GET/file + syncfs",
}
print()
print(f"Transfers: {big_mb} MiB file; {nfiles:,} x 4 KiB files in 200 dirs; best of {runs} run(s); "
      f"spfs --jobs {jobs}, curl --parallel-max {jobs}")
print("ratio = spfs throughput / reference throughput (1.00 = as fast as the reference); the issue sets no target for transfers")
if "grpc" in kinds and grpc_reuse != "1":
    print("gRPC reference: curl < 8.0, one connection per call (curl/curl#10634)")
hdr = f"{'case':<11} {'kind':<5} {'spfs':<40} {'reference':<32} {'':<40} {'ratio':>6}"
print(hdr)
print("-" * len(hdr))
rows = []
for d in ("big", "small"):
    for op in ("push", "pull"):
        case = f"{op}_{d}"
        for k in kinds:
            s, r = get(case, k, "spfs"), get(case, k, "ref")
            if s is None:
                continue
            ratio = r / s if r else None
            rows.append(dict(case=case, kind=k, spfs_s=s, ref_s=r, reference=REF[(op, k)], ratio=ratio))
            print(f"{case:<11} {k:<5} {fmt_rate(case, s):<40} {REF[(op, k)]:<32} {fmt_rate(case, r):<40} "
                  f"{'-' if ratio is None else f'{ratio:.2f}x':>6}")
            if k == "dir" and get(case, k, "ref_nosync"):
                r0 = get(case, k, "ref_nosync")
                print(f"{'':<11} {'':<5} {'':<40} {'  (cp -r alone, no syncfs)':<32} {fmt_rate(case, r0):<40} {r0 / s:>5.2f}x")
            if k == "grpc" and get(case, "dir", "spfs"):
                sd = get(case, "dir", "spfs")
                print(f"{'':<11} {'':<5} {'':<40} {'  (spfs via the dir remote)':<32} {fmt_rate(case, sd):<40} {sd / s:>5.2f}x")

rt_rows = []
SYS = {"spfs": "ranged reads off (default)", "spfs_ranged": "ranged reads on"}
if readthrough == "1":
    print()
    print(f"Read-through via the VFS (bench/big only on the remote, local repository empty; first read of the "
          f"uncached {big_mb} MiB blob, and 4 KiB at {ttfb_off >> 20} MiB), best of {runs} run(s); "
          f"vfs.remote_ranged_reads off (the default) and on")
    print("the raw reads store nothing; a read-through stores the blob durably in the local repository, as a pull does")
    hdr = (f"{'case':<8} {'kind':<5} {'ranged':<7} {'spfs':<26} {'reference':<32} {'':<26} {'ratio':>7}  "
           f"{'target':<8} result")
    print(hdr)
    print("-" * len(hdr))
    for k in kinds:
        for sys_ in ("spfs", "spfs_ranged"):
            rg = "off" if sys_ == "spfs" else "on"
            s, r = get("rt_read", k, sys_), get("rt_read", k, "ref")
            if s is not None and r is not None:
                ratio = r / s  # throughput ratio
                ok = ratio >= 0.8
                refname = "curl GET of the object" if k == "s3" else "HTTP/2 ReadPayload, to last byte"
                print(f"{'rt_read':<8} {k:<5} {rg:<7} {fmt_rate('rt_read', s):<26} {refname:<32} "
                      f"{fmt_rate('rt_read', r):<26} {ratio:>6.2f}x  {'>= 0.8x':<8} {'PASS' if ok else 'MISS'}")
                rt_rows.append(dict(case="rt_read", kind=k, ranged_reads=rg, spfs_s=s, ref_s=r, ratio=ratio,
                                    target=">= 0.8x", result="PASS" if ok else "MISS"))
                p = get("pull_big", k, "spfs")
                if p and sys_ == "spfs":
                    print(f"{'':<8} {'':<5} {'':<7} {'':<26} {'  (spfs pull of the tag)':<32} "
                          f"{fmt_rate('rt_read', p):<26} {p / s:>6.2f}x")
        for sys_ in ("spfs", "spfs_ranged"):
            rg = "off" if sys_ == "spfs" else "on"
            s, r = get("rt_ttfb", k, sys_), get("rt_ttfb", k, "ref")
            if s is not None and r is not None:
                ratio = s / r  # time ratio
                ok = ratio <= 2
                refname = "curl -r (ranged GET)" if k == "s3" else "curl ReadPayload(off, 4096)*"
                print(f"{'rt_ttfb':<8} {k:<5} {rg:<7} {f'{s * 1e3:.1f} ms':<26} {refname:<32} {f'{r * 1e3:.1f} ms':<26} "
                      f"{ratio:>6.1f}x  {'<= 2x':<8} {'PASS' if ok else 'MISS'}")
                rt_rows.append(dict(case="rt_ttfb", kind=k, ranged_reads=rg, spfs_s=s, ref_s=r, ratio=ratio,
                                    target="<= 2x", result="PASS" if ok else "MISS"))
    if "grpc" in kinds:
        print("* until the response headers, which come with the 4 KiB (the call's trailers come ~40 ms later, see below)")
    print("details (seconds from just before open(2)):")
    for k in kinds:
        for sys_ in ("spfs", "spfs_ranged"):
            rg = "off" if sys_ == "spfs" else "on"
            g = lambda c, s=sys_: get(c, k, s)
            if g("rt_read") is not None:
                print(f"  {k:<4} ranged {rg:<3} full read: open {g('rt_read_open'):.3f}, first 1 MiB {g('rt_read_first'):.3f}, "
                      f"last byte {g('rt_read'):.3f}; whole `spfs run` {g('rt_read_run'):.3f}; "
                      f"read again {fmt_rate('rt_read', g('rt_read_again'))}")
            if g("rt_ttfb") is not None:
                stored = g("rt_ttfb_stored")
                complete = get("rt_ttfb_ref_complete", k, "ref") or get("rt_ttfb", k, "ref")
                print(f"  {k:<4} ranged {rg:<3} 4 KiB read: open {g('rt_ttfb_open') * 1e3:.1f} ms, first byte "
                      f"{g('rt_ttfb_first') * 1e3:.1f} ms; whole `spfs run` {g('rt_ttfb_run'):.3f} s; whole blob stored "
                      f"locally {'-' if stored is None else f'{stored:.2f} s'} after the open; reference: headers "
                      f"{get('rt_ttfb_ref_headers', k, 'ref') * 1e3:.1f} ms, complete {complete * 1e3:.1f} ms")
h, t = get("grpc_4k_headers", "grpc", "ref"), get("grpc_4k_total", "grpc", "ref")
if h is not None and t is not None:
    print()
    print(f"spfs server, one ReadPayload of 4 KiB by curl (best of 3): response headers after {h * 1e3:.1f} ms, "
          f"complete (trailers) after {t * 1e3:.1f} ms")
    if t - h > 0.02:
        print("  the end of a streamed response comes ~40 ms late: Nagle's algorithm on the server's socket meets "
              "the client's delayed ACK (the server does not set TCP_NODELAY on accepted connections); every "
              "streamed call that the client waits to finish (a ranged read, a small payload) pays it")
for n in notes:
    print("NOTE:", n)
if out:
    with open(out, "w") as f:
        json.dump({"big_mb": big_mb, "small_files": nfiles, "runs": runs, "jobs": int(jobs),
                   "transfers": rows, "read_through": rt_rows,
                   "all": {"|".join(k): v for k, v in R.items()}, "notes": notes}, f, indent=2)
    print(f"JSON written to {out}")
EOF
