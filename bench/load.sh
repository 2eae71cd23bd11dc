#!/usr/bin/env bash
# Load benchmark of the VFS service (not a test; not run by CI; a shorter
# correctness version is crates/spfs-cli/tests/vfs/load.rs): many runtimes
# of different stacks reading at once through the one mount (issue 11,
# item 7: "no wrong answer, no error, p99 latency of a warm stat at most 2x
# the single-runtime figure; memory of the service per view and per entry").
#
# Builds release binaries (CARGO_TARGET_DIR honoured; BENCH_NO_BUILD=1 uses
# the binaries there as they are) and the reader (below, C, compiled with cc
# at bench time), then in a private world under /var/tmp (repository, mount
# point, control socket, log, cgroup root <cgroup2>/spfs-bench-load-$$),
# all removed on exit, even on failure:
#   - a base layer of BENCH_BASE_FILES (default 3,000) files of 4 KiB in 200
#     directories (dNNN/fNNN), each file's bytes a function of its number,
#     committed as load/base;
#   - BENCH_RUNTIMES + 1 (default 101) stack layers load/sK (K = 0..N): K's
#     own files stack/f00..f19 of 300+K bytes (text naming K and the file),
#     and d000/f000 of the base replaced by 4097+K bytes naming K, so a
#     runtime answered from another view reads a wrong byte and stats a
#     wrong size. Runtime K runs `spfs run load/base+load/sK`.
# The reader (one process per runtime) waits for a common start, then until
# BENCH_DURATION (default 60) seconds have passed, in a loop: reads one of
# its stack's files and one base file (spread over all of them) and checks
# every byte; stats each of the two 2 times (warm: just read), timing every
# stat (clock_gettime around stat(2); 50 ns bins below 1 ms, 10 us bins
# to 101 ms, 1 ms bins to 10.1 s) and checking its size; every 50th round lists stack/ and checks
# the count; then pauses BENCH_PAUSE_MS (default 10) ms. Any failed call is
# an error, any wrong byte, size or listing a wrong answer; the script exits
# non-zero if any reader saw one (or failed).
# Why a pause: N closed-loop readers that never pause keep every request
# queue of a 2-core machine full, so their latency is N x the service time
# by Little's law whatever the service does; with a pause, as long as the
# requests per round stay what one runtime needs, the machine is loaded
# (the CPU busy share is printed) but not saturated, and the p99 says what
# serving 100 views at once costs. (If the requests per round multiply, as
# the request counts below show, the readers saturate the service all the
# same.) BENCH_PAUSE_MS=0 gives the saturated figure (throughput).
# Why C: Python's os.stat has a tail of its own (on the 2-vCPU VM this was
# written on, a warm stat of a local file: p50 0.83 us, p99 5.2 us in a
# Python loop, against p50 0.32 us, p99 0.6 us in C), as big as a routed
# request; it would hide what is measured.
#
# For each mode (BENCH_MODES, default "router bound": SPFS_VFS_BIND_VIEWS
# never or auto, the mode every runtime really got is checked) and pinning
# (BENCH_PINNING, default "pinned unpinned": pinned = the service and every
# runtime on CPU 0), on a fresh service (vfs defaults):
#   single  one runtime (load/s0) alone, for BENCH_BASE_DURATION (default
#           15) seconds: the baseline;
#   load    BENCH_RUNTIMES (default 100) runtimes (load/s1..sN) started at
#           once; when every reader is ready (registered and started), the
#           service's worker RSS is read, then all start together for
#           BENCH_DURATION seconds; RSS read again before they exit.
# The reader also runs natively once per pinning (on a copy of base+s0 on
# local disk) for reference. While the readers read, the FUSE requests of
# our connection are counted (kernel tracepoint fuse:fuse_request_send
# through `perf stat`, LOOKUPs apart; BENCH_TRACE=0: not counted) and
# printed per reader round, with the worker's CPU time per request.
# Memory: VmRSS of the worker (`pid` of `spfs-vfs status --json`) right
# before the N runtimes are started (after the baseline), once all N are
# registered and their readers started (before any read), and after the
# reading (views still registered). Per view = growth / N; per entry =
# growth / (N x entries of one view's merged tree), where entries = the
# names of base+sK (files and directories, root excluded), counted on the
# source trees.
#
# --quick (or BENCH_QUICK=1): 20 runtimes, 10 s, baseline 5 s, 1,000 base
# files. BENCH_JSON=F also writes the results to F.
#
# Usage (root): bench/load.sh [--quick]
#   BENCH_MODES=router BENCH_PINNING=unpinned BENCH_RUNTIMES=50 bench/load.sh
set -euo pipefail

