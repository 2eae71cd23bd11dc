#!/usr/bin/env bash
# Benchmark of editable runtimes (not a test; not run by CI): writing in
# `spfs run --edit - -- CMD` against the same work on local disk, and
# `spfs commit layer` of what was written.
#
# Builds release binaries (CARGO_TARGET_DIR honoured; BENCH_NO_BUILD=1
# uses the binaries there as they are), then in a private world under
# /var/tmp (repository, mount point, control socket, log, cgroup root
# <cgroup2>/spfs-bench-edit-$$), all removed on exit, even on failure. The
# native work goes to a directory beside the repository, on the same
# filesystem as the runtime's upper area (<repo>/edits/<runtime>/).
#
# Cases, each measured natively and inside an editable runtime of the empty
# spec (`spfs run --edit -`), with the same tool and the same path layout:
#   seqwrite_fsync  dd if=/dev/zero of=FILE bs=1M count=BENCH_SEQ_MB
#                   (default 1024) conv=fsync; MB/s; target >= 0.8x
#   seqwrite        the same without conv=fsync (page cache; the dirty
#                   pages are flushed, untimed, before the next case);
#                   MB/s; target >= 0.8x
#   create          BENCH_FILES (default 20,000) files of 4 KiB in
#                   BENCH_DIRS (default 10) directories, by
#                   bench/edit_tool.py: os.open(O_CREAT|O_EXCL) + one
#                   os.write + os.close per file, by full path (every open
#                   crosses one name under the mount root); files/s;
#                   target >= 0.5x
#   commit          `spfs commit layer` of those files inside the runtime
#                   (the service stores them); native: `spfs commit --path`
#                   of the native copy into the same repository (for
#                   reference); files/s; target >= 10,000 files/s for the
#                   runtime's commit (the ratio is against commit --path).
#                   Natively, deleting the files (rm -rf + sync) is timed
#                   too, for reference: the runtime's commit deletes its
#                   upper copies once they are stored, within the request
# Every file's bytes are new (random per run), so no commit finds its
# payloads stored already; everything is flushed (sync) before each timed
# command. Ratios are native time / spfs time (1.00: as fast as the local
# disk; for commit: as fast as `spfs commit --path`).
#
# Deleted inodes: `spfs commit layer` empties the runtime's upper area (it
# deletes what it stored) and a runtime's end removes its upper area. On an
# ext4 without a journal (common for VM images), for a minute or more after
# a deletion, every inode allocation skips the recently deleted inodes
# whose inode table block is still cached (ext4 recently_deleted()), one
# by one, so creating files right after thousands were deleted costs up to
# ~1 ms of CPU per file (quadratic), for whoever creates them next: a
# native create after a spfs round as much as a spfs one. So before each
# timed create and commit, everything is written out and the caches are
# dropped (BENCH_DROP=0: not dropped), natively and in the runtime alike;
# the files to commit are then read back once (the runtime's through the
# mount), so the commit reads them from the page cache, as right after
# writing them.
#
# Each case runs in each mode (BENCH_MODES, default "bound routed"): bound
# (SPFS_VFS_BIND_VIEWS=auto as root: the view bound in the runtime's own
# mount namespace) and routed (=never: through the shared mount root, every
# request routed by process); the mode a runtime really got is checked.
# Each is measured pinned (the tool, `spfs run` and the service on CPU 0)
# and unpinned (BENCH_PINNING, default "pinned unpinned"), BENCH_REPS
# (default 3) times, interleaved (native, then each mode, in one round);
# the median is reported, with the service's CPU time (all threads) and the
# tool's. Last (BENCH_TRACE=1, default), one unpinned run of each mode
# counts every FUSE request of seqwrite (BENCH_TRACE_MB, default 256 MiB)
# and create by opcode (kernel tracepoint fuse:fuse_request_send through
# perf, tracefs mounted if needed), and samples the service's CPU during
# that create (perf record -p): its share by binary, its hottest symbols.
#
# --quick (or BENCH_QUICK=1): 128 MiB, 2,000 files (under two minutes on a
# 2-vCPU VM; the full run: about ten); BENCH_JSON=F also writes every
# result to F.
#
# Usage (root): bench/edit.sh [--quick]
#   BENCH_MODES=bound BENCH_PINNING=unpinned bench/edit.sh --quick
set -euo pipefail

