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
