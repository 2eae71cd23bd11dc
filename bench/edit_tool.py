#!/usr/bin/env python3
"""Timed work for bench/edit.sh, the same tool natively and in a runtime.

  edit_tool.py create DIR FILES DIRS SVC_PID
      FILES files of 4 KiB in DIRS directories DIR/dNN/fNNNNN (made here),
      each os.open(O_CREAT|O_EXCL|O_WRONLY) + one os.write + os.close.
      Every file's bytes differ (a fresh random block per call, the file's
      number in its first 8 bytes), so no commit finds them stored already.
  edit_tool.py run SVC_PID CMD...
      CMD, timed.

Both print one line: `elapsed_s=S svc_cpu_s=C own_cpu_s=O`: the wall time
of the work, the CPU time the VFS service (SVC_PID; 0: none) used meanwhile
(all its threads), and the CPU time of this process's work (create: this
process; run: CMD and its children); create adds `svc_fds=N`, the
descriptors the service holds once the files exist (SVC_PID given).
"""

import os
import subprocess
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def svc_cpu(pid):
    """utime + stime of process PID (all its threads), in seconds."""
    if pid == 0:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime, stime are fields 14, 15.
    return (int(fields[11]) + int(fields[12])) / TICK


def report(elapsed, svc, own, pid=0):
    # create: how many descriptors the service holds once the files exist.
    fds = f" svc_fds={len(os.listdir(f'/proc/{pid}/fd'))}" if pid else ""
    print(f"elapsed_s={elapsed:.6f} svc_cpu_s={svc:.3f} own_cpu_s={own:.3f}{fds}")


def create(top, nfiles, ndirs, pid):
    block = bytearray(os.urandom(4096))
    per = (nfiles + ndirs - 1) // ndirs
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC
    c0, t0 = svc_cpu(pid), os.times()
    start = time.perf_counter()
    os.mkdir(top)
    n = 0
    for d in range(ndirs):
        sub = f"{top}/d{d:02d}"
        os.mkdir(sub)
        for _ in range(min(per, nfiles - n)):
            block[0:8] = n.to_bytes(8, "little")
            fd = os.open(f"{sub}/f{n:05d}", flags, 0o644)
            if os.write(fd, block) != 4096:
                sys.exit("short write")
            os.close(fd)
            n += 1
    elapsed = time.perf_counter() - start
    t1 = os.times()
    report(elapsed, svc_cpu(pid) - c0, (t1.user - t0.user) + (t1.system - t0.system), pid)


def run(pid, cmd):
    c0, t0 = svc_cpu(pid), os.times()
    start = time.perf_counter()
    rc = subprocess.call(cmd, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    t1 = os.times()
    if rc != 0:
        sys.exit(f"{' '.join(cmd)}: exit status {rc}")
    own = (t1.children_user - t0.children_user) + (t1.children_system - t0.children_system)
    report(elapsed, svc_cpu(pid) - c0, own)


def main():
    if len(sys.argv) >= 6 and sys.argv[1] == "create":
        create(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    elif len(sys.argv) >= 4 and sys.argv[1] == "run":
        run(int(sys.argv[2]), sys.argv[3:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
