# Shared by the benchmark scripts (sourced; defines functions only).

# is_mounted PATH: whether something is mounted at PATH.
is_mounted() { awk -v m="$1" '$5 == m { f = 1 } END { exit !f }' /proc/self/mountinfo; }

# stop_pid PID [wait]: ask PID to end (SIGTERM, unless "wait": it was asked
# already), wait up to 5 s, then kill it.
stop_pid() {
	[ "${2:-}" = wait ] || kill "$1" 2>/dev/null || true
	for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.05; done
	kill -9 "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

# remove_cgroups ROOT: kill the runtimes left under cgroup ROOT (bound ones
# hold their mount namespace), then remove their cgroups, deepest first,
# and ROOT itself.
remove_cgroups() {
	[ -n "$1" ] && [ -d "$1" ] || return 0
	find "$1" -mindepth 1 -depth -type d -exec sh -c 'echo 1 >"$1/cgroup.kill"' _ {} \; 2>/dev/null
	for _ in $(seq 100); do
		find "$1" -mindepth 1 -depth -type d -exec rmdir {} \; 2>/dev/null
		rmdir "$1" 2>/dev/null && break
		sleep 0.05
	done
}

# make_small_tree DIR COUNT: COUNT files of 4 KiB random bytes in 200
# directories, DIR/dNNN/fNNN.
make_small_tree() {
	local dir=$1 count=$2 ndirs=200 n=0 d c sub
	local per_dir=$(((count + ndirs - 1) / ndirs))
	mkdir -p "$dir"
	openssl rand -out "$dir.rand" $((count * 4096))
	for d in $(seq 0 $((ndirs - 1))); do
		[ $n -ge "$count" ] && break
		c=$((count - n < per_dir ? count - n : per_dir))
		sub=$(printf '%s/d%03d' "$dir" "$d")
		mkdir -p "$sub"
		dd if="$dir.rand" bs=4096 skip=$n count=$c status=none | split -b 4096 -a 3 -d - "$sub/f"
		n=$((n + c))
	done
	rm -f "$dir.rand"
	[ "$(find "$dir" -type f | wc -l)" = "$count" ] || { echo "data generation failed" >&2; return 1; }
}

# quick Q FULL: Q with BENCH_QUICK set (a short run), FULL otherwise.
quick() { if [ -n "${BENCH_QUICK:-}" ]; then echo "$1"; else echo "$2"; fi; }

# bench_options WHY_ROOT ARGS...: the options every bench takes (--quick:
# a short run; -h: the script's header), and the check that it runs as
# root (WHY_ROOT says why).
bench_options() {
	local why=$1
	shift
	for a in "$@"; do
		case $a in
		--quick) BENCH_QUICK=1 ;;
		-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
		*) echo "usage: $0 [--quick]" >&2; exit 2 ;;
		esac
	done
	if [ "$(id -u)" != 0 ]; then
		echo "$0 must run as root ($why)" >&2
		exit 1
	fi
}

# bench_world_env DIR MOUNTPOINT CGROUP_ROOT: the environment of a bench's
# own repository, service and mount in DIR (no user configuration).
bench_world_env() {
	: >"$1/empty.toml"
	export SPFS_CONFIG="$1/empty.toml" HOME="$1" \
		SPFS_STORAGE_ROOT="$1/repo" SPFS_VFS_MOUNTPOINT="$2" \
		SPFS_VFS_LISTEN="unix:$1/vfs.sock" SPFS_VFS_LOG_FILE="$1/vfs.log" \
		SPFS_VFS_CGROUP_ROOT="$3" SPFS_VFS_TOKEN_FILE="$1/token"
	unset SPFS_RUNTIME SPFS_VFS_CACHE_OPENS SPFS_VFS_BIND_VIEWS SPFS_VFS_PASSTHROUGH
}
