#!/usr/bin/env bash
# Benchmark of reading through the VFS service (not a test; not run by CI).
#
# Builds release binaries, then in a private world under /var/tmp (repo,
# mount point, control socket, log, cgroup root <cgroup2>/spfs-bench-$$):
#   - one big file of random bytes (BENCH_BIG_MB, default 1024) and
#     BENCH_SMALL_FILES (default 20,000) files of 4 KiB in 200 directories;
#   - the same trees committed as bench/big and bench/small, and packed into
#     an uncompressed squashfs image (mksquashfs -noI -noD -noF -noX) mounted
#     with squashfuse (high-level libfuse, multi-threaded) as a second
#     reference. The source trees on local disk are the native reference.
# Every case is measured by crates/spfs-cli/examples/fsbench.rs for native,
# spfs (inside `spfs run`, path under the mount point) and squashfuse, both
# pinned (reader, service and squashfuse all on CPU 0) and unpinned:
#   seqread_cold   sequential read of the big file, page cache dropped first,
#                  best of BENCH_COLD_RUNS (default 5)
#   openread_warm  open+read+close of every small file, 1 warm-up, best of 5
#   statwalk_warm  readdir+lstat of the small tree, 1 warm-up, best of 5;
#                  find-like (each directory entered by name relative to
#                  its parent); statwalk_warm_abs: each directory opened by
#                  its full path (os.walk-like)
#   statwalk_cold  the same, page cache dropped first, best of BENCH_COLD_RUNS
#   startup        `spfs run bench/small -- true` (hyperfine, mean of 30)
# plus the route_cost and view_memory examples of spfs-fuse. The layout is
# the same everywhere: <base>/small/dNNN/fNNN and <base>/big/big.bin, so
# every path crosses exactly one name under the spfs mount root (never
# cached by the kernel, by design).
#
# Usage (root): bench/vfs.sh     BENCH_JSON=out.json to also write JSON.
set -euo pipefail

cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
	echo "bench/vfs.sh must run as root (FUSE passthrough, cgroups, drop_caches)" >&2
	exit 1
fi
BIG_MB=${BENCH_BIG_MB:-1024}
SMALL_FILES=${BENCH_SMALL_FILES:-20000}
COLD_RUNS=${BENCH_COLD_RUNS:-5}
NDIRS=200
PER_DIR=$(((SMALL_FILES + NDIRS - 1) / NDIRS))
NPROC=$(nproc)
ALLCPUS="0-$((NPROC - 1))"

echo "== building (release)"
cargo build --release -q -p spfs-cli -p spfs-fuse --examples --bins
T="$PWD/target/release"
SPFS="$T/spfs"
SPFS_VFS="$T/spfs-vfs"
FSBENCH="$T/examples/fsbench"
ROUTE_COST="$T/examples/route_cost"
VIEW_MEMORY="$T/examples/view_memory"
for b in "$SPFS" "$SPFS_VFS" "$FSBENCH" "$ROUTE_COST" "$VIEW_MEMORY"; do
	[ -x "$b" ] || { echo "missing $b" >&2; exit 1; }
done
for c in taskset squashfuse mksquashfs hyperfine openssl python3 fusermount3; do
	command -v "$c" >/dev/null || { echo "missing $c (run scripts/setup.sh --bench)" >&2; exit 1; }
done

CG2=$(awk '$9 == "cgroup2" { print $5; exit }' /proc/self/mountinfo)
[ -n "$CG2" ] || { echo "no cgroup2 mount" >&2; exit 1; }

W=$(mktemp -d /var/tmp/spfs-vfs-bench.XXXXXX)
chmod 755 "$W"
MNT="$W/mnt"
SQ="$W/sq"
CGROOT="$CG2/spfs-bench-$$"
mkdir -p "$MNT" "$SQ"
: >"$W/empty.toml"
export SPFS_CONFIG="$W/empty.toml" HOME="$W" \
	SPFS_STORAGE_ROOT="$W/repo" SPFS_VFS_MOUNTPOINT="$MNT" \
	SPFS_VFS_LISTEN="unix:$W/vfs.sock" SPFS_VFS_LOG_FILE="$W/vfs.log" \
	SPFS_VFS_CGROUP_ROOT="$CGROOT" SPFS_VFS_TOKEN_FILE="$W/token"
