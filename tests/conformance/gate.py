"""Conformance gate: mpi4py's own test suite, on plain mpi4py and on cmampi, compared.

    python tests/conformance/gate.py [--sizes 1,2,3] [--modules test_p2p_obj ...]
                                     [--mpiexec "mpiexec --oversubscribe"] [--socket]

Fetches the ``test/`` folder of the sdist of the installed mpi4py's version
(once, into ``.cache/``), then for each number of ranks runs the modules twice
under ``mpiexec``: plainly, and through ``python -m cmampi.run`` (``--socket``:
through ``python -m cmampi --mpi4py``, the socket channel, instead of plain
mpi4py alone). A test that passes on plain mpi4py must pass on cmampi: a new
failure, error, skip or hang is a regression, unless ``expected.txt`` beside this
file names it with its reason. Prints a table per module; exits 1 on any
regression. A rank stuck in a test prints its stack and the run goes on with
the next module.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from pathlib import Path
from typing import Dict, List, Tuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RANK = HERE / "rank.py"
_WORSE = {o: i for i, o in enumerate(("ok", "xfail", "skip", "xpass", "fail", "error", "hang"))}


def fetch_tests(version: str) -> Path:
    """The ``test/`` folder of mpi4py's sdist of *version*, downloaded once."""
    dest = ROOT / ".cache" / f"mpi4py-{version}"
    if (dest / "test" / "mpiunittest.py").exists():
        return dest / "test"
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--no-binary", "mpi4py", f"mpi4py=={version}", "-d", tmp], check=True)
        (sdist,) = Path(tmp).glob("mpi4py-*.tar.gz")
        with tarfile.open(sdist) as tar:
            prefix = f"mpi4py-{version}/test/"
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            for m in members:
                m.name = m.name[len(prefix):]
            dest.mkdir(parents=True, exist_ok=True)
            tar.extractall(dest / "test", members=members)   # noqa: S202 - PyPI's sdist
    return dest / "test"


def expected_failures() -> Dict[str, str]:
    """Tests allowed to differ on cmampi: ``test id: reason`` lines of expected.txt."""
    path = HERE / "expected.txt"
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                test, _, reason = line.partition(":")
                out[test.strip()] = reason.strip()
    return out


def _read(outdir: Path) -> Tuple[Dict[str, Tuple[str, str]], List[str]]:
    """Worst outcome of each test over the ranks, and the tests a rank started but
    never ended (it hung or crashed)."""
    results: Dict[str, Tuple[str, str]] = {}
    unfinished = []
    for path in outdir.glob("rank*.jsonl"):
        started = None
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if "start" in rec:
                started = rec["start"]
                continue
            started = None
            old = results.get(rec["test"])
            if old is None or _WORSE[rec["outcome"]] > _WORSE[old[0]]:
                results[rec["test"]] = (rec["outcome"], rec["detail"])
        if started is not None:
            unfinished.append(started)
    return results, unfinished


def run(launch: List[str], testdir: Path, modules: List[str], seconds: float,
        retry: bool = True) -> Dict[str, Tuple[str, str]]:
    """Each test's outcome over the ranks of *launch* (a command prefix). A module
    that hangs is run once more on its own: if it passes then, its tests count as
    passed, and the hang is reported (``FLAKY``), not hidden."""
    results = _run_once(launch, testdir, modules, seconds)
    if retry:
        hung = sorted({t.split(".")[0] for t, (o, _) in results.items() if o == "hang"})
        for module in hung:
            again = _run_once(launch, testdir, [module], seconds)
            if not any(o in ("fail", "error", "hang") for o, _ in again.values()):
                stuck = [t for t, (o, _) in results.items() if o == "hang"]
                print(f"FLAKY: {module} hung in {', '.join(stuck)} "
                      f"({' '.join(launch[:-1])}), then passed when run again alone")
                results = {t: r for t, r in results.items() if t.split(".")[0] != module}
                results.update(again)
    return results