cd "$(dirname "$0")/.."
. bench/lib.sh
bench_options "FUSE, cgroups, mount namespaces" "$@"
N=${BENCH_RUNTIMES:-$(quick 20 100)}
DURATION=${BENCH_DURATION:-$(quick 10 60)}
BASE_DURATION=${BENCH_BASE_DURATION:-$(quick 5 15)}
BASE_FILES=${BENCH_BASE_FILES:-$(quick 1000 3000)}
PAUSE_MS=${BENCH_PAUSE_MS:-10}
STACK_FILES=20
read -r -a MODES <<<"${BENCH_MODES:-router bound}"
read -r -a PINS <<<"${BENCH_PINNING:-pinned unpinned}"
for m in "${MODES[@]}"; do case $m in router | bound) ;; *) echo "BENCH_MODES: unknown mode $m (router, bound)" >&2; exit 2 ;; esac; done
for p in "${PINS[@]}"; do case $p in pinned | unpinned) ;; *) echo "BENCH_PINNING: unknown $p (pinned, unpinned)" >&2; exit 2 ;; esac; done
[ ${#MODES[@]} -gt 0 ] && [ ${#PINS[@]} -gt 0 ] || { echo "empty BENCH_MODES or BENCH_PINNING" >&2; exit 2; }
for v in N DURATION BASE_DURATION BASE_FILES PAUSE_MS; do
	[[ "${!v}" =~ ^[0-9]+$ ]] || { echo "$v must be a whole number" >&2; exit 2; }
done
[ "$N" -ge 1 ] && [ "$N" -le 500 ] || { echo "BENCH_RUNTIMES: 1 to 500 (the service allows 512 runtimes per user)" >&2; exit 2; }
[ "$BASE_FILES" -ge 200 ] && [ "$BASE_FILES" -le 200000 ] || { echo "BENCH_BASE_FILES: 200 to 200,000" >&2; exit 2; }
[ "$DURATION" -ge 1 ] && [ "$BASE_DURATION" -ge 1 ] || { echo "durations must be at least 1 s" >&2; exit 2; }
NPROC=$(nproc)
ALLCPUS="0-$((NPROC - 1))"
TICK=$(getconf CLK_TCK)

T="${CARGO_TARGET_DIR:-$PWD/target}/release"
if [ -z "${BENCH_NO_BUILD:-}" ]; then
	echo "== building (release, $T)"
	cargo build --release -q -p spfs-cli --bins
fi
SPFS="$T/spfs"
SPFS_VFS="$T/spfs-vfs"
for b in "$SPFS" "$SPFS_VFS"; do [ -x "$b" ] || { echo "missing $b" >&2; exit 1; }; done
for c in taskset cc python3; do command -v "$c" >/dev/null || { echo "missing $c" >&2; exit 1; }; done
CG2=$(awk '$9 == "cgroup2" { print $5; exit }' /proc/self/mountinfo)
[ -n "$CG2" ] || { echo "no cgroup2 mount" >&2; exit 1; }
[ -e /dev/fuse ] || { echo "no /dev/fuse" >&2; exit 1; }

W=$(mktemp -d /var/tmp/spfs-load-bench.XXXXXX)
chmod 755 "$W"
MNT="$W/mnt"
CGROOT="$CG2/spfs-bench-load-$$"
mkdir -p "$MNT" "$W/src" "$W/out"
bench_world_env "$W" "$MNT" "$CGROOT"
RES="$W/results.tsv" # every result, one line each, for the report at the end
: >"$RES"

SVC_PID=""
RUN_PIDS=()
TRACEFS_MOUNTED=""
PERF_PID=""
cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	[ -n "${W:-}" ] && touch "$W/ctl-abort" 2>/dev/null
	for p in "${RUN_PIDS[@]}"; do kill "$p" 2>/dev/null; done
	[ -n "$PERF_PID" ] && stop_pid "$PERF_PID"
	remove_cgroups "$CGROOT"
	for p in "${RUN_PIDS[@]}"; do stop_pid "$p" wait; done
	if [ -n "$SVC_PID" ]; then
		timeout 15 "$SPFS_VFS" service --stop >/dev/null 2>&1
		stop_pid "$SVC_PID" wait
	fi
	for _ in 1 2 3; do is_mounted "$MNT" && umount -l "$MNT" 2>/dev/null; done
	remove_cgroups "$CGROOT"
	[ -n "$TRACEFS_MOUNTED" ] && umount /sys/kernel/tracing 2>/dev/null
	# The service's per-mount-point lock file (and its directory).
	rm -rf "/run/spfs/mounts/${MNT//\//%2F}.lock" "/run/spfs/mounts/${MNT//\//%2F}.d"
	if [ $rc != 0 ]; then
		for f in "$W/service.out" "$W/vfs.log"; do
			[ -s "$f" ] || continue
			echo "--- last lines of the service log ($f) ---" >&2
			tail -n 20 "$f" >&2
		done
	fi
	rm -rf "$W"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The reader: gen-base, gen-stack (the layers' files) and read (the load).
cat >"$W/reader.c" <<'EOF'
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define NDIRS 200
#define BASE_SIZE 4096
#define FINE_NS 50      /* bin width below 1 ms */
#define FINE_BINS 20000 /* 0 .. 1 ms */
#define COARSE_NS 10000 /* bin width from 1 ms */
#define COARSE_BINS 10000 /* 1 ms .. 101 ms */
#define SLOW_NS 1000000 /* bin width from 101 ms */
#define SLOW_BINS 10000 /* 101 ms .. 10.101 s */

static uint64_t now_ns(clockid_t c) {
	struct timespec t;
	clock_gettime(c, &t);
	return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}
static int per_dir(int count) { return (count + NDIRS - 1) / NDIRS; }
static void base_rel(char *out, size_t n, int count, int i) {
	snprintf(out, n, "d%03d/f%03d", i / per_dir(count), i % per_dir(count));
}
static void base_bytes(int i, unsigned char *b) {
	for (int j = 0; j < BASE_SIZE; j++)
		b[j] = (unsigned char)(i * 31 + (i >> 8) * 17 + j * 7 + (j >> 8) * 13);
}
/* Stack k's file i (i < 0: its replacement of the base's d000/f000). */
static size_t stack_bytes(int k, int i, unsigned char *b) {
	char unit[64];
	size_t size = i < 0 ? BASE_SIZE + 1 + (size_t)k : 300 + (size_t)k;
	int u = i < 0 ? snprintf(unit, sizeof unit, "override of stack %05d\n", k)
		      : snprintf(unit, sizeof unit, "stack %05d file %02d\n", k, i);
	for (size_t j = 0; j < size; j++) b[j] = (unsigned char)unit[j % (size_t)u];
	return size;
}
static void put(const char *path, const unsigned char *b, size_t n) {
	char dir[4096];
	snprintf(dir, sizeof dir, "%s", path);
	for (char *p = dir + 1; *p; p++)
		if (*p == '/') { *p = 0; mkdir(dir, 0755); *p = '/'; }
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(b, 1, n, f) != n || fclose(f)) { perror(path); exit(1); }
}

static long errors, wrong;
static char notes[5][300];
static int nnotes;
static void note(const char *what, const char *path, int err) {
	if (nnotes < 5) {
		if (err) snprintf(notes[nnotes], sizeof notes[0], "%s %s: %s", what, path, strerror(err));
		else snprintf(notes[nnotes], sizeof notes[0], "%s %s", what, path);
		nnotes++;
	}
}
static void pause_ns(uint64_t ns) {
	struct timespec t = {(time_t)(ns / 1000000000u), (long)(ns % 1000000000u)};
	while (nanosleep(&t, &t) && errno == EINTR) {}
}
static int exists(const char *ctl, const char *name) {
	char p[4096];
	snprintf(p, sizeof p, "%s/%s", ctl, name);
	return access(p, F_OK) == 0;
}
/* Wait up to max_s for CTL/name; 0 if it never came (or CTL's parent
 * says abort). */
static int wait_for(const char *ctl, const char *name, int max_s) {
	for (int i = 0; i < max_s * 200; i++) {
		if (exists(ctl, name)) return 1;
		if (exists(ctl, "../ctl-abort")) return 0;
		pause_ns(5000000);
	}
	return 0;
}
/* Read PATH whole into buf (size cap); -1 on error (noted). */
static long read_file(const char *path, unsigned char *buf, size_t cap) {
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) { errors++; note("open", path, errno); return -1; }
	size_t got = 0;
	for (;;) {
		ssize_t r = read(fd, buf + got, cap - got);
		if (r < 0) { if (errno == EINTR) continue; errors++; note("read", path, errno); close(fd); return -1; }
		if (r == 0 || (got += (size_t)r) == cap) break;
	}
	close(fd);
	return (long)got;
}

int main(int argc, char **argv) {
	if (argc == 4 && !strcmp(argv[1], "gen-base")) {
		/* gen-base DIR COUNT */
		int count = atoi(argv[3]);
		unsigned char b[BASE_SIZE];
		char rel[64], p[4096];
		for (int i = 0; i < count; i++) {
			base_rel(rel, sizeof rel, count, i);
			snprintf(p, sizeof p, "%s/%s", argv[2], rel);
			base_bytes(i, b);
			put(p, b, BASE_SIZE);
		}
		return 0;
	}
	if (argc == 6 && !strcmp(argv[1], "gen-stack")) {
		/* gen-stack DIR K NSTACK BASE_COUNT */
		int k = atoi(argv[3]), ns = atoi(argv[4]), count = atoi(argv[5]);
		unsigned char b[BASE_SIZE + 100000];
		char rel[64], p[4096];
		for (int i = 0; i < ns; i++) {
			snprintf(p, sizeof p, "%s/stack/f%02d", argv[2], i);
			put(p, b, stack_bytes(k, i, b));
		}
		base_rel(rel, sizeof rel, count, 0);
		snprintf(p, sizeof p, "%s/%s", argv[2], rel);
		put(p, b, stack_bytes(k, -1, b));
		return 0;
	}
	if (argc != 11 || strcmp(argv[1], "read")) {
		fprintf(stderr, "usage: reader gen-base DIR COUNT | gen-stack DIR K NSTACK BASE_COUNT |"
				" read ROOT K NBASE NSTACK CTL DURATION_S PAUSE_US OUT TAG\n");
		return 2;
	}
	/* read ROOT K NBASE NSTACK CTL DURATION_S PAUSE_US OUT TAG */
	const char *root = argv[2], *ctl = argv[6], *out = argv[9], *tag = argv[10];
	int k = atoi(argv[3]), nbase = atoi(argv[4]), nstack = atoi(argv[5]);
	double duration = atof(argv[7]);
	uint64_t pause_us = strtoull(argv[8], 0, 10);
	if (k < 0 || k > 90000 || nbase < 1 || nstack < 1 || nstack > 100) { fprintf(stderr, "bad arguments\n"); return 2; }
	char (*spath)[4096] = calloc((size_t)nstack, 4096);
	char (*bpath)[4096] = calloc((size_t)nbase, 4096);
	unsigned char **sexp = calloc((size_t)nstack, sizeof *sexp);
	size_t *slen = calloc((size_t)nstack, sizeof *slen);
	unsigned char *over = malloc(BASE_SIZE + 100000), *exp = malloc(BASE_SIZE), *buf = malloc(BASE_SIZE + 200000);
	uint32_t *fine = calloc(FINE_BINS, 4), *coarse = calloc(COARSE_BINS, 4), *slow = calloc(SLOW_BINS, 4);
	if (!spath || !bpath || !sexp || !slen || !over || !exp || !buf || !fine || !coarse || !slow) { perror("alloc"); return 2; }
	for (int i = 0; i < nstack; i++) {
		snprintf(spath[i], 4096, "%s/stack/f%02d", root, i);
		sexp[i] = malloc(300 + (size_t)k);
		slen[i] = stack_bytes(k, i, sexp[i]);
	}
	size_t overlen = stack_bytes(k, -1, over);
	char rel[64], stackdir[4096];
	for (int i = 0; i < nbase; i++) {
		base_rel(rel, sizeof rel, nbase, i);
		snprintf(bpath[i], 4096, "%s/%s", root, rel);
	}
	snprintf(stackdir, sizeof stackdir, "%s/stack", root);

	/* Ready: "pid realtime_ns"; then wait for the common start. */
	char p[4096], tmp[4096];
	snprintf(tmp, sizeof tmp, "%s/.ready.%s", ctl, tag);
	snprintf(p, sizeof p, "%s/ready.%s", ctl, tag);
	FILE *f = fopen(tmp, "w");
	if (!f || fprintf(f, "%d %llu\n", (int)getpid(), (unsigned long long)now_ns(CLOCK_REALTIME)) < 0 || fclose(f) || rename(tmp, p)) { perror(p); return 2; }
	if (!wait_for(ctl, "go", 900)) { fprintf(stderr, "reader %s: no start signal\n", tag); return 3; }

	long rounds = 0, reads = 0, stats = 0, listings = 0, over_max = 0, overflow = 0;
	uint64_t t0 = now_ns(CLOCK_MONOTONIC), end = t0 + (uint64_t)(duration * 1e9), t;
	for (long j = 0; (t = now_ns(CLOCK_MONOTONIC)) < end; j++, rounds++) {
		int i = (int)(j % nstack), b = (int)((j * 7919 + (long)k * 13) % nbase);
		const char *paths[2] = {spath[i], bpath[b]};
		size_t sizes[2] = {slen[i], b == 0 ? overlen : BASE_SIZE};
		long n = read_file(spath[i], buf, BASE_SIZE + 200000);
		if (n >= 0) {
			reads++;
			if ((size_t)n != slen[i] || memcmp(buf, sexp[i], slen[i])) { wrong++; note("wrong bytes", spath[i], 0); }
		}
		n = read_file(bpath[b], buf, BASE_SIZE + 200000);
		if (n >= 0) {
			reads++;
			const unsigned char *e = exp;
			if (b == 0) e = over; else base_bytes(b, exp);
			if ((size_t)n != sizes[1] || memcmp(buf, e, sizes[1])) { wrong++; note("wrong bytes", bpath[b], 0); }
		}
		for (int s = 0; s < 4; s++) {
			struct stat st;
			const char *path = paths[s / 2];
			uint64_t a = now_ns(CLOCK_MONOTONIC);
			int r = stat(path, &st);
			uint64_t d = now_ns(CLOCK_MONOTONIC) - a;
			if (r) { errors++; note("stat", path, errno); continue; }
			stats++;
			const uint64_t c0 = (uint64_t)FINE_NS * FINE_BINS, s0 = c0 + (uint64_t)COARSE_NS * COARSE_BINS;
			if (d < c0) fine[d / FINE_NS]++;
			else if (d < s0) coarse[(d - c0) / COARSE_NS]++;
			else if (d < s0 + (uint64_t)SLOW_NS * SLOW_BINS) slow[(d - s0) / SLOW_NS]++;
			else { overflow++; if ((long)d > over_max) over_max = (long)d; }
			if (!S_ISREG(st.st_mode) || (size_t)st.st_size != sizes[s / 2]) { wrong++; note("wrong stat", path, 0); }
		}
		if (j % 50 == 0) {
			DIR *dir = opendir(stackdir);
			if (!dir) { errors++; note("opendir", stackdir, errno); }
			else {
				int c = 0;
				struct dirent *de;
				errno = 0;
				while ((de = readdir(dir))) c += de->d_name[0] != '.';
				if (errno) { errors++; note("readdir", stackdir, errno); }
				else if (c != nstack) { wrong++; note("wrong listing", stackdir, 0); }
				closedir(dir);
				listings++;
			}
		}
		if (errors > 1000) break; /* something is broken: say so soon */
		if (pause_us) pause_ns(pause_us * 1000);
	}
	double elapsed = (double)(t - t0) / 1e9;
	snprintf(tmp, sizeof tmp, "%s.tmp", out);
	f = fopen(tmp, "w");
	if (!f) { perror(tmp); return 2; }
	fprintf(f, "k %d\nrounds %ld\nreads %ld\nstats %ld\nlistings %ld\nerrors %ld\nwrong %ld\nelapsed %.3f\noverflow %ld %ld\n",
		k, rounds, reads, stats, listings, errors, wrong, elapsed, overflow, over_max);
	for (int i = 0; i < nnotes; i++) fprintf(f, "note %s\n", notes[i]);
	for (int i = 0; i < FINE_BINS; i++)
		if (fine[i]) fprintf(f, "h %d %d %u\n", i * FINE_NS, FINE_NS, fine[i]);
	for (int i = 0; i < COARSE_BINS; i++)
		if (coarse[i]) fprintf(f, "h %d %d %u\n", FINE_NS * FINE_BINS + i * COARSE_NS, COARSE_NS, coarse[i]);
	for (int i = 0; i < SLOW_BINS; i++)
		if (slow[i]) fprintf(f, "h %lld %d %u\n", (long long)FINE_NS * FINE_BINS + (long long)COARSE_NS * COARSE_BINS + (long long)i * SLOW_NS, SLOW_NS, slow[i]);
	if (fclose(f) || rename(tmp, out)) { perror(out); return 2; }
	/* Stay (the view registered) until the script has read the service's
	 * memory. */
	wait_for(ctl, "end", 300);
	return errors || wrong || !reads || !stats ? 1 : 0;
}
EOF
cc -O2 -Wall -Werror -o "$W/reader" "$W/reader.c"
READER="$W/reader"

# One line of what the service says of its views, shared directories and
# routing (from `spfs-vfs status --json` on stdin).
SERVICE_SUMMARY=$(cat <<'PY'
import json, sys
s = json.load(sys.stdin)
r = s["routing"]
o = s["ops"]
print(f"{s['views']} views, {s['shared_dirs']} shared directories, {s['routed_dirs']} routed directories, {s['content_nodes']} content nodes;"
      f" routing: {r['cache_hits']} cached, {r['cache_misses']} looked up, {r['unrouted']} from no runtime;"
      f" lookups {o['lookup']['count']} ({o['lookup']['errors']} failed), forgets {o.get('forget', {}).get('count', 0)}"
      f" + {o.get('batch_forget', {}).get('count', 0)} batches")
PY
)
status_field() { "$SPFS_VFS" status --json | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
bind_of() { case $1 in bound) echo auto ;; *) echo never ;; esac; }
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
# cpu_ticks PID: user+system ticks of PID, all threads (fields after comm).
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
# busy_ticks CPUS: "busy total" jiffies of cpu line(s) CPUS ("cpu" or "cpu0").
busy_ticks() { awk -v c="$1" '$1 == c { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat; }
now() { echo "$EPOCHREALTIME"; }

# FUSE requests counted by the kernel tracepoint fuse:fuse_request_send
# (perf stat, our connection only: LOOKUPs and the rest), if available.
TRACING=""
if [ "${BENCH_TRACE:-1}" = 1 ] && command -v perf >/dev/null; then
	if [ ! -d /sys/kernel/tracing/events/fuse ] && [ -d /sys/kernel/tracing ] &&
		! is_mounted /sys/kernel/tracing && mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null; then
		TRACEFS_MOUNTED=1
	fi
	[ -d /sys/kernel/tracing/events/fuse/fuse_request_send ] && TRACING=1
fi
PERF_PID=""

echo "== load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the CPUs skews the results)"
echo "== $W, $NPROC cores; $N runtimes for $DURATION s (baseline $BASE_DURATION s); $BASE_FILES base files; pause ${PAUSE_MS} ms"
"$SPFS" init repo "$W/repo" >/dev/null
"$READER" gen-base "$W/src/base" "$BASE_FILES"
"$SPFS" commit --path "$W/src/base" -t load/base >/dev/null
t=$(now)
for k in $(seq 0 "$N"); do
	"$READER" gen-stack "$W/src/s$k" "$k" "$STACK_FILES" "$BASE_FILES"
	"$SPFS" commit --path "$W/src/s$k" -t "load/s$k" >/dev/null
	rm -rf "$W/src/s$k"
done
"$READER" gen-stack "$W/src/s1" 1 "$STACK_FILES" "$BASE_FILES"
# Entries of one view's merged tree (base + one stack), root excluded.
ENTRIES=$(sort -u <(cd "$W/src/base" && find . -mindepth 1) <(cd "$W/src/s1" && find . -mindepth 1) | wc -l)
printf 'E\t%s\n' "$ENTRIES" >>"$RES"
echo "   committed load/base and $((N + 1)) stacks in $(python3 -c "print(f'{$(now) - $t:.1f}')") s; a view has $ENTRIES entries"
# The native reference: base + s0 on local disk.
cp -a "$W/src/base" "$W/native"
"$READER" gen-stack "$W/native" 0 "$STACK_FILES" "$BASE_FILES"

start_service() {
	"$SPFS_VFS" service >"$W/service.out" 2>&1 &
	SVC_PID=$!
	for _ in $(seq 300); do
		"$SPFS_VFS" status >/dev/null 2>&1 && break
		kill -0 "$SVC_PID" 2>/dev/null || { cat "$W/service.out" >&2; exit 1; }
		sleep 0.05
	done
	[ "$(status_field keeper_pid)" = "$SVC_PID" ] || { echo "service did not start" >&2; exit 1; }
	WORKER=$(status_field pid)
	CONN=$(awk -v m="$MNT" '$5 == m { split($3, d, ":"); print d[2] }' /proc/self/mountinfo)
}
stop_service() {
	timeout 15 "$SPFS_VFS" service --stop >/dev/null
	stop_pid "$SVC_PID" wait
	SVC_PID=""
	for _ in $(seq 100); do is_mounted "$MNT" || break; sleep 0.05; done
	is_mounted "$MNT" && { echo "the service left $MNT mounted" >&2; exit 1; }
	return 0
}
set_pin() {
	local cpus=$ALLCPUS
	[ "$1" = pinned ] && cpus=0
	taskset -a -p -c "$cpus" "$SVC_PID" >/dev/null
	taskset -a -p -c "$cpus" "$WORKER" >/dev/null
}
pre_of() { [ "$1" = pinned ] && echo "taskset -c 0" || true; }
cpu_of() { [ "$1" = pinned ] && echo cpu0 || echo cpu; }
# rec KEY VALUE: a result of the current block.
rec() { printf 'R\t%s\t%s\t%s\n' "$BLOCK" "$1" "$2" >>"$RES"; }

# readers_alive PREFIX WHY (in a phase): exit, saying WHY, if a reader's
# process ended while PREFIX<its number> does not exist.
readers_alive() {
	local i k
	for ((i = 0; i < count; i++)); do
		k=$((first + i))
		if ! kill -0 "${RUN_PIDS[$i]}" 2>/dev/null && [ ! -e "$1$k" ]; then
			echo "runtime $k $2:" >&2
			cat "$out/$k.err" >&2
			exit 1
		fi
	done
}

# phase NAME PIN MODE FIRST COUNT SECONDS: readers FIRST..FIRST+COUNT-1 in
# runtimes (MODE router or bound) or natively (MODE native), started at
# once, released together, for SECONDS; their outputs in $W/out/$BLOCK-NAME.
phase() {
	local name=$1 pin=$2 mode=$3 first=$4 count=$5 secs=$6 k i pre
	local ctl="$W/ctl-${BLOCK/|/-}-$name" out="$W/out/${BLOCK/|/-}-$name"
	read -r -a pre <<<"$(pre_of "$pin")"
	mkdir -p "$ctl" "$out"
	local pause_us=$((PAUSE_MS * 1000)) launch=() fail=""
	local svc0 worker_rss0 b0 t0 ready_t all_ready go_t
	[ "$mode" != native ] && { svc0=$(cpu_ticks "$WORKER"); worker_rss0=$(rss_kb "$WORKER"); }
	RUN_PIDS=()
	t0=$(now)
	for ((i = 0; i < count; i++)); do
		k=$((first + i))
		launch+=("$(now)")
		if [ "$mode" = native ]; then
			"${pre[@]}" "$READER" read "$W/native" 0 "$BASE_FILES" "$STACK_FILES" "$ctl" "$secs" "$pause_us" "$out/$k" "$k" \
				>"$out/$k.stdout" 2>"$out/$k.err" &
		else
			"${pre[@]}" env "SPFS_VFS_BIND_VIEWS=$(bind_of "$mode")" "$SPFS" run "load/base+load/s$k" -- \
				"$READER" read "$MNT" "$k" "$BASE_FILES" "$STACK_FILES" "$ctl" "$secs" "$pause_us" "$out/$k" "$k" \
				>"$out/$k.stdout" 2>"$out/$k.err" &
		fi
		RUN_PIDS+=($!)
	done
	# Every reader ready (registered, started), or one gone: bounded.
	local deadline=$((SECONDS + 120 + count))
	while :; do
		local nready
		nready=$(find "$ctl" -maxdepth 1 -name 'ready.*' | wc -l)
		[ "$nready" -ge "$count" ] && break
		readers_alive "$ctl/ready." "ended before its reader was ready"
		[ $SECONDS -lt $deadline ] || { echo "$nready of $count readers ready after $((120 + count)) s" >&2; exit 1; }
		sleep 0.05
	done
	all_ready=$(now)
	# Registration: launch to ready, per runtime (the reader's clock).
	local readies=()
	for ((i = 0; i < count; i++)); do
		read -r _ ready_t <"$ctl/ready.$((first + i))"
		readies+=("$ready_t")
	done
	rec "$name.launch_all_ready_s" "$(python3 -c "print(f'{$all_ready - $t0:.3f}')")"
	rec "$name.launch_times" "${launch[*]}"
	rec "$name.ready_times" "${readies[*]}"
	if [ "$mode" != native ]; then
		# The mode each runtime really got (its reader's mount namespace).
		local host_ns ns got_bound=0 pid
		host_ns=$(readlink /proc/self/ns/mnt)
		for ((i = 0; i < count; i++)); do
			read -r pid _ <"$ctl/ready.$((first + i))"
			ns=$(readlink "/proc/$pid/ns/mnt" || true)
			[ -n "$ns" ] && [ "$ns" != "$host_ns" ] && got_bound=$((got_bound + 1))
		done
		rec "$name.bound_runtimes" "$got_bound"
		rec "$name.listed" "$("$SPFS_VFS" list --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["runtimes"]))')"
		rec "$name.rss_before_kb" "$worker_rss0"
		rec "$name.rss_registered_kb" "$(rss_kb "$WORKER")"
		rec "$name.keeper_rss_kb" "$(rss_kb "$SVC_PID")"
		rec "$name.worker_fds" "$(find "/proc/$WORKER/fd" -mindepth 1 | wc -l)"
		rec "$name.worker_threads" "$(awk '/^Threads:/ { print $2 }' "/proc/$WORKER/status")"
		rec "$name.worker_cpu_registration_s" "$(python3 -c "print(($(cpu_ticks "$WORKER") - $svc0) / $TICK)")"
		svc0=$(cpu_ticks "$WORKER")
	fi
	if [ -n "$TRACING" ] && [ "$mode" != native ]; then
		perf stat -a -x, -o "$out.requests" \
			-e fuse:fuse_request_send --filter "connection == $CONN && opcode == 1" \
			-e fuse:fuse_request_send --filter "connection == $CONN && opcode != 1" &
		PERF_PID=$!
		sleep 0.5 # perf has set up its counters
	fi
	read -r -a b0 <<<"$(busy_ticks "$(cpu_of "$pin")")"
	go_t=$(now)
	touch "$ctl/go"
	# Every reader done (bounded).
	deadline=$((SECONDS + secs + 60))
	while [ "$(find "$out" -maxdepth 1 -regex '.*/[0-9]+' | wc -l)" -lt "$count" ]; do
		readers_alive "$out/" "ended without its results"
		[ $SECONDS -lt $deadline ] || { echo "readers still running $((secs + 60)) s after the start" >&2; exit 1; }
		sleep 0.1
	done
	local b1
	read -r -a b1 <<<"$(busy_ticks "$(cpu_of "$pin")")"
	if [ -n "$PERF_PID" ]; then
		kill -INT "$PERF_PID"
		wait "$PERF_PID" || true
		PERF_PID=""
		# "count,,event,..." lines: LOOKUPs, then the rest.
		rec "$name.requests" "$(awk -F, '$3 ~ /fuse_request_send/ { printf "%s ", $1 }' "$out.requests")"
	fi
	rec "$name.wall_s" "$(python3 -c "print(f'{$(now) - $go_t:.3f}')")"
	rec "$name.cpu_busy" "$(python3 -c "print(f'{(${b1[0]} - ${b0[0]}) / max(1, ${b1[1]} - ${b0[1]}):.3f}')")"
	if [ "$mode" != native ]; then
		rec "$name.rss_after_kb" "$(rss_kb "$WORKER")"
		rec "$name.worker_cpu_s" "$(python3 -c "print(($(cpu_ticks "$WORKER") - $svc0) / $TICK)")"
		local status
		status=$("$SPFS_VFS" status --json)
		# The service's own time per LOOKUP (since it started: the load
		# phase's requests outnumber the single one's many times).
		rec "$name.service_lookup_us" "$(python3 -c 'import json, sys; o = json.load(sys.stdin)["ops"]["lookup"]; print(o["p50_seconds"] * 1e6, o["p99_seconds"] * 1e6)' <<<"$status")"
		# Views, shared directories and routing, as the service counts them.
		rec "$name.service_views" "$(python3 -c "$SERVICE_SUMMARY" <<<"$status")"
		[ "$(python3 -c 'import json, sys; print(json.load(sys.stdin)["pid"])' <<<"$status")" = "$WORKER" ] ||
			{ echo "the service's worker changed during the run" >&2; exit 1; }
	fi
	touch "$ctl/end"
	for ((i = 0; i < count; i++)); do
		if ! wait "${RUN_PIDS[$i]}"; then
			fail+=" $((first + i))"
		fi
	done
	RUN_PIDS=()
	printf 'P\t%s\t%s\t%s\t%s\t%s\n' "$BLOCK" "$name" "$out" "$count" "$fail" >>"$RES"
	if [ -n "$fail" ]; then
		echo "   FAILED readers:$fail"
		for k in $fail; do sed 's/^/     /' "$out/$k.err" | head -n 5; grep '^note' "$out/$k" 2>/dev/null | head -n 3 | sed 's/^/     /'; done
	fi
	python3 - "$out" "$count" <<'PY'
import glob, sys
out, count = sys.argv[1], int(sys.argv[2])
tot = dict(reads=0, stats=0, errors=0, wrong=0)
hist = {}
for f in glob.glob(out + "/[0-9]*"):
    if not f.rsplit("/", 1)[1].isdigit():
        continue
    for line in open(f):
        p = line.split()
        if p[0] in tot:
            tot[p[0]] += int(p[1])
        elif p[0] == "overflow" and int(p[1]):
            hist[int(p[2])] = hist.get(int(p[2]), 0) + int(p[1])  # beyond 10.1 s: at the worst
        elif p[0] == "h":
            hist[int(p[1]) + int(p[2]) / 2] = hist.get(int(p[1]) + int(p[2]) / 2, 0) + int(p[3])
n = sum(hist.values())
def pct(q):
    c = 0
    for v in sorted(hist):
        c += hist[v]
        if c >= q * n:
            return v / 1000
    return float("nan")
print(f"   {count} readers: {tot['reads']} reads, {tot['stats']} stats, {tot['errors']} errors, {tot['wrong']} wrong;"
      f" warm stat p50 {pct(.5):.2f} us, p99 {pct(.99):.2f} us, p99.9 {pct(.999):.2f} us")
PY
}

for pin in "${PINS[@]}"; do
	BLOCK="native|$pin"
	echo "== native ($pin): the reader on a copy of base+s0 on local disk, $BASE_DURATION s"
	phase single "$pin" native 0 1 "$BASE_DURATION"
done
for mode in "${MODES[@]}"; do
	for pin in "${PINS[@]}"; do
		BLOCK="$mode|$pin"
		echo "== $mode, $pin: fresh service"
		start_service
		set_pin "$pin"
		echo "   keeper $SVC_PID, worker $WORKER, passthrough: $(status_field passthrough); worker open file limit $(awk '/^Max open files/ { print $4 }' "/proc/$WORKER/limits")"
		echo "-- single runtime (load/s0), $BASE_DURATION s"
		phase single "$pin" "$mode" 0 1 "$BASE_DURATION"
		echo "-- $N runtimes (load/s1..s$N) started at once, $DURATION s"
		phase load "$pin" "$mode" 1 "$N" "$DURATION"
		stop_service
		# The service's log (its stderr): warnings and errors of the block.
		rec log_problems "$(grep -cE 'WARN|ERROR' "$W/service.out" || true)"
		{ grep -E 'WARN|ERROR' "$W/service.out" || true; } | tail -n 3 | sed 's/^/   log: /'
	done
done
echo "== load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$RES" "${BENCH_JSON:-}" "$N" "$DURATION" "$BASE_DURATION" "$BASE_FILES" "$PAUSE_MS" "${MODES[*]}" "${PINS[*]}" <<'EOF'
import glob, json, statistics, sys
tsv, jout, n, duration, base_duration, base_files, pause_ms, modes, pins = sys.argv[1:]
n, duration, base_duration, base_files, pause_ms = int(n), int(duration), int(base_duration), int(base_files), int(pause_ms)
modes, pins = modes.split(), pins.split()
R, P, entries = {}, {}, None
for line in open(tsv):
    f = line.rstrip("\n").split("\t")
    if f[0] == "R":
        R[(f[1], f[2])] = f[3]
    elif f[0] == "P":
        P[(f[1], f[2])] = dict(dir=f[3], count=int(f[4]), failed=f[5].split())
    elif f[0] == "E":
        entries = int(f[1])

def load(d):
    tot = dict(rounds=0, reads=0, stats=0, listings=0, errors=0, wrong=0, overflow=0, over_max=0, readers=0, idle=0)
    hist, notes, per = {}, [], []
    for f in sorted(glob.glob(d + "/*")):
        name = f.rsplit("/", 1)[1]
        if not name.isdigit():
            continue
        tot["readers"] += 1
        mine = {}
        for line in open(f):
            p = line.split(maxsplit=1)
            if p[0] in ("rounds", "reads", "stats", "listings", "errors", "wrong"):
                tot[p[0]] += int(p[1]); mine[p[0]] = int(p[1])
            elif p[0] == "overflow":
                o, m = map(int, p[1].split())
                tot["overflow"] += o; tot["over_max"] = max(tot["over_max"], m)
                hist[m] = hist.get(m, 0) + o  # beyond 10.1 s: counted at the worst
            elif p[0] == "note":
                notes.append(f"reader {name}: {p[1].strip()}")
            elif p[0] == "h":
                lo, w, c = map(int, p[1].split())
                hist[lo + w / 2] = hist.get(lo + w / 2, 0) + c
        per.append(mine.get("stats", 0))
        if not mine.get("reads"):
            tot["idle"] += 1
    return tot, hist, notes, per

def pct(hist, q):
    total = sum(hist.values())
    c = 0
    for v in sorted(hist):
        c += hist[v]
        if c >= q * total:
            return v / 1000
    return None

def f2(v):
    return "-" if v is None else f"{v:.2f}" if v < 100 else f"{v:.0f}"

rows, bad = [], False
for block in [f"native|{p}" for p in pins] + [f"{m}|{p}" for m in modes for p in pins]:
    for phase in ("single", "load"):
        if (block, phase) not in P:
            continue
        info = P[(block, phase)]
        tot, hist, notes, per = load(info["dir"])
        r = lambda k: R.get((block, f"{phase}.{k}"))
        mode, pin = block.split("|")
        row = dict(mode=mode, pin=pin, phase=phase, runtimes=info["count"], failed=info["failed"], **tot,
                   p50_us=pct(hist, .5), p99_us=pct(hist, .99), p999_us=pct(hist, .999),
                   max_us=max(hist) / 1000 if hist else None, notes=notes[:10],
                   stats_per_s=tot["stats"] / float(r("wall_s") or 1), cpu_busy=float(r("cpu_busy") or 0),
                   min_reader_stats=min(per) if per else 0, max_reader_stats=max(per) if per else 0)
        for k in ("rss_before_kb", "rss_registered_kb", "rss_after_kb", "keeper_rss_kb", "worker_fds", "worker_threads",
                  "bound_runtimes", "listed"):
            if r(k) is not None:
                row[k] = int(r(k))
        for k in ("worker_cpu_s", "worker_cpu_registration_s", "launch_all_ready_s", "wall_s"):
            if r(k) is not None:
                row[k] = float(r(k))
        if r("service_views"):
            row["service_views"] = r("service_views")
        svc = (r("service_lookup_us") or "").split()
        if len(svc) == 2:
            row["service_lookup_p50_us"], row["service_lookup_p99_us"] = float(svc[0]), float(svc[1])
        req = (r("requests") or "").split()
        if len(req) == 2 and tot["rounds"]:
            row["lookups_per_round"] = int(req[0]) / tot["rounds"]
            row["other_requests_per_round"] = int(req[1]) / tot["rounds"]
            row["requests_per_s"] = (int(req[0]) + int(req[1])) / float(r("wall_s") or 1)
        lat = [int(b) / 1e9 - float(a) for a, b in zip((r("launch_times") or "").split(), (r("ready_times") or "").split())]
        if lat:
            row["ready_p50_s"], row["ready_max_s"] = statistics.median(lat), max(lat)
        if tot["errors"] or tot["wrong"] or info["failed"] or tot["idle"] or tot["readers"] != info["count"]:
            bad = True
        rows.append(row)
ROW = {(x["mode"], x["pin"], x["phase"]): x for x in rows}

print()
print(f"Load: {n} runtimes of different stacks (load/base + load/sK: {base_files} base files + 20 of the stack's own,"
      f" {entries} entries per view) reading at once for {duration} s, after 1 runtime alone for {base_duration} s;"
      f" each reader: 2 reads (every byte checked) + 4 warm stats (timed, size checked) + a listing every 50th round,"
      f" then a {pause_ms} ms pause")
hdr = (f"{'mode':<8} {'pin':<9} {'runtimes':>8} {'reads':>9} {'stats':>9} {'stats/s':>8} {'errors':>6} {'wrong':>5}"
       f" {'p50 us':>7} {'p99 us':>7} {'p99.9 us':>8} {'max us':>8} {'p99 ratio':>9} {'cpu busy':>8}")
print(hdr)
print("-" * len(hdr))
for x in rows:
    ratio = ""
    if x["phase"] == "load":
        s = ROW.get((x["mode"], x["pin"], "single"))
        if s and s["p99_us"] and x["p99_us"]:
            x["p99_ratio"] = x["p99_us"] / s["p99_us"]
            x["p99_target_met"] = x["p99_ratio"] <= 2.0
            ratio = f"{x['p99_ratio']:.2f}x {'ok' if x['p99_target_met'] else '!!'}"
    print(f"{x['mode']:<8} {x['pin']:<9} {x['runtimes']:>8} {x['reads']:>9} {x['stats']:>9} {x['stats_per_s']:>8.0f}"
          f" {x['errors']:>6} {x['wrong']:>5} {f2(x['p50_us']):>7} {f2(x['p99_us']):>7} {f2(x['p999_us']):>8}"
          f" {f2(x['max_us']):>8} {ratio:>9} {x['cpu_busy']:>7.0%}")
print("(p99 ratio: p99 of the N runtimes / p99 of the single runtime, same mode and pinning; target <= 2x;"
      " max: the slowest stat's bin; cpu busy: share of the CPUs in use (pinned: CPU 0) not idle during the reading,"
      " other work on the machine included)")

print()
print("Service (worker process) memory, from VmRSS of `pid` in `spfs-vfs status --json`:")
for x in rows:
    if x["phase"] != "load" or "rss_before_kb" not in x:
        continue
    b, g, a = x["rss_before_kb"], x["rss_registered_kb"], x["rss_after_kb"]
    nv = x["runtimes"]
    x["view_kib"] = (g - b) / nv
    x["entry_bytes"] = (g - b) * 1024 / (nv * entries)
    x["view_kib_after"] = (a - b) / nv
    x["entry_bytes_after"] = (a - b) * 1024 / (nv * entries)
    print(f"  {x['mode']:<7} {x['pin']:<9} before {b / 1024:.1f} MiB, {nv} views registered {g / 1024:.1f} MiB,"
          f" after reading {a / 1024:.1f} MiB: per view {x['view_kib']:.0f} KiB registered ({x['entry_bytes']:.0f} B per entry),"
          f" {x['view_kib_after']:.0f} KiB after reading ({x['entry_bytes_after']:.0f} B per entry); keeper {x['keeper_rss_kb'] / 1024:.1f} MiB")
print(f"  (per view = RSS growth / {n} views; per entry = RSS growth / ({n} x {entries}) entries: the names of one view's"
      f" merged tree, files and directories, root excluded, counted on the source trees; 'before' is after the baseline)")

print()
print("Registration and the service under load:")
for x in rows:
    if x["mode"] == "native":
        continue
    extra = ""
    if x["phase"] == "load":
        extra = (f"; worker: {x.get('worker_fds')} fds, {x.get('worker_threads')} threads,"
                 f" {x.get('worker_cpu_registration_s', 0):.2f} s CPU for the registrations")
    print(f"  {x['mode']:<7} {x['pin']:<9} {x['phase']:<6} {x['runtimes']:>3} runtimes all ready {x.get('launch_all_ready_s', 0):.2f} s"
          f" after the first launch (launch to ready per runtime: median {x.get('ready_p50_s', 0) * 1e3:.0f} ms,"
          f" max {x.get('ready_max_s', 0) * 1e3:.0f} ms); {x.get('listed')} listed, {x.get('bound_runtimes')} bound;"
          f" worker CPU {x.get('worker_cpu_s', 0):.1f} s over {x.get('wall_s', 0):.0f} s{extra};"
          f" stats per reader {x['min_reader_stats']}-{x['max_reader_stats']}")
    if "lookups_per_round" in x:
        print(f"  {'':<7} {'':<9} {'':<6} FUSE requests: {x['requests_per_s']:.0f}/s; per reader round (2 opens, 4 stats,"
              f" 1/50 listing): {x['lookups_per_round']:.1f} LOOKUP + {x['other_requests_per_round']:.1f} other;"
              f" worker CPU per request {x.get('worker_cpu_s', 0) / max(1, x['requests_per_s'] * x.get('wall_s', 1)) * 1e6:.0f} us")
    if r_views := x.get("service_views"):
        print(f"  {'':<7} {'':<9} {'':<6} service: {r_views}")
    if "service_lookup_p99_us" in x:
        print(f"  {'':<7} {'':<9} {'':<6} LOOKUP inside the service (status, since it started): p50"
              f" {x['service_lookup_p50_us']:.1f} us, p99 {x['service_lookup_p99_us']:.1f} us")
    want_bound = x["runtimes"] if x["mode"] == "bound" else 0
    if x.get("bound_runtimes") != want_bound:
        print(f"  WARNING: {x['mode']} asked but {x.get('bound_runtimes')} of {x['runtimes']} runtimes are bound")
    if x.get("listed") != x["runtimes"]:
        print(f"  WARNING: {x.get('listed')} runtimes listed, {x['runtimes']} expected")
for block in [f"{m}|{p}" for m in modes for p in pins]:
    c = R.get((block, "log_problems"))
    if c is not None:
        print(f"  {block.replace('|', ' ')}: {c} warning or error lines in the service's log")
for x in rows:
    for s in x["notes"]:
        print(f"  {x['mode']}/{x['pin']}/{x['phase']}: {s}")
    if x["failed"]:
        print(f"  {x['mode']}/{x['pin']}/{x['phase']}: readers failed: {' '.join(x['failed'])}")
if jout:
    with open(jout, "w") as f:
        json.dump({"runtimes": n, "duration_s": duration, "base_duration_s": base_duration, "base_files": base_files,
                   "pause_ms": pause_ms, "entries_per_view": entries, "rows": rows}, f, indent=2)
    print(f"JSON written to {jout}")
print()
print("RESULT: " + ("FAILED: errors, wrong answers or failed readers (above)" if bad else "no error, no wrong answer"))
sys.exit(1 if bad else 0)
EOF
