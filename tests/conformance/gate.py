"""Conformance gate: mpi4py's own test suite, on plain mpi4py and on cmampi, compared.

    python tests/conformance/gate.py [--sizes 1,2,3] [--modules test_p2p_obj ...]
                                     [--mpiexec "mpiexec --oversubscribe"] [--socket]

Fetches the ``test/`` folder of the sdist of the installed mpi4py's version
(once, into ``.cache/``), then for each number of ranks runs the modules twice
under ``mpiexec``: plainly, and through ``python -m cmampi.run`` (``--socket``:
through ``python -m cmampi --mpi4py``, the socket channel, instead of plain
mpi4py alone). A test that passes on plain mpi4py must pass on cmampi: a new
failure, error, skip or hang is a regression, unless ``expected.txt`` beside this
file names it with its reason. On the socket channel, the tests (or classes, or
modules) ``socket-skips.txt`` names are skipped, each with its reason: they need
what only an MPI library has. Prints a table per module; exits 1 on any
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RANK = HERE / "rank.py"
SOCKET_SKIPS = HERE / "socket-skips.txt"
sys.path.insert(0, str(HERE))
from rank import read_reasons, reason_for  # noqa: E402

_WORSE = {o: i for i, o in enumerate(("ok", "xfail", "skip", "xpass", "fail", "error", "hang"))}


def fetch_tests(version: str) -> Path:
    """The ``test/`` folder of mpi4py's sdist of *version*, downloaded once."""
    return fetch(version, "test")


def fetch(version: str, folder: str) -> Path:
    """Folder *folder* of mpi4py's sdist of *version*, downloaded once."""
    dest = ROOT / ".cache" / f"mpi4py-{version}"
    marker = dest / folder / ".complete"
    if marker.exists() or (folder == "test" and (dest / "test" / "mpiunittest.py").exists()):
        return dest / folder
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--no-binary", "mpi4py", f"mpi4py=={version}", "-d", tmp], check=True)
        (sdist,) = Path(tmp).glob("mpi4py-*.tar.gz")
        with tarfile.open(sdist) as tar:
            prefix = f"mpi4py-{version}/{folder}/"
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            for m in members:
                m.name = m.name[len(prefix):]
            dest.mkdir(parents=True, exist_ok=True)
            tar.extractall(dest / folder, members=members)
    marker.touch()
    return dest / folder


def expected_failures() -> dict[str, str]:
    """Tests allowed to differ on cmampi: ``test id: reason`` lines of expected.txt."""
    return read_reasons(str(HERE / "expected.txt"))


def _read(outdir: Path) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """Worst outcome of each test over the ranks, and the tests a rank started but
    never ended (it hung or crashed)."""
    results: dict[str, tuple[str, str]] = {}
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


def run_plain(launch: list[str], testdir: Path, modules: list[str], seconds: float,
              n: int) -> dict[str, tuple[str, str]]:
    """`run` on plain mpi4py, each module's outcomes kept in ``.cache/conformance``
    for this environment (its Python prefix, hence its MPI library and mpi4py,
    and launcher): a later gate in the same checkout (the socket channel's)
    compares with them instead of running them again."""
    import hashlib

    import mpi4py

    key = hashlib.sha256(f"{sys.prefix}|{mpi4py.__version__}|{launch}".encode()).hexdigest()
    path = ROOT / ".cache" / "conformance" / f"plain-{key[:16]}-n{n}.json"
    kept = json.loads(path.read_text()) if path.exists() else {}
    todo = [m for m in modules if m not in kept]
    if todo:
        for test, outcome in run(launch, testdir, todo, seconds).items():
            kept.setdefault(test.split(".")[0], {})[test] = outcome
        for m in todo:
            kept.setdefault(m, {})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(kept))
    return {t: tuple(o) for m in modules for t, o in kept[m].items()}   # type: ignore[misc]


def run(launch: list[str], testdir: Path, modules: list[str], seconds: float,
        retry: bool = True, env: dict[str, str] | None = None
        ) -> dict[str, tuple[str, str]]:
    """Each test's outcome over the ranks of *launch* (a command prefix). A module
    that hangs is run once more on its own: if it passes then, its tests count as
    passed, and the hang is reported (``FLAKY``), not hidden."""
    results = _run_once(launch, testdir, modules, seconds, env)
    if retry:
        hung = sorted({t.split(".")[0] for t, (o, _) in results.items() if o == "hang"})
        for module in hung:
            again = _run_once(launch, testdir, [module], seconds, env)
            if not any(o in ("fail", "error", "hang") for o, _ in again.values()):
                stuck = [t for t, (o, _) in results.items() if o == "hang"]
                print(f"FLAKY: {module} hung in {', '.join(stuck)} "
                      f"({' '.join(launch[:-1])}), then passed when run again alone")
                results = {t: r for t, r in results.items() if t.split(".")[0] != module}
                results.update(again)
    return results


