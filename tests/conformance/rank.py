"""One rank of a conformance run: mpi4py's own test modules, each test's outcome recorded.

Run under ``mpiexec`` (plain, or through ``python -m cmampi.run`` so that the
modules' ``from mpi4py import MPI`` gets cmampi)::

    rank.py TESTDIR OUTDIR SECONDS MODULE [MODULE ...]

With ``CMAMPI_CONFORMANCE_SKIP`` naming a file of ``test id: reason`` lines,
those tests (a line may name a class or module: every test under it) are
skipped with their reason instead of run.

Each rank appends one JSON line per test to ``OUTDIR/rank<R>.jsonl`` as the
test ends, so a run that dies leaves what it finished. A test that runs past
SECONDS prints every thread's stack of this rank and ends the process (then
mpiexec ends the others), rather than hang.
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
import time
import unittest


class Recorder(unittest.TestResult):
    """Writes each test's outcome (ok, fail, error, skip, xfail, xpass) as it ends."""

    def __init__(self, out, seconds: float) -> None:
        super().__init__()
        self.out = out
        self.seconds = seconds
        self.outcome: dict = {}

    def _set(self, test, outcome: str, detail: str = "") -> None:
        key = test.id()
        worse = {"ok": 0, "skip": 1, "xfail": 1, "xpass": 2, "fail": 3, "error": 4}
        old = self.outcome.get(key)
        if old is None or worse[outcome] > worse[old[0]]:
            self.outcome[key] = (outcome, detail[-2000:])

    def startTest(self, test) -> None:
        super().startTest(test)
        self.started = time.perf_counter()
        self.out.write(json.dumps({"start": test.id()}) + "\n")
        self.out.flush()
        faulthandler.dump_traceback_later(self.seconds, exit=True)

    def stopTest(self, test) -> None:
        faulthandler.cancel_dump_traceback_later()
        outcome, detail = self.outcome.pop(test.id(), ("ok", ""))
        self.out.write(json.dumps({"test": test.id(), "outcome": outcome, "detail": detail,
                                   "seconds": time.perf_counter() - self.started}) + "\n")
        self.out.flush()
        super().stopTest(test)

    def addSuccess(self, test) -> None:
        self._set(test, "ok")

    def addFailure(self, test, err) -> None:
        super().addFailure(test, err)
        self._set(test, "fail", self.failures[-1][1])

    def addError(self, test, err) -> None:
        super().addError(test, err)
        self._set(test, "error", self.errors[-1][1])

    def addSkip(self, test, reason) -> None:
        self._set(test, "skip", reason)

    def addExpectedFailure(self, test, err) -> None:
        self._set(test, "xfail")

    def addUnexpectedSuccess(self, test) -> None:
        self._set(test, "xpass")

    def addSubTest(self, test, subtest, err) -> None:
        if err is not None:
            super().addSubTest(test, subtest, err)
            failed = issubclass(err[0], test.failureException)
            self._set(test, "fail" if failed else "error",
                      f"{subtest}: {self._exc_info_to_string(err, test)}")


def read_reasons(path: str) -> dict:
    """``{test id or prefix: reason}`` from a file of ``id: reason`` lines."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                test, _, reason = line.partition(":")
                out[test.strip()] = reason.strip()
    return out


def reason_for(test_id: str, skips: dict):
    """The reason *skips* gives for *test_id*, or for its class or module; else None."""
    parts = test_id.split(".")
    for i in range(len(parts), 0, -1):
        reason = skips.get(".".join(parts[:i]))
        if reason is not None:
            return reason
    return None


def skip_listed(suite, skips: dict) -> None:
    """Mark the tests of *suite* that *skips* names as skipped, with the reason."""
    for test in suite:
        if isinstance(test, unittest.TestSuite):
            skip_listed(test, skips)
            continue
        reason = reason_for(test.id(), skips)
        if reason is not None:
            method = getattr(test, test._testMethodName)
            setattr(test, test._testMethodName, unittest.skip(reason)(method))


def main(argv) -> int:
    testdir, outdir, seconds, modules = argv[0], argv[1], float(argv[2]), argv[3:]
    sys.path.insert(0, testdir)
    sys.dont_write_bytecode = True
    from mpi4py import MPI

    rank = MPI.COMM_WORLD.Get_rank()
    loader = unittest.TestLoader()
    skip_file = os.environ.get("CMAMPI_CONFORMANCE_SKIP")
    skips = read_reasons(skip_file) if skip_file else {}
    with open(os.path.join(outdir, f"rank{rank}.jsonl"), "a", encoding="utf-8") as out:
        result = Recorder(out, seconds)
        for name in modules:
            suite = loader.loadTestsFromName(name)
            skip_listed(suite, skips)
            suite.run(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
