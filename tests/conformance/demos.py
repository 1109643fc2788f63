"""mpi4py's demo programs with the import line changed: they must run as on mpi4py.

    python tests/conformance/demos.py [--mpiexec "mpiexec --oversubscribe"] [--only mpi-ref-v1]
                                      [--ranks 2]

Fetches the ``demo/`` folder of the sdist of the installed mpi4py's version
(once, into ``.cache/``), copies it with every ``from mpi4py import MPI`` made
``from cmampi import MPI``, and runs each program of `DEMOS` under ``mpiexec``
twice, as published and as changed (programs run by a library's launcher,
``-m mpi4py.futures``, go through ``python -m cmampi.run`` instead). A program
that exits 0 on mpi4py, printing no traceback, must do so on cmampi, unless
`EXPECTED` names it with its reason; one that fails on mpi4py leaves nothing to
compare with and fails the check too. Prints one line per run; exits 1 on any
regression or failed reference, or if nothing ran.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from gate import ROOT, fetch

#: (folder, program and arguments, ranks): every demo that runs unattended on one
#: node (no compilers, no spawning, no network services).
DEMOS: list[tuple[str, list[str], int]] = [
    (".", ["helloworld.py"], 1),
    (".", ["helloworld.py"], 3),
    *[("mpi-ref-v1", [f"ex-{k}.py"], n)
      for k in ("2.01", "2.08", "2.16", "2.29", "2.32", "2.34", "2.35", "3.01", "3.02",
                "3.03", "3.04", "3.05", "3.06", "3.07", "3.08", "3.09", "3.11", "3.12", "3.13")
      for n in (2, 3)],
    ("compute-pi", ["cpi-cco.py"], 3),
    ("compute-pi", ["cpi-rma.py"], 3),
    *[("nxtval", [f"nxtval-{k}.py"], 3) for k in ("threads", "onesided", "scalable", "mpi3")],
    ("reductions", ["test_reductions.py", "-q"], 3),
    ("sequential", ["test_seq.py"], 3),
    ("mandelbrot", ["mandelbrot.py"], 3),
    ("threads", ["sendrecv.py"], 2),
    # mpi4py.futures, on cmampi through ``python -m cmampi.run`` (which makes
    # ``mpi4py.MPI`` cmampi's for the library too); its own tests among them.
    *[("futures", ["-m", "mpi4py.futures", f"{k}.py"], 3)
      for k in ("run_hello", "run_primes", "run_cpi", "run_julia", "run_mandelbrot",
                "test_futures")],
    *[("init-fini", [f"test_{k}.py"], 2) for k in ("0", "1", "2", "3", "4", "5", "6", "mpi40")],
]

#: Runs allowed to fail on cmampi: "folder/program": reason.
EXPECTED: dict[str, str] = {}

_IMPORT = re.compile(r"^(\s*)from mpi4py import MPI\b", re.MULTILINE)


def changed_copy(demo: Path, dest: Path) -> Path:
    """A copy of *demo* whose programs import cmampi's ``MPI``."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(demo, dest)
    for path in dest.rglob("*.py"):
        text = path.read_text()
        if _IMPORT.search(text):
            path.write_text(_IMPORT.sub(r"\1from cmampi import MPI", text))
    return dest


def run(mpiexec: list[str], where: Path, argv: list[str], n: int, timeout: float,
        path: list[str]) -> str:
    """``ok``, ``exit N``, ``traceback`` (exit 0, but a thread's exception) or
    ``hang`` of one run (stdin empty: prompts read EOF; *path* before PYTHONPATH)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT), *path, os.environ.get("PYTHONPATH")])))
    try:
        done = subprocess.run([*mpiexec, "-n", str(n), sys.executable, *argv], cwd=where,
                              env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return "hang"
    if done.returncode:
        return f"exit {done.returncode}"
    return "traceback" if b"Traceback" in done.stdout + done.stderr else "ok"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mpiexec", default=os.environ.get("MPIEXEC", "mpiexec"))
    p.add_argument("--only", nargs="*", help="folders to run (default: all of DEMOS)")
    p.add_argument("--ranks", nargs="*", type=int, help="numbers of ranks to run (default: all)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per run")
    args = p.parse_args()
    import mpi4py

    demo = fetch(mpi4py.__version__, "demo")
    ours = changed_copy(demo, demo.parent / "demo-cmampi")
    path = [str(fetch(mpi4py.__version__, "test"))]     # mpitestutil, for test_futures
    mpiexec = shlex.split(args.mpiexec)
    regressions = allowed = runs = broken = 0
    t0 = time.monotonic()
    for folder, argv, n in DEMOS:
        if (args.only and folder not in args.only) or (args.ranks and n not in args.ranks):
            continue
        name = f"{folder}/{argv[-1] if argv[0] == '-m' else argv[0]}".removeprefix("./")
        plain = run(mpiexec, demo / folder, argv, n, args.timeout, path)
        if argv[0] == "-m":     # a library's launcher: on cmampi through cmampi.run
            mine = run(mpiexec, demo / folder, ["-m", "cmampi.run", *argv], n, args.timeout, path)
        else:
            mine = run(mpiexec, ours / folder, argv, n, args.timeout, path)
        runs += 1
        verdict = "ok"
        if plain != "ok":   # nothing to compare with: the setup is broken, not cmampi
            verdict, broken = "MPI4PY FAILED: no reference", broken + 1
        elif mine != "ok":
            if name in EXPECTED:
                verdict, allowed = f"expected: {EXPECTED[name]}", allowed + 1
            else:
                verdict, regressions = "REGRESSION", regressions + 1
        print(f"{name:32} -n {n}  mpi4py: {plain:8} cmampi: {mine:8} {verdict}", flush=True)
    print(f"demos: {regressions} regressions in {runs} runs of mpi4py's demos on cmampi "
          f"({allowed} allowed by EXPECTED, {broken} failing on mpi4py itself, "
          f"{time.monotonic() - t0:.0f} s)")
    return 1 if regressions or broken or not runs else 0


if __name__ == "__main__":
    sys.exit(main())
