"""The Python start case of bench/vfs.sh (not a test).

A Python start that puts a copy of the stdlib (LIB, a layer made with
`cp -a` of the system's stdlib) first in sys.path and imports a set of
stdlib modules. The interpreter itself, and what it imports before the
command runs (encodings), come from the system; everything the command
imports comes from LIB.

    pystart.py code LIB        print the -c code of the measured start
    pystart.py check PY LIB    run the start once with `PY -v` and print
                               `name value` lines: how many modules came from
                               LIB, how many .pyc files were used and how many
                               modules were compiled from source instead;
                               exit 1 if a measured module did not come
                               from LIB
    pystart.py call CASE PATH N
                               the per-call cases as the issue measured them,
                               through the interpreter: CASE os.stat(PATH),
                               os.path.exists(PATH) (PATH missing) or
                               os.close(os.open(PATH, os.O_RDONLY)), N times
                               after N/10 untimed calls; prints
                               `py_CASE_us <mean per call>`

The measured command is `PY -I -S -B -c "$(pystart.py code LIB)"`:
isolated (no environment, no current directory in sys.path), no site, and
no .pyc written (-B), so repeated runs read the same files natively and
in a view.
"""

import os
import re
import subprocess
import sys

MODULES = [
    "json",
    "email.parser",
    "logging",
    "zipfile",
    "csv",
    "tomllib",
    "urllib.request",
    "concurrent.futures",
    "dataclasses",
    "typing",
]
FLAGS = ["-I", "-S", "-B"]


def code(lib):
    return (
        f"import sys; sys.path[:0] = [{lib!r}, {lib + '/lib-dynload'!r}]; "
        f"import {', '.join(MODULES)}"
    )


# Printed after the start by the checked run: where each module came from.
REPORT = """
import json as _j, sys as _s
_s.stdout.write(_j.dumps({n: getattr(m, '__file__', None) for n, m in list(_s.modules.items())}))
"""


def check(py, lib):
    lib = os.path.normpath(lib)
    p = subprocess.run(
        [py, *FLAGS, "-v", "-c", code(lib) + "\n" + REPORT],
        capture_output=True,
        text=True,
        check=False,
    )
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-4000:])
        print(f"pystart: {py} failed with status {p.returncode}", file=sys.stderr)
        return 1
    import json

    files = json.loads(p.stdout)
    prefix = lib + "/"
    bad = [
        f"{m} from {files.get(m)}"
        for m in MODULES
        if not (files.get(m) or "").startswith(prefix)
    ]
    from_lib = sorted(n for n, f in files.items() if f and f.startswith(prefix))
    elsewhere = sorted(n for n, f in files.items() if f and not f.startswith(prefix))
    # python -v: "# X.pyc matches X.py" when a .pyc is used,
    # "# code object from 'X.py'" when a module is compiled from source,
    # "# extension module 'm' loaded from 'X.so'".
    used = compiled = ext = 0
    for line in p.stderr.splitlines():
        if re.match(rf"# {re.escape(prefix)}\S*\.pyc matches ", line):
            used += 1
        elif re.match(rf"# code object from '?{re.escape(prefix)}\S*\.py'?$", line):
            compiled += 1
        elif re.match(rf"# extension module '\S+' loaded from '{re.escape(prefix)}", line):
            ext += 1
    print(f"pystart_modules_from_lib {len(from_lib)}")
    print(f"pystart_modules_elsewhere {len(elsewhere)} {','.join(elsewhere)}")
    print(f"pystart_pycs_used {used}")
    print(f"pystart_compiled {compiled}")
    print(f"pystart_extensions {ext}")
    if bad:
        print("pystart: not imported from " + lib + ": " + "; ".join(bad), file=sys.stderr)
        return 1
    return 0


def call(case, path, n):
    from time import perf_counter

    if case == "py_stat":
        st = os.stat
        f = lambda: st(path)  # noqa: E731
    elif case == "py_missing":
        if os.path.exists(path):
            print(f"pystart: {path} exists", file=sys.stderr)
            return 1
        ex = os.path.exists
        f = lambda: ex(path)  # noqa: E731
    elif case == "py_openclose":
        op, cl, rd = os.open, os.close, os.O_RDONLY
        f = lambda: cl(op(path, rd))  # noqa: E731
    else:
        print(__doc__, file=sys.stderr)
        return 2
    f()
    for _ in range(n // 10):
        f()
    r = range(n)
    t = perf_counter()
    for _ in r:
        f()
    t = perf_counter() - t
    print(f"{case}_us {t * 1e6 / n:.3f} us")
    return 0


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "code":
        print(code(os.path.normpath(sys.argv[2])))
        return 0
    if len(sys.argv) == 4 and sys.argv[1] == "check":
        return check(sys.argv[2], sys.argv[3])
    if len(sys.argv) == 5 and sys.argv[1] == "call":
        return call(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