def _run_once(launch: List[str], testdir: Path, modules: List[str], seconds: float
              ) -> Dict[str, Tuple[str, str]]:
    results: Dict[str, Tuple[str, str]] = {}
    todo = list(modules)
    while todo:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = launch + [str(RANK), str(testdir), tmp, str(seconds), *todo]
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, errors="replace",
                                  timeout=seconds * 4 + 60 * len(todo))
            got, unfinished = _read(Path(tmp))
        results.update(got)
        done = {t.split(".")[0] for t in got} | {t.split(".")[0] for t in unfinished}
        if proc.returncode == 0 and not unfinished:
            break
        # The run ended early: its last module is what stopped it.
        last = max((todo.index(m) for m in done if m in todo), default=0)
        stuck = todo[last]
        for test in unfinished:
            results[test] = ("hang", proc.stdout[-4000:])
        if not unfinished:
            results[f"{stuck}.<module>"] = ("error", proc.stdout[-4000:])
        todo = todo[last + 1:]
    return results


def table(sizes, plain, ours, modules) -> str:
    """Per module and size: plain's and cmampi's counts, and whether it is clean."""
    rows = ["| module | ranks | mpi4py ok/fail/skip | cmampi ok/fail/skip | clean |",
            "|---|---|---|---|---|"]
    for m in modules:
        for n in sizes:
            def counts(res):
                c = Counter(o for t, (o, _) in res[n].items() if t.split(".")[0] == m)
                bad = c["fail"] + c["error"] + c["hang"] + c["xpass"]
                return f"{c['ok'] + c['xfail']}/{bad}/{c['skip']}"
            regress = [t for t in regressions(plain[n], ours[n], {}) if t.split(".")[0] == m]
            rows.append(f"| {m} | {n} | {counts(plain)} | {counts(ours)} | "
                        f"{'yes' if not regress else 'no (%d)' % len(regress)} |")
    return "\n".join(rows)


def regressions(plain, ours, allowed) -> List[str]:
    """Tests that passed (or were skipped) on plain mpi4py and do worse on cmampi."""
    out = []
    for test, (outcome, _) in plain.items():
        mine = ours.get(test, ("missing", ""))[0]
        if test in allowed or mine == outcome:
            continue
        if outcome in ("ok", "xfail") and mine not in ("ok", "xfail"):
            out.append(test)
        elif outcome == "skip" and mine not in ("ok", "skip"):
            out.append(test)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1,2,3")
    p.add_argument("--modules", nargs="*", help="default: every test_*.py module")
    p.add_argument("--exclude", nargs="*", default=[], help="modules not to run")
    p.add_argument("--mpiexec", default=os.environ.get("MPIEXEC", "mpiexec"))
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per test")
    args = p.parse_args(argv)
    import mpi4py

    testdir = fetch_tests(mpi4py.__version__)
    modules = args.modules or sorted(f.stem for f in testdir.glob("test_*.py"))
    modules = [m for m in modules if m not in args.exclude]
    sizes = [int(n) for n in args.sizes.split(",")]
    allowed = expected_failures()
    plain, ours, bad = {}, {}, {}
    for n in sizes:
        launch = shlex.split(args.mpiexec) + ["-n", str(n), sys.executable]
        plain[n] = run(launch, testdir, modules, args.timeout)
        ours[n] = run(launch + ["-m", "cmampi.run"], testdir, modules, args.timeout)
        bad[n] = regressions(plain[n], ours[n], allowed)
    print(table(sizes, plain, ours, modules))
    failed = False
    for n in sizes:
        for test in bad[n]:
            failed = True
            outcome, detail = ours[n].get(test, ("missing", ""))
            print(f"\n== regression at {n} ranks: {test}: {outcome}\n{detail}")
    total = sum(len(ours[n]) for n in sizes)
    print(f"\nconformance: {sum(len(b) for b in bad.values())} regressions in {total} "
          f"test runs on cmampi ({', '.join(map(str, sizes))} ranks)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