unset SPFS_RUNTIME

SVC_PID=""
SQ_PID=""
TRACEFS_MOUNTED=""
is_mounted() { awk -v m="$1" '$5 == m { f = 1 } END { exit !f }' /proc/self/mountinfo; }
cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	if [ -n "$SVC_PID" ]; then
		timeout 15 "$SPFS_VFS" service --stop >/dev/null 2>&1
		for _ in $(seq 100); do kill -0 "$SVC_PID" 2>/dev/null || break; sleep 0.05; done
		kill -9 "$SVC_PID" 2>/dev/null
		wait "$SVC_PID" 2>/dev/null
	fi
	if [ -n "$SQ_PID" ]; then
		fusermount3 -u "$SQ" 2>/dev/null
		for _ in $(seq 100); do kill -0 "$SQ_PID" 2>/dev/null || break; sleep 0.05; done
		kill -9 "$SQ_PID" 2>/dev/null
		wait "$SQ_PID" 2>/dev/null
	fi
	for m in "$MNT" "$SQ"; do
		for _ in 1 2 3; do is_mounted "$m" && umount -l "$m" 2>/dev/null; done
	done
	if [ -d "$CGROOT" ]; then
		for d in "$CGROOT"/*/; do [ -d "$d" ] && echo 1 >"$d/cgroup.kill" 2>/dev/null; done
		for _ in $(seq 100); do
			for d in "$CGROOT"/*/; do [ -d "$d" ] && rmdir "$d" 2>/dev/null; done
			rmdir "$CGROOT" 2>/dev/null && break
			sleep 0.05
		done
	fi
	[ -n "$TRACEFS_MOUNTED" ] && umount /sys/kernel/tracing 2>/dev/null
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

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# metric NAME: the value of line "NAME value unit" on stdin.
metric() { awk -v n="$1" '$1 == n { print $2; f = 1 } END { exit !f }'; }
status_field() { "$SPFS_VFS" status --json | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
requests() { status_field requests; }

echo "== load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the CPUs skews the results)"
echo "== preparing data in $W ($NPROC cores): ${BIG_MB} MiB file, $SMALL_FILES x 4 KiB files"
mkdir -p "$W/src-big/big" "$W/src-small/small"
openssl rand -out "$W/src-big/big/big.bin" $((BIG_MB << 20))
openssl rand -out "$W/rand.bin" $((SMALL_FILES * 4096))
n=0
for d in $(seq 0 $((NDIRS - 1))); do
	[ $n -ge "$SMALL_FILES" ] && break
	c=$((SMALL_FILES - n < PER_DIR ? SMALL_FILES - n : PER_DIR))
	dir=$(printf '%s/src-small/small/d%03d' "$W" "$d")
	mkdir -p "$dir"
	dd if="$W/rand.bin" bs=4096 skip=$n count=$c status=none | split -b 4096 -a 3 -d - "$dir/f"
	n=$((n + c))
done
rm -f "$W/rand.bin"
[ "$(find "$W/src-small/small" -type f | wc -l)" = "$SMALL_FILES" ] || { echo "data generation failed" >&2; exit 1; }

echo "== committing"
"$SPFS" init repo "$W/repo" >/dev/null
"$SPFS" commit --path "$W/src-big" -t bench/big >/dev/null
"$SPFS" commit --path "$W/src-small" -t bench/small >/dev/null

echo "== squashfs image (uncompressed: -noI -noD -noF -noX) + squashfuse"
mksquashfs "$W/src-small/small" "$W/src-big/big" "$W/bench.sqfs" \
	-noI -noD -noF -noX -no-progress -quiet -processors "$NPROC" >/dev/null
squashfuse -f "$W/bench.sqfs" "$SQ" 2>"$W/squashfuse.err" &
SQ_PID=$!
for _ in $(seq 200); do is_mounted "$SQ" && break; sleep 0.05; done
is_mounted "$SQ" || { cat "$W/squashfuse.err" >&2; echo "squashfuse did not mount" >&2; exit 1; }
sync

echo "== starting the VFS service"
"$SPFS_VFS" service >"$W/service.out" 2>&1 &
SVC_PID=$!
for _ in $(seq 300); do
	"$SPFS_VFS" status >/dev/null 2>&1 && break
	kill -0 "$SVC_PID" 2>/dev/null || { cat "$W/service.out" "$W/vfs.log" >&2; exit 1; }
	sleep 0.05
done
[ "$(status_field pid)" = "$SVC_PID" ] || { echo "service did not start" >&2; exit 1; }
"$SPFS" run bench/small -- "$FSBENCH" statwalk "$MNT/small" >/dev/null # first use
PASSTHROUGH=$(status_field passthrough)
echo "   service pid $SVC_PID, passthrough: $PASSTHROUGH"

# base_of SYSTEM REL: the directory REL is under for SYSTEM.
base_of() {
	case $1 in
	native) case $2 in big/*) echo "$W/src-big" ;; *) echo "$W/src-small" ;; esac ;;
	spfs) echo "$MNT" ;;
	squashfuse) echo "$SQ" ;;
	esac
}
tag_of() { case $1 in */big/*) echo bench/big ;; *) echo bench/small ;; esac; }
set_mode() {
	local cpus=$ALLCPUS
	[ "$1" = pinned ] && cpus=0
	taskset -a -p -c "$cpus" "$SVC_PID" >/dev/null
	taskset -a -p -c "$cpus" "$SQ_PID" >/dev/null
}
# fsb SYSTEM MODE SUBCOMMAND REL [ARGS...]: run fsbench on <base>/REL.
fsb() {
	local sys=$1 mode=$2 sub=$3 rel=$4
	shift 4
	local pin=()
	[ "$mode" = pinned ] && pin=(taskset -c 0)
	local path
	path="$(base_of "$sys" "$rel")/$rel"
	if [ "$sys" = spfs ]; then
		"${pin[@]}" "$SPFS" run "$(tag_of "/$rel")" -- "$FSBENCH" "$sub" "$path" "$@"
	else
		"${pin[@]}" "$FSBENCH" "$sub" "$path" "$@"
	fi
}

# better max|min OLD NEW: the better of two values (OLD may be empty).
better() {
	awk -v a="$2" -v b="$3" -v h="$1" \
		'BEGIN { if (a == "" || (h == "max" ? b + 0 > a + 0 : b + 0 < a + 0)) print b; else print a }'
}

declare -A R # R[case|mode|system] = value
declare -A REQ # service request counter during the spfs runs: REQ[case|mode]
SYSTEMS=(native spfs squashfuse)
MODES=(pinned unpinned)
for mode in "${MODES[@]}"; do
	set_mode "$mode"
	echo "== $mode"
	# Cold cases, interleaved (every repetition measures each system once,
	# so a slow spell of the disk or of a neighbour hits all of them); the
	# best of COLD_RUNS, each after dropping the page cache.
	for sys in "${SYSTEMS[@]}"; do
		R[seqread_cold|$mode|$sys]=""
		R[statwalk_cold|$mode|$sys]=""
	done
	REQ[seqread_cold|$mode]=0
	REQ[statwalk_cold|$mode]=0
	for _ in $(seq "$COLD_RUNS"); do
		for sys in "${SYSTEMS[@]}"; do
			r0=$(requests)
			drop_caches
			v=$(fsb "$sys" "$mode" seqread big/big.bin | metric seqread_mbps)
			R[seqread_cold|$mode|$sys]=$(better max "${R[seqread_cold|$mode|$sys]}" "$v")
			r1=$(requests)
			drop_caches
			v=$(fsb "$sys" "$mode" statwalk small | metric statwalk_ms)
			R[statwalk_cold|$mode|$sys]=$(better min "${R[statwalk_cold|$mode|$sys]}" "$v")
			r2=$(requests)
			if [ "$sys" = spfs ]; then
				REQ[seqread_cold|$mode]=$((REQ[seqread_cold|$mode] + r1 - r0))
				REQ[statwalk_cold|$mode]=$((REQ[statwalk_cold|$mode] + r2 - r1))
			fi
		done
	done
	# Warm cases: one untimed pass, then the best of 5, in one process.
	for sys in "${SYSTEMS[@]}"; do
		r0=$(requests)
		R[openread_warm|$mode|$sys]=$(fsb "$sys" "$mode" openread small --warmup 1 --runs 5 | metric openread_us_per_file)
		r1=$(requests)
		R[statwalk_warm|$mode|$sys]=$(fsb "$sys" "$mode" statwalk small --warmup 1 --runs 5 | metric statwalk_ms)
		r2=$(requests)
		R[statwalk_warm_abs|$mode|$sys]=$(fsb "$sys" "$mode" statwalk small --warmup 1 --runs 5 --abs | metric statwalk_ms)
		r3=$(requests)
		if [ "$sys" = spfs ]; then
			REQ[openread_warm|$mode]=$((r1 - r0))
			REQ[statwalk_warm|$mode]=$((r2 - r1))
			REQ[statwalk_warm_abs|$mode]=$((r3 - r2))
		fi
		printf '   %-10s seqread %7s MB/s  openread %6s us/file  statwalk warm %7s ms (abs %7s)  cold %7s ms\n' \
			"$sys" "${R[seqread_cold|$mode|$sys]}" "${R[openread_warm|$mode|$sys]}" \
			"${R[statwalk_warm|$mode|$sys]}" "${R[statwalk_warm_abs|$mode|$sys]}" "${R[statwalk_cold|$mode|$sys]}"
	done
	pin=""
	[ "$mode" = pinned ] && pin="taskset -c 0 "
	hyperfine -N --style none --warmup 3 --runs 30 --export-json "$W/start-$mode.json" \
		"${pin}true" "${pin}$SPFS run bench/small -- true" >/dev/null 2>&1 </dev/null
	read -r t_native t_spfs < <(python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['results']; print(*(x['mean']*1e3 for x in r))" "$W/start-$mode.json")
	R[startup|$mode|native]=$(printf '%.2f' "$t_native")
	R[startup|$mode|spfs]=$(printf '%.2f' "$t_spfs")
	echo "   startup: true ${R[startup|$mode|native]} ms, spfs run ${R[startup|$mode|spfs]} ms"
	out=$(${pin}"$ROUTE_COST")
	R[route_first|$mode|spfs]=$(metric route_first_request_ns <<<"$out")
	R[route_known|$mode|spfs]=$(metric route_known_process_ns <<<"$out")
	echo "   $(tr '\n' ' ' <<<"$out")"
done
out=$("$VIEW_MEMORY")
R[view_memory|-|spfs]=$(metric view_bytes_per_entry <<<"$out")
echo "== $(tr '\n' ' ' <<<"$out")"

# Diagnostics (pinned). FUSE requests of one warm pass from the service's
# counter (which counts lookup, getattr, open, opendir and readdir, not the
# releases): the difference of runs with 3 and 1 timed passes, halved. And,
# when perf and the kernel's fuse tracepoints are there, every request of
# one warm pass by opcode, filtered to our mount's connection.
set_mode pinned
diag() { # diag SUB: counted requests of one warm pass
	local a b c
	a=$(requests); fsb spfs pinned "$1" small --warmup 1 --runs 1 >/dev/null
	b=$(requests); fsb spfs pinned "$1" small --warmup 1 --runs 3 >/dev/null
	c=$(requests)
	echo $((((c - b) - (b - a)) / 2))
}
D_OPEN=$(diag openread)
D_STAT=$(diag statwalk)
TRACE=""
if command -v perf >/dev/null; then
	if [ ! -d /sys/kernel/tracing/events/fuse ] && [ -d /sys/kernel/tracing ] &&
		! is_mounted /sys/kernel/tracing && mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null; then
		TRACEFS_MOUNTED=1
	fi
	if [ -d /sys/kernel/tracing/events/fuse/fuse_request_send ]; then
		CONN=$(awk -v m="$MNT" '$5 == m { split($3, d, ":"); print d[2] }' /proc/self/mountinfo)
		# trace_pass NAME SUB: opcodes of one warm pass of SUB (after an
		# untimed pass in the same runtime, so the view is warm).
		trace_pass() {
			taskset -c 0 "$SPFS" run bench/small -- bash -c \
				'"$1" "$2" "$3" $6 >/dev/null && perf record -q -a -e fuse:fuse_request_send --filter "connection == $4" -o "$5" -- taskset -c 0 "$1" "$2" "$3" $6 >/dev/null 2>&1' \
				_ "$FSBENCH" "$2" "$MNT/small" "$CONN" "$W/trace-$1.data" "${3:-}"
			perf script -i "$W/trace-$1.data" -F trace 2>/dev/null | grep -o 'FUSE_[A-Z]*' | sort | uniq -c |
				awk -v n="$1" '{ printf "%s %s %s\n", n, $2, $1 }'
		}
		TRACE=$({
			trace_pass statwalk statwalk
			trace_pass statwalk_abs statwalk --abs
			trace_pass openread openread
		} || true)
	fi
fi

echo "== load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

# Results: table and JSON.
{
	for k in "${!R[@]}"; do printf 'R\t%s\t%s\n' "$k" "${R[$k]}"; done
	for k in "${!REQ[@]}"; do printf 'Q\t%s\t%s\n' "$k" "${REQ[$k]}"; done
	printf 'D\topenread\t%s\nD\tstatwalk\t%s\n' "$D_OPEN" "$D_STAT"
	[ -n "$TRACE" ] && while read -r pass op n; do printf 'T\t%s|%s\t%s\n' "$pass" "$op" "$n"; done <<<"$TRACE"
} >"$W/results.tsv"
python3 - "$W/results.tsv" "${BENCH_JSON:-}" "$PASSTHROUGH" "$SMALL_FILES" "$BIG_MB" <<'EOF'
import json, sys
tsv, out, passthrough, nfiles, big_mb = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
R, Q, D, TR = {}, {}, {}, {}
for line in open(tsv):
    kind, key, val = line.rstrip("\n").split("\t")
    if kind == "R":
        R[tuple(key.split("|"))] = float(val)
    elif kind == "Q":
        Q[tuple(key.split("|"))] = int(val)
    elif kind == "T":
        TR[tuple(key.split("|"))] = int(val)
    else:
        D[key] = int(val)
# case: (unit, kind, target, description); kind: thr = throughput ratio >=,
# time = time ratio <=, abs = spfs value <= target.
CASES = [
    ("seqread_cold", "MB/s", "thr", 0.9, "cold sequential read of the big file"),
    ("openread_warm", "us/file", "time", 2.0, "warm open+read+close of each small file"),
    ("statwalk_warm", "ms", "time", 1.2, "warm readdir+lstat of the small tree (find-like, relative)"),
    ("statwalk_warm_abs", "ms", "time", 1.2, "the same, each directory opened by its full path (os.walk-like)"),
    ("statwalk_cold", "ms", "time", 1.5, "cold readdir+lstat of the small tree"),
    ("startup", "ms", "abs", 30.0, "spfs run bench/small -- true (native: true)"),
    ("route_known", "ns", "abs", 1000.0, "routing a request of a known process"),
    ("route_first", "ns", "info", None, "routing the first request of a thread"),
    ("view_memory", "B/entry", "abs", 256.0, "view memory per entry (1,000,000 entries)"),
]
rows = []
for case, unit, kind, target, desc in CASES:
    for mode in ("pinned", "unpinned", "-"):
        if (case, mode, "spfs") not in R:
            continue
        nat = R.get((case, mode, "native"))
        spfs = R[(case, mode, "spfs")]
        sq = R.get((case, mode, "squashfuse"))
        ratio = None
        if nat:
            ratio = spfs / nat
        if kind == "thr":
            ok, tgt = ratio >= target, f">= {target}x"
        elif kind == "time":
            ok, tgt = ratio <= target, f"<= {target}x"
        elif kind == "abs":
            ok, tgt = spfs <= target, f"<= {target:g} {unit}"
        else:
            ok, tgt = None, "-"
        rows.append(dict(case=case, mode=mode, unit=unit, native=nat, spfs=spfs, squashfuse=sq,
                         ratio=ratio, target=tgt, result=None if ok is None else ("PASS" if ok else "MISS"),
                         spfs_fuse_requests=Q.get((case, mode)), description=desc))
def fmt(v):
    if v is None:
        return "-"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.2f}" if abs(v) < 100 else f"{v:.1f}" if abs(v) < 1e4 else f"{v:.0f}"
hdr = ("case", "mode", "unit", "native", "spfs", "squashfuse", "spfs/native", "target", "result")
print()
print("%-14s %-9s %-8s %10s %10s %10s %11s %-12s %s" % hdr)
for r in rows:
    print("%-14s %-9s %-8s %10s %10s %10s %11s %-12s %s" % (
        r["case"], r["mode"], r["unit"], fmt(r["native"]), fmt(r["spfs"]), fmt(r["squashfuse"]),
        "-" if r["ratio"] is None else f"{r['ratio']:.2f}", r["target"], r["result"] or "-"))
print()
print(f"passthrough: {passthrough}; files: {nfiles}; big file: {big_mb} MiB")
print("service request counter (lookup/getattr/open/opendir/readdir; releases not counted) during all")
print("the spfs runs of a case (cold: all repetitions; warm: file collection + warm-up + 5 timed passes):")
for (case, mode), n in sorted(Q.items()):
    print(f"  {case:<14} {mode:<9} {n}")
per = {k: v / nfiles for k, v in D.items()}
print(f"one warm pass, pinned, by the counter: openread {D['openread']} ({per['openread']:.2f}/file), "
      f"statwalk {D['statwalk']} ({per['statwalk']:.3f}/file)")
if TR:
    print("one warm pass, pinned, every FUSE request by opcode (kernel tracepoint fuse_request_send):")
    totals = {}
    for p in ("statwalk", "statwalk_abs", "openread"):
        ops = {op: n for (pp, op), n in TR.items() if pp == p}
        totals[p] = sum(ops.values())
        what = " (includes the file collection walk = one statwalk_abs)" if p == "openread" else ""
        print(f"  {p}{what}: {totals[p]} = {totals[p] / nfiles:.2f}/file: " +
              ", ".join(f"{op[5:]} {n}" for op, n in sorted(ops.items(), key=lambda x: -x[1])))
    if totals.get("statwalk") and totals.get("statwalk_abs") and totals.get("openread"):
        per["statwalk"] = totals["statwalk"] / nfiles
        per["statwalk_abs"] = totals["statwalk_abs"] / nfiles
        per["openread"] = (totals["openread"] - totals["statwalk_abs"]) / nfiles
print("extra time of spfs over native divided by the FUSE requests of a warm pass:")
for case, key in (("openread_warm", "openread"), ("statwalk_warm", "statwalk"),
                  ("statwalk_warm_abs", "statwalk_abs")):
    for mode in ("pinned", "unpinned"):
        n, s = R.get((case, mode, "native")), R.get((case, mode, "spfs"))
        if n is None or not per.get(key):
            continue
        extra_us = (s - n) * (1 if case == "openread_warm" else 1e3 / nfiles)
        if extra_us <= 0:
            print(f"  {case} {mode}: spfs is not slower than native (noise)")
            continue
        print(f"  {case} {mode}: spfs - native = {extra_us:.2f} us/file"
              f" = {extra_us / per[key]:.1f} us per FUSE request")
if out:
    with open(out, "w") as f:
        json.dump({"passthrough": passthrough == "True", "small_files": nfiles, "big_mb": big_mb,
                   "rows": rows, "warm_pass_requests_counter": D,
                   "warm_pass_requests_traced": {f"{p}|{op}": n for (p, op), n in TR.items()}}, f, indent=2)
    print(f"JSON written to {out}")
EOF