cd "$(dirname "$0")/.."
. bench/lib.sh
bench_options "FUSE, cgroups, mount namespaces" "$@"
SEQ_MB=${BENCH_SEQ_MB:-$(quick 128 1024)}
FILES=${BENCH_FILES:-$(quick 2000 20000)}
DIRS=${BENCH_DIRS:-10}
REPS=${BENCH_REPS:-3}
TRACE=${BENCH_TRACE:-1}
export BENCH_DROP=${BENCH_DROP:-1}
TRACE_MB=${BENCH_TRACE_MB:-$((SEQ_MB < 256 ? SEQ_MB : 256))}
read -r -a MODES <<<"${BENCH_MODES:-bound routed}"
read -r -a PINS <<<"${BENCH_PINNING:-pinned unpinned}"
for m in "${MODES[@]}"; do case $m in bound | routed) ;; *) echo "BENCH_MODES: unknown mode $m (bound, routed)" >&2; exit 2 ;; esac; done
for p in "${PINS[@]}"; do case $p in pinned | unpinned) ;; *) echo "BENCH_PINNING: unknown $p (pinned, unpinned)" >&2; exit 2 ;; esac; done
[ ${#MODES[@]} -gt 0 ] && [ ${#PINS[@]} -gt 0 ] || { echo "empty BENCH_MODES or BENCH_PINNING" >&2; exit 2; }
[ "$FILES" -ge "$DIRS" ] && [ "$DIRS" -ge 1 ] && [ "$DIRS" -le 100 ] || { echo "BENCH_FILES >= BENCH_DIRS, 1 <= BENCH_DIRS <= 100" >&2; exit 2; }
NPROC=$(nproc)
ALLCPUS="0-$((NPROC - 1))"

T="${CARGO_TARGET_DIR:-$PWD/target}/release"
if [ -z "${BENCH_NO_BUILD:-}" ]; then
	echo "== building (release, $T)"
	cargo build --release -q -p spfs-cli --bins
fi
SPFS="$T/spfs"
SPFS_VFS="$T/spfs-vfs"
TOOL="$PWD/bench/edit_tool.py"
for b in "$SPFS" "$SPFS_VFS"; do [ -x "$b" ] || { echo "missing $b" >&2; exit 1; }; done
for c in taskset dd python3 sync; do command -v "$c" >/dev/null || { echo "missing $c" >&2; exit 1; }; done
# The interpreter itself (not a wrapper such as a pyenv shim).
PY=$(python3 -c 'import os, sys; print(os.path.realpath(sys.executable))')
CG2=$(awk '$9 == "cgroup2" { print $5; exit }' /proc/self/mountinfo)
[ -n "$CG2" ] || { echo "no cgroup2 mount" >&2; exit 1; }
[ -e /dev/fuse ] || { echo "no /dev/fuse" >&2; exit 1; }

W=$(mktemp -d /var/tmp/spfs-edit-bench.XXXXXX)
chmod 755 "$W"
MNT="$W/mnt"
NAT="$W/native" # the native side: beside the repository
CGROOT="$CG2/spfs-bench-edit-$$"
mkdir -p "$MNT" "$NAT"
bench_world_env "$W" "$MNT" "$CGROOT"
RES="$W/results.tsv" # every result, one line each, for the report at the end
: >"$RES"

SVC_PID=""
TRACEFS_MOUNTED=""
cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	if [ -n "$SVC_PID" ]; then
		timeout 15 "$SPFS_VFS" service --stop >/dev/null 2>&1
		stop_pid "$SVC_PID" wait
	fi
	for _ in 1 2 3; do is_mounted "$MNT" && umount -l "$MNT" 2>/dev/null; done
	remove_cgroups "$CGROOT"
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

status_field() { "$SPFS_VFS" status --json | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
bind_of() { case $1 in bound) echo auto ;; *) echo never ;; esac; }
set_pin() {
	local cpus=$ALLCPUS
	[ "$1" = pinned ] && cpus=0
	taskset -a -p -c "$cpus" "$SVC_PID" >/dev/null
}
pre_of() { [ "$1" = pinned ] && echo "taskset -c 0" || true; }

echo "== load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the CPUs skews the results)"
echo "== $W on $(findmnt -no FSTYPE -T "$W") ($(findmnt -no SOURCE -T "$W")), $NPROC cores; ${SEQ_MB} MiB sequential writes; $FILES x 4 KiB files in $DIRS directories; $REPS repetitions"
"$SPFS" init repo "$W/repo" >/dev/null
[ "$(stat -c %d "$W/repo")" = "$(stat -c %d "$NAT")" ] || { echo "the native directory is not on the repository's filesystem" >&2; exit 1; }

# The service (vfs defaults), started once for the whole run.
"$SPFS_VFS" service >"$W/service.out" 2>&1 &
SVC_PID=$!
for _ in $(seq 300); do
	"$SPFS_VFS" status >/dev/null 2>&1 && break
	kill -0 "$SVC_PID" 2>/dev/null || { cat "$W/service.out" "$W/vfs.log" >&2; exit 1; }
	sleep 0.05
done
[ "$(status_field pid)" = "$SVC_PID" ] || { echo "service did not start" >&2; exit 1; }
CONN=$(awk -v m="$MNT" '$5 == m { split($3, d, ":"); print d[2] }' /proc/self/mountinfo)
echo "   service pid $SVC_PID, FUSE connection $CONN, passthrough: $(status_field passthrough)"
# The service holds a descriptor per file created in an editable runtime
# until the kernel forgets the file (creates are not held to the bound of
# kept upper files), so a runtime cannot create more files than the
# service's open file limit allows: fewer files then, or the creates fail
# with EMFILE (the report says so).
NOFILE=$(awk '/^Max open files/ { print $4 }' "/proc/$SVC_PID/limits")
if [ "$NOFILE" != unlimited ]; then
	ROOM=$((NOFILE - $(find "/proc/$SVC_PID/fd" -mindepth 1 | wc -l) - 500))
	if [ "$FILES" -gt "$ROOM" ]; then
		echo "   NOTE: the service may open $NOFILE files (hard limit) and holds one per created file: $FILES files cannot be created in one runtime; $((ROOM / 1000 * 1000)) instead"
		printf 'L\t%s\t%s\t%s\n' "$NOFILE" "$FILES" "$((ROOM / 1000 * 1000))" >>"$RES"
		FILES=$((ROOM / 1000 * 1000))
		[ "$FILES" -ge "$DIRS" ] || { echo "no room for files" >&2; exit 1; }
	fi
fi

# The mode every runtime really gets, and a first use.
HOST_NS=$(readlink /proc/self/ns/mnt)
for mode in "${MODES[@]}"; do
	ns=$(SPFS_VFS_BIND_VIEWS=$(bind_of "$mode") "$SPFS" run --edit - -- sh -c 'readlink /proc/self/ns/mnt; echo x >"$1/probe"; cat "$1/probe" >/dev/null' _ "$MNT")
	got=routed
	[ "$ns" != "$HOST_NS" ] && got=bound
	printf 'M\t%s\t%s\n' "$mode" "$got" >>"$RES"
	if [ "$got" = "$mode" ]; then
		echo "   $mode: the runtime is in $([ "$got" = bound ] && echo "its own" || echo "the host's") mount namespace, as asked"
	else
		echo "   WARNING: $mode asked (SPFS_VFS_BIND_VIEWS=$(bind_of "$mode")) but the runtime is in $([ "$got" = bound ] && echo "its own" || echo "the host's") mount namespace: the $mode figures are $got mode's"
	fi
done

# The same sequence natively and in a runtime: ARGS py tool dir svc_pid
# seq_mb files dirs commit-command...; prints "CASE<TAB>measures" lines.
# Flushed (sync) before every timed command; the big file removed after
# each write.
SEQUENCE='py=$1 tool=$2 dir=$3 svc=$4 mb=$5 files=$6 dirs=$7; shift 7
	set -e
	# t CASE CMD...: CMD (the timed tool), its line tagged with CASE.
	t() { local c=$1 r; shift; r=$("$@") || exit 1; printf "%s\t%s\n" "$c" "$r"; }
	# Everything written out and, with BENCH_DROP, the caches dropped:
	# see "Deleted inodes" above.
	fresh() { sync; [ "$BENCH_DROP" = 0 ] || echo 3 >/proc/sys/vm/drop_caches; }
	sync
	t seqwrite_fsync "$py" "$tool" run "$svc" dd if=/dev/zero of="$dir/seq.bin" bs=1M count="$mb" conv=fsync status=none
	rm -f "$dir/seq.bin"; sync
	t seqwrite "$py" "$tool" run "$svc" dd if=/dev/zero of="$dir/seq.bin" bs=1M count="$mb" status=none
	sync; rm -f "$dir/seq.bin"
	fresh
	t create "$py" "$tool" create "$dir/c" "$files" "$dirs" "$svc"
	fresh
	find "$dir/c" -type f -print0 | xargs -0 cat >/dev/null
	sync
	t commit "$py" "$tool" run "$svc" "$@"
	n=$(find "$dir/c" -type f | wc -l)
	[ "$n" = "$files" ] || { echo "created $n files, not $files" >&2; exit 1; }
	if [ "$svc" = 0 ]; then
		# Natively, for reference: deleting them (a runtime commit deletes
		# its upper copies).
		fresh
		t delete "$py" "$tool" run 0 sh -c "rm -rf \"\$1\" && sync" _ "$dir/c"
	fi'

# measure SYSTEM PIN REP: one round of the sequence for SYSTEM (native,
# bound, routed); results to RES.
measure() {
	local sys=$1 pin=$2 rep=$3 out pre
	read -r -a pre <<<"$(pre_of "$pin")"
	if [ "$sys" = native ]; then
		local d="$NAT/$pin-$rep"
		mkdir -p "$d"
		out=$("${pre[@]}" bash -c "$SEQUENCE" _ "$PY" "$TOOL" "$d" 0 "$SEQ_MB" "$FILES" "$DIRS" \
			"$SPFS" commit --path "$d/c" 2>"$W/run.err") ||
			{ cat "$W/run.err" >&2; echo "native round failed" >&2; exit 1; }
	else
		out=$("${pre[@]}" env "SPFS_VFS_BIND_VIEWS=$(bind_of "$sys")" "$SPFS" run --edit - -- \
			bash -c "$SEQUENCE" _ "$PY" "$TOOL" "$MNT" "$SVC_PID" "$SEQ_MB" "$FILES" "$DIRS" \
			"$SPFS" commit layer 2>"$W/run.err") ||
			{ cat "$W/run.err" >&2; echo "$sys round failed" >&2; exit 1; }
	fi
	local line="" c v
	while IFS=$'\t' read -r c v; do
		[ -n "$c" ] || continue
		# elapsed_s=E svc_cpu_s=S own_cpu_s=O [svc_fds=N]
		read -r e s o f <<<"$(sed 's/[a-z_]*=//g' <<<"$v")"
		printf 'R\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$c" "$sys" "$pin" "$rep" "$e" "$s" "$o" >>"$RES"
		[ -n "${f:-}" ] && printf 'F\t%s\t%s\n' "$sys" "$f" >>"$RES"
		line+=" $c $(printf '%.3f' "$e") s;"
	done <<<"$out"
	printf '   %-7s%s\n' "$sys" "$line"
}

for pin in "${PINS[@]}"; do
	set_pin "$pin"
	for rep in $(seq "$REPS"); do
		echo "== $pin, round $rep of $REPS"
		measure native "$pin" "$rep"
		# The modes in turn, first one then the other.
		if [ $((rep % 2)) = 1 ]; then order=("${MODES[@]}"); else order=(); for ((i = ${#MODES[@]} - 1; i >= 0; i--)); do order+=("${MODES[$i]}"); done; fi
		for mode in "${order[@]}"; do measure "$mode" "$pin" "$rep"; done
	done
done
set_pin unpinned

# FUSE requests by opcode, and where the service's time goes in create.
TRACING=""
if [ "$TRACE" = 1 ] && command -v perf >/dev/null; then
	if [ ! -d /sys/kernel/tracing/events/fuse ] && [ -d /sys/kernel/tracing ] &&
		! is_mounted /sys/kernel/tracing && mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null; then
		TRACEFS_MOUNTED=1
	fi
	[ -d /sys/kernel/tracing/events/fuse/fuse_request_send ] && TRACING=1
	[ -n "$TRACING" ] || echo "== no fuse:fuse_request_send tracepoint: no request counts"
fi
if [ -n "$TRACING" ]; then
	TRACE_SCRIPT='py=$1 tool=$2 mnt=$3 conn=$4 mb=$5 files=$6 dirs=$7 out=$8 svc=$9
		set -e
		sync
		perf record -q -a -m 1024 -e fuse:fuse_request_send --filter "connection == $conn" -o "$out.seq" -- \
			dd if=/dev/zero of="$mnt/seq.bin" bs=1M count="$mb" status=none 2>/dev/null
		rm -f "$mnt/seq.bin"
		fresh() { sync; [ "$BENCH_DROP" = 0 ] || echo 3 >/proc/sys/vm/drop_caches; }
		fresh
		perf record -q -F 4999 -p "$svc" -o "$out.prof" 2>/dev/null & prof=$!
		sleep 0.5
		perf record -q -a -m 1024 -e fuse:fuse_request_send --filter "connection == $conn" -o "$out.create" -- \
			"$py" "$tool" create "$mnt/c" "$files" "$dirs" 0 >/dev/null 2>&1
		kill -INT $prof; wait $prof || true'
	for mode in "${MODES[@]}"; do
		echo "== tracing FUSE requests: $mode"
		rm -f "$W/trace.seq" "$W/trace.create" "$W/trace.prof"
		if ! env "SPFS_VFS_BIND_VIEWS=$(bind_of "$mode")" "$SPFS" run --edit - -- \
			bash -c "$TRACE_SCRIPT" _ "$PY" "$TOOL" "$MNT" "$CONN" "$TRACE_MB" "$FILES" "$DIRS" "$W/trace" "$SVC_PID" 2>"$W/trace.err"; then
			echo "   trace failed: $(tail -n 3 "$W/trace.err" | tr '\n' ' ')"
			continue
		fi
		for c in seq create; do
			div=$FILES
			[ $c = seq ] && div=$TRACE_MB
			printf 'X\t%s\t%s\t%s\n' "$c" "$mode" "$div" >>"$RES"
			{ perf script -i "$W/trace.$c" -F trace 2>/dev/null | grep -o 'FUSE_[A-Z_]*' || true; } | sort | uniq -c |
				awk -v c="$c" -v m="$mode" '{ printf "T\t%s\t%s\t%s\t%s\n", c, m, $2, $1 }' >>"$RES"
		done
		for sort in dso sym; do
			perf report -i "$W/trace.prof" --stdio --no-children --sort $sort --percent-limit 2 2>/dev/null |
				grep -v '^#' | grep -v '^$' | head -n 12 | awk -v m="$mode" '{ printf "P\t%s\t%s\n", m, $0 }' >>"$RES" || true
		done
	done
fi
echo "== load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$RES" "${BENCH_JSON:-}" "$SEQ_MB" "$FILES" "$DIRS" "$REPS" "${MODES[*]}" "${PINS[*]}" "$TRACE_MB" <<'EOF'
import json, statistics, sys
tsv, out, seq_mb, nfiles, ndirs, reps, modes, pins, trace_mb = sys.argv[1:]
seq_mb, nfiles, ndirs, reps, trace_mb = int(seq_mb), int(nfiles), int(ndirs), int(reps), int(trace_mb)
modes, pins = modes.split(), pins.split()
RUNS, MODE, TR, DIV, PROF, FDS, LIMIT = {}, {}, {}, {}, {}, {}, None
for line in open(tsv):
    f = line.rstrip("\n").split("\t")
    if f[0] == "R":
        RUNS.setdefault((f[1], f[2], f[3]), []).append(tuple(float(x) for x in f[5:8]))
    elif f[0] == "M":
        MODE[f[1]] = f[2]
    elif f[0] == "X":
        DIV[(f[1], f[2])] = int(f[3])
        TR.setdefault((f[1], f[2]), {})
    elif f[0] == "T":
        TR.setdefault((f[1], f[2]), {})[f[3].removeprefix("FUSE_")] = int(f[4])
    elif f[0] == "P":
        PROF.setdefault(f[1], []).append(f[2])
    elif f[0] == "F":
        FDS.setdefault(f[1], []).append(int(f[2]))
    elif f[0] == "L":
        LIMIT = (int(f[1]), int(f[2]), int(f[3]))

seq_bytes = seq_mb << 20
# case: what a run's amount of work is, unit, target kind and value,
# description
CASES = [
    ("seqwrite_fsync", seq_bytes / 1e6, "MB/s", ("ratio", 0.8), f"dd bs=1M count={seq_mb} conv=fsync"),
    ("seqwrite", seq_bytes / 1e6, "MB/s", ("ratio", 0.8), f"dd bs=1M count={seq_mb} (no fsync)"),
    ("create", nfiles, "files/s", ("ratio", 0.5), f"{nfiles} x 4 KiB files in {ndirs} dirs (open+write+close)"),
    ("commit", nfiles, "files/s", ("abs", 10000), "spfs commit layer (native: spfs commit --path)"),
]
def med(case, sys_, pin, i=0):
    r = RUNS.get((case, sys_, pin))
    return statistics.median(x[i] for x in r) if r else None
def spread(case, sys_, pin):
    r = RUNS.get((case, sys_, pin))
    return (min(x[0] for x in r), max(x[0] for x in r)) if r else None
def fmt(v):
    return "-" if v is None else f"{v:,.0f}" if v >= 100 else f"{v:.1f}"

rows = []
for case, work, unit, (kind, x), desc in CASES:
    for mode in modes:
        for pin in pins:
            n, s = med(case, "native", pin), med(case, mode, pin)
            if s is None:
                continue
            ratio = n / s if n else None
            rate_n = work / n if n else None
            rate_s = work / s
            ok = (ratio is not None and ratio >= x) if kind == "ratio" else rate_s >= x
            tgt = f">= {x:g}x" if kind == "ratio" else f">= {x:,} {unit}"
            miss = ""
            if not ok:
                miss = (f" ({ratio / x:.0%} of target)" if kind == "ratio" else f" ({rate_s / x:.0%} of target)")
            rows.append(dict(case=case, mode=mode, pin=pin, unit=unit, native=rate_n, spfs=rate_s, ratio=ratio,
                             native_s=n, spfs_s=s, target=tgt, met=ok, miss=miss,
                             native_runs_s=[r[0] for r in RUNS[(case, "native", pin)]] if n else [],
                             spfs_runs_s=[r[0] for r in RUNS[(case, mode, pin)]],
                             svc_cpu_s=med(case, mode, pin, 1), tool_cpu_s=med(case, mode, pin, 2),
                             native_tool_cpu_s=med(case, "native", pin, 2), real_mode=MODE.get(mode)))

print()
print(f"Editable runtimes (spfs run --edit -) against the local disk (a directory beside the repository): "
      f"median of {reps} runs")
print("ratio = native time / spfs time (commit: `spfs commit --path` time / `spfs commit layer` time); "
      "native and spfs in the same rounds")
for m in modes:
    if MODE.get(m) and MODE[m] != m:
        print(f"WARNING: {m} ran in {MODE[m]} mode (bind_views not available?)")
hdr = f"{'case':<15} {'mode':<7} {'pin':<9} {'unit':<8} {'native':>9} {'spfs':>9} {'ratio':>7}  {'target':<19} result"
print(hdr)
print("-" * len(hdr))
for r in rows:
    ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
    print(f"{r['case']:<15} {r['mode']:<7} {r['pin']:<9} {r['unit']:<8} {fmt(r['native']):>9} {fmt(r['spfs']):>9} "
          f"{ratio:>7}  {r['target']:<19} {'met' if r['met'] else 'MISSED' + r['miss']}")
print()
print("cases:")
for case, _, _, _, desc in CASES:
    print(f"  {case:<15} {desc}")

print()
print("details (median seconds per run [fastest-slowest]; CPU seconds of the service, all threads, and of the tool "
      "during the timed work)")
for case, work, unit, _, _ in CASES + [("delete", nfiles, "files/s", None, None)]:
    for pin in pins:
        for sys_ in ["native"] + modes:
            m = med(case, sys_, pin)
            if m is None:
                continue
            lo, hi = spread(case, sys_, pin)
            svc, own = med(case, sys_, pin, 1), med(case, sys_, pin, 2)
            per = ""
            if case in ("create", "commit", "delete"):
                svc_f = "" if sys_ == "native" else f", service {svc / nfiles * 1e6:.0f} us"
                per = f"; per file: wall {m / nfiles * 1e6:.0f} us{svc_f}, tool {own / nfiles * 1e6:.0f} us"
            svc_s = "" if sys_ == "native" else f", service cpu {svc:.2f} s"
            print(f"  {case:<15} {pin:<9} {sys_:<7} {m:7.3f} s [{lo:.3f}-{hi:.3f}]{svc_s}, tool cpu {own:.2f} s{per}")

if RUNS.get(("delete", "native", pins[0])):
    print("  (delete: natively only, `rm -rf` of the created files then sync: what `spfs commit layer` also does "
          "to the runtime's copies once they are stored, within the request)")

if FDS:
    print()
    print("descriptors the service holds right after a create of "
          f"{nfiles} files: " + ", ".join(f"{m} {max(v)}" for m, v in FDS.items()))
    if max(max(v) for v in FDS.values()) > nfiles:
        print("  NOTE: one per created file, kept until the kernel forgets the file (a create is not held to "
              "the bound of 4096 kept upper files); with fewer allowed than files created, creates fail with EMFILE")
if LIMIT:
    print(f"NOTE: the service's open file limit is {LIMIT[0]} (hard): {LIMIT[1]} files would not fit in one "
          f"runtime (EMFILE), so {LIMIT[2]} were created")

requests = {}
if TR:
    print()
    print(f"FUSE requests (kernel tracepoint fuse_request_send, one unpinned run): seqwrite of {trace_mb} MiB "
          f"without fsync, per MiB; create, per file")
    for (case, mode), ops in sorted(TR.items()):
        div = DIV.get((case, mode), 1)
        total = sum(ops.values())
        requests[f"{case}|{mode}"] = dict(ops, _total=total, _divisor=div)
        per = "MiB" if case == "seq" else "file"
        detail = ", ".join(f"{n / div:.3g} {op}" for op, n in sorted(ops.items(), key=lambda x: -x[1])) or "none"
        print(f"  {'seqwrite' if case == 'seq' else case:<9} {mode:<7} {total:>7} = {total / div:.3g}/{per}: {detail}")
if PROF:
    print()
    print("where the service's CPU time goes during create (perf record -p, one unpinned run, >= 2%): "
          "by binary, then by symbol (finish_task_switch: context switches)")
    for mode, lines in PROF.items():
        print(f"  {mode}:")
        for l in lines:
            print(f"    {l.strip()}")
if out:
    with open(out, "w") as f:
        json.dump({"seq_mb": seq_mb, "files": nfiles, "dirs": ndirs, "reps": reps, "modes": modes, "pinning": pins,
                   "real_modes": MODE, "rows": rows, "fuse_requests": requests, "profile": PROF,
                   "service_fds_after_create": FDS, "nofile_limit": LIMIT}, f, indent=2)
    print(f"JSON written to {out}")
EOF