def _run_once(launch: list[str], testdir: Path, modules: list[str], seconds: float,
              env: dict[str, str] | None = None) -> dict[str, tuple[str, str]]:
    results: dict[str, tuple[str, str]] = {}
    todo = list(modules)
    while todo:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [*launch, str(RANK), str(testdir), tmp, str(seconds), *todo]
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, errors="replace", env=env,
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


def table(sizes, plain, ours, modules, allowed) -> str:
    """Per module and size: plain's and cmampi's counts, and whether it is clean
    (differences the lists beside this file allow, counted apart)."""
    rows = ["| module | ranks | mpi4py ok/fail/skip | cmampi ok/fail/skip | clean |",
            "|---|---|---|---|---|"]
    for m in modules:
        for n in sizes:
            def counts(res, n=n, m=m):
                c = Counter(o for t, (o, _) in res[n].items() if t.split(".")[0] == m)
                bad = c["fail"] + c["error"] + c["hang"] + c["xpass"]
                return f"{c['ok'] + c['xfail']}/{bad}/{c['skip']}"
            differ = [t for t in regressions(plain[n], ours[n], {}) if t.split(".")[0] == m]
            listed = sum(reason_for(t, allowed) is not None for t in differ)
            clean = "yes" if len(differ) == listed else f"no ({len(differ) - listed})"
            rows.append(f"| {m} | {n} | {counts(plain)} | {counts(ours)} | {clean}"
                        f"{f' ({listed} listed)' if listed else ''} |")
    return "\n".join(rows)


def regressions(plain, ours, allowed) -> list[str]:
    """Tests that passed (or were skipped) on plain mpi4py and do worse on cmampi."""
    out = []
    for test, (outcome, _) in plain.items():
        mine = ours.get(test, ("missing", ""))[0]
        if reason_for(test, allowed) is not None or mine == outcome:
            continue
        if ((outcome in ("ok", "xfail") and mine not in ("ok", "xfail"))
                or (outcome == "skip" and mine not in ("ok", "skip"))):
            out.append(test)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1,2,3")
    p.add_argument("--modules", nargs="*", help="default: every test_*.py module")
    p.add_argument("--exclude", nargs="*", default=[], help="modules not to run")
    p.add_argument("--mpiexec", default=os.environ.get("MPIEXEC", "mpiexec"))
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per test")
    p.add_argument("--socket", action="store_true",
                   help="run cmampi on its socket channel (python -m cmampi --mpi4py, with "
                   "mpi4py blocked) instead of through mpiexec")
    args = p.parse_args(argv)
    import mpi4py

    testdir = fetch_tests(mpi4py.__version__)
    modules = args.modules or sorted(f.stem for f in testdir.glob("test_*.py"))
    modules = [m for m in modules if m not in args.exclude]
    sizes = [int(n) for n in args.sizes.split(",")]
    allowed = expected_failures()
    plain, ours, bad = {}, {}, {}
    env = None
    if args.socket:
        allowed.update(read_reasons(str(SOCKET_SKIPS)))
        env = dict(os.environ, CMAMPI_CONFORMANCE_SKIP=str(SOCKET_SKIPS),
                   PYTHONPATH=os.pathsep.join(filter(None, [
                       str(ROOT / "tests" / "no_mpi4py"), os.environ.get("PYTHONPATH")])))
    for n in sizes:
        launch = [*shlex.split(args.mpiexec), "-n", str(n), sys.executable]
        plain[n] = run_plain(launch, testdir, modules, args.timeout, n)
        if args.socket:
            mine = [sys.executable, "-m", "cmampi", "-n", str(n), "--timeout",
                    str(int(args.timeout * 4 + 60 * len(modules))), "--mpi4py"]
        else:
            mine = [*launch, "-m", "cmampi.run"]
        ours[n] = run(mine, testdir, modules, args.timeout, env=env)
        bad[n] = regressions(plain[n], ours[n], allowed)
    print(table(sizes, plain, ours, modules, allowed))
    failed = False
    for n in sizes:
        for test in bad[n]:
            failed = True
            outcome, detail = ours[n].get(test, ("missing", ""))
            print(f"\n== regression at {n} ranks: {test}: {outcome}\n{detail}")
    total = sum(len(ours[n]) for n in sizes)
    channel = "cmampi's socket channel" if args.socket else "cmampi"
    listed = sum(reason_for(t, allowed) is not None
                 for n in sizes for t in regressions(plain[n], ours[n], {}))
    print(f"\nconformance: {sum(len(b) for b in bad.values())} regressions in {total} "
          f"test runs on {channel} ({', '.join(map(str, sizes))} ranks; {listed} "
          f"differences the lists beside gate.py allow)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
