"""The launcher, ``python -m cmampi``: environment, output, exit codes, signals, timeout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from jobenv import job_env

LIMIT = 20  # seconds any launcher may take in these tests


def _env(*paths) -> dict:
    env = job_env(*paths)
    env.pop("PYTHONUNBUFFERED", None)
    return env


def launch(*args, env=None, input=None, timeout=LIMIT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cmampi", *map(str, args)], env=env or _env(),
                          input=input, capture_output=True, text=True, timeout=timeout)


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cmampi", *map(str, args)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def program(tmp_path: Path, body: str, *, helpers: bool = False) -> Path:
    """A rank program in *tmp_path*; with *helpers*, after ``REPORT``'s definitions."""
    path = tmp_path / "prog.py"
    path.write_text((textwrap.dedent(REPORT) if helpers else "") + textwrap.dedent(body))
    return path


def wait_for(path: Path, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)
    return path.read_text()


def gone(pid: int, timeout: float = 5.0) -> bool:
    """Whether *pid* has exited (a zombie counts as exited), waiting up to *timeout*."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] == "Z":
                    return True
        except (ProcessLookupError, FileNotFoundError):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


# Rank programs with helpers: the first argument is a directory for their reports.
REPORT = """
    import os, sys, time
    out = sys.argv[1]
    rank = os.environ["CMAMPI_RANK"]
    def report(name, text):
        tmp = os.path.join(out, name + ".tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(out, name))
"""

SLEEPER = """
    report("pid-" + rank, str(os.getpid()))
    report("dir-" + rank, os.environ["CMAMPI_DIR"])
    time.sleep(60)
"""


# -- environment and rendezvous directory ---------------------------------------------------
def test_environment(tmp_path):
    prog = program(tmp_path, """
        import json, os, stat, time
        d = os.environ["CMAMPI_DIR"]
        pids = os.path.join(d, "pids")
        deadline = time.monotonic() + 10
        while not os.path.exists(pids) and time.monotonic() < deadline:
            time.sleep(0.01)
        with open(pids) as f:
            listed = [int(x) for x in f.read().split("\\n") if x]
        st = os.stat(d)
        print(json.dumps({
            "env": {k: v for k, v in os.environ.items() if k.startswith("CMAMPI_")},
            "pid": os.getpid(), "ppid": os.getppid(), "pids": listed,
            "isdir": stat.S_ISDIR(st.st_mode), "mode": stat.S_IMODE(st.st_mode),
            "owner": st.st_uid == os.getuid(),
        }))
    """)
    res = launch("-n", 3, prog)
    assert res.returncode == 0, res.stderr
    reports = sorted((json.loads(line) for line in res.stdout.splitlines()),
                     key=lambda r: int(r["env"]["CMAMPI_RANK"]))
    assert [r["env"]["CMAMPI_RANK"] for r in reports] == ["0", "1", "2"]
    pids = [r["pid"] for r in reports]
    for r in reports:
        env = r["env"]
        assert env["CMAMPI_CHANNEL"] == "socket"
        assert env["CMAMPI_SIZE"] == "3"
        assert int(env["CMAMPI_LAUNCHER_PID"]) == r["ppid"]
        assert len(env["CMAMPI_TOKEN"]) == 32 and int(env["CMAMPI_TOKEN"], 16) >= 0
        assert os.path.basename(env["CMAMPI_DIR"]).startswith("cmampi-")
        assert r["isdir"] and r["owner"] and r["mode"] == 0o700
        assert r["pids"] == pids  # in rank order
    for key in ("CMAMPI_DIR", "CMAMPI_TOKEN", "CMAMPI_LAUNCHER_PID"):
        assert len({r["env"][key] for r in reports}) == 1, key
    assert not os.path.exists(reports[0]["env"]["CMAMPI_DIR"])


def test_jobs_get_fresh_directories_and_tokens(tmp_path):
    prog = program(tmp_path, """
        import os
        print(os.environ["CMAMPI_DIR"], os.environ["CMAMPI_TOKEN"])
    """)
    first, second = launch("-n", 1, prog), launch("-n", 1, prog)
    a, b = first.stdout.split(), second.stdout.split()
    assert a[0] != b[0] and a[1] != b[1]


# -- output ---------------------------------------------------------------------------------
LINES = """
    import os, sys
    rank = int(os.environ["CMAMPI_RANK"])
    for i in range(200):
        print(f"out {rank} {i} " + "x" * 3000, flush=True)
        print(f"err {rank} {i}", file=sys.stderr, flush=True)
"""


@pytest.mark.parametrize("tag", [False, True])
def test_output_forwarded_whole_lines(tmp_path, tag):
    prog = program(tmp_path, LINES)
    res = launch("-n", 3, *(["--tag-output"] if tag else []), prog)
    assert res.returncode == 0, res.stderr
    for stream, kind, tail in ((res.stdout, "out", " " + "x" * 3000), (res.stderr, "err", "")):
        seen = {r: [] for r in range(3)}
        for line in stream.splitlines():
            if tag:
                prefix, _, line = line.partition("] ")
                r = int(prefix.lstrip("["))
            parts = line.split(" ", 3)
            assert parts[0] == kind and line == " ".join(parts[:3]) + tail, line[:80]
            rank = int(parts[1])
            if tag:
                assert rank == r
            seen[rank].append(int(parts[2]))
        assert all(v == list(range(200)) for v in seen.values())


def test_tag_output_short(tmp_path):
    prog = program(tmp_path, """
        import os, sys
        rank = os.environ["CMAMPI_RANK"]
        print("hello")
        print("oops", file=sys.stderr)
        sys.stdout.write("no newline")
    """)
    res = launch("-n", 2, "--tag-output", prog)
    assert res.returncode == 0
    out = res.stdout.splitlines(keepends=True)
    assert sorted(out) == ["[0] hello\n", "[0] no newline\n", "[1] hello\n", "[1] no newline\n"]
    assert sorted(res.stderr.splitlines()) == ["[0] oops", "[1] oops"]


def test_untagged_output_is_verbatim(tmp_path):
    prog = program(tmp_path, 'import sys; sys.stdout.write("a\\nb")')
    res = launch("-n", 1, prog)
    assert (res.returncode, res.stdout, res.stderr) == (0, "a\nb", "")


def test_stdin_only_for_rank_0(tmp_path):
    prog = program(tmp_path, """
        import os, sys
        print(os.environ["CMAMPI_RANK"], repr(sys.stdin.read()))
    """)
    res = launch("-n", 2, "--tag-output", prog, input="hello\n")
    assert sorted(res.stdout.splitlines()) == ["[0] 0 'hello\\n'", "[1] 1 ''"]


# -- command line ---------------------------------------------------------------------------
def test_program_arguments_pass_through(tmp_path):
    prog = program(tmp_path, "import json, sys; print(json.dumps(sys.argv[1:]))")
    args = ["-n", "5", "--foo", "--", "--timeout", "3", "-m", "x", "--tag-output", "-h"]
    res = launch("-np", 2, prog, *args)
    assert res.returncode == 0, res.stderr
    assert [json.loads(line) for line in res.stdout.splitlines()] == [args, args]
    res = launch("-n", 1, "--", prog, "-n", "5")
    assert json.loads(res.stdout) == ["-n", "5"]


def test_module(tmp_path):
    (tmp_path / "launcher_test_mod.py").write_text(textwrap.dedent("""
        import os, sys
        print(__name__, os.environ["CMAMPI_RANK"], sys.argv[1:])
    """))
    res = launch("-n", 2, "--tag-output", "-m", "launcher_test_mod", "-n", "7", "--x",
                 env=_env(tmp_path))
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.splitlines()) == [
        "[0] __main__ 0 ['-n', '7', '--x']", "[1] __main__ 1 ['-n', '7', '--x']"]


@pytest.mark.parametrize("args, message", [
    (["-n", "0"], "-n"),
    (["-n", "-1"], "-n"),
    (["-n", "x"], "-n"),
    (["-n", "1.5"], "-n"),
    ([], "-n"),
    (["-n", "2", "--bogus"], "--bogus"),
    (["-n", "2", "--timeout", "0"], "--timeout"),
    (["-n", "2", "--timeout", "soon"], "--timeout"),
    (["-n", "2", "--grace", "-1"], "--grace"),
])
def test_bad_options(tmp_path, args, message):
    marker = tmp_path / "started"
    prog = program(tmp_path, f"open({str(marker)!r}, 'w').close()")
    res = launch(*args, prog)
    assert res.returncode == 2
    assert "error" in res.stderr and message in res.stderr and "usage" in res.stderr
    assert res.stdout == "" and not marker.exists()


def test_missing_program():
    for args in (["-n", "2"], ["-n", "2", "--tag-output"], ["-n", "2", "--"]):
        res = launch(*args)
        assert res.returncode == 2 and "missing the program" in res.stderr


def test_nonexistent_program(tmp_path):
    res = launch("-n", 2, tmp_path / "nope.py")
    assert res.returncode == 2 and "nope.py" in res.stderr and "no such file" in res.stderr


def test_help():
    res = launch("--help")
    assert res.returncode == 0 and "--tag-output" in res.stdout and "-m module" in res.stdout


# -- exit codes and failures ----------------------------------------------------------------
def test_failing_rank_ends_job(tmp_path):
    prog = program(tmp_path, helpers=True, body="""
        if rank == "1":
            while not os.path.exists(os.path.join(out, "pid-0")):
                time.sleep(0.01)
            sys.exit(3)
        report("pid-" + rank, str(os.getpid()))
        report("dir-" + rank, os.environ["CMAMPI_DIR"])
        time.sleep(60)
    """)
    t0 = time.monotonic()
    res = launch("-n", 3, prog, tmp_path)
    assert res.returncode == 3
    assert time.monotonic() - t0 < 10
    assert "rank 1 (pid " in res.stderr and "exited with code 3" in res.stderr
    assert "terminating the other ranks" in res.stderr
    assert gone(int((tmp_path / "pid-0").read_text()))
    if (tmp_path / "pid-2").exists():
        assert gone(int((tmp_path / "pid-2").read_text()))
    assert not os.path.exists((tmp_path / "dir-0").read_text())


def test_rank_killed_by_signal(tmp_path):
    prog = program(tmp_path, helpers=True, body="""
        import signal
        if rank == "1":
            while not os.path.exists(os.path.join(out, "pid-0")):
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGKILL)
        report("pid-" + rank, str(os.getpid()))
        time.sleep(60)
    """)
    res = launch("-n", 2, prog, tmp_path)
    assert res.returncode == 128 + signal.SIGKILL
    assert "rank 1 (pid " in res.stderr and "SIGKILL" in res.stderr
    assert gone(int((tmp_path / "pid-0").read_text()))


def test_ranks_die_with_a_killed_launcher(tmp_path):
    """``kill -9`` of the launcher (it can end nothing itself) still ends its
    ranks within seconds, busy or sleeping."""
    prog = program(tmp_path, helpers=True, body="""
        report("pid-" + rank, str(os.getpid()))
        if rank == "0":
            while True:
                pass
        time.sleep(120)
    """)
    launcher = start("-n", 2, prog, tmp_path)
    try:
        pids = [int(wait_for(tmp_path / f"pid-{r}")) for r in range(2)]
        launcher.kill()
        launcher.wait(10)
        assert all(gone(pid, 10.0) for pid in pids), "a rank outlived its launcher"
    finally:
        launcher.kill()
        launcher.communicate()


def test_others_get_a_grace_period(tmp_path):
    """After a failure the other ranks may still report and exit by themselves:
    rank 0 notices rank 1's death, takes a moment, and is not terminated."""
    prog = program(tmp_path, helpers=True, body="""
        import signal
        if rank == "1":
            while not os.path.exists(os.path.join(out, "pid-0")):
                time.sleep(0.01)
            report("pid-1", str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        signal.signal(signal.SIGTERM, lambda *a: (report("terminated", ""), sys.exit(1)))
        report("pid-" + rank, str(os.getpid()))
        while not os.path.exists(os.path.join(out, "pid-1")):
            time.sleep(0.01)
        while os.path.exists("/proc/" + open(os.path.join(out, "pid-1")).read()):
            time.sleep(0.01)   # reaped: the launcher knows
        time.sleep(0.5)
        print("rank 0: my own report", flush=True)
    """)
    res = launch("-n", 2, "--grace", 5, prog, tmp_path)
    pid1 = (tmp_path / "pid-1").read_text()
    assert res.returncode == 128 + signal.SIGKILL
    assert f"cmampi: rank 1 (pid {pid1}) was killed by SIGKILL" in res.stderr
    assert "rank 0: my own report" in res.stdout
    assert not (tmp_path / "terminated").exists()


def test_stubborn_rank_is_killed(tmp_path):
    prog = program(tmp_path, helpers=True, body="""
        import signal
        if rank == "1":
            while not os.path.exists(os.path.join(out, "pid-0")):
                time.sleep(0.01)
            sys.exit(5)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        report("pid-" + rank, str(os.getpid()))
        time.sleep(60)
    """)
    t0 = time.monotonic()
    res = launch("-n", 2, "--grace", 1, prog, tmp_path)
    assert res.returncode == 5
    # A grace period to exit, SIGTERM (ignored), another, then SIGKILL.
    assert 2 <= time.monotonic() - t0 < 10
    assert gone(int((tmp_path / "pid-0").read_text()))


def test_all_ranks_exit_zero(tmp_path):
    prog = program(tmp_path, helpers=True, body="""
        time.sleep(0.2 * int(rank))
    """)
    res = launch("-n", 4, prog, tmp_path)
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")


def test_timeout(tmp_path):
    prog = program(tmp_path, SLEEPER, helpers=True)
    t0 = time.monotonic()
    res = launch("-n", 2, "--timeout", 1, prog, tmp_path)
    elapsed = time.monotonic() - t0
    assert res.returncode != 0 and "timeout" in res.stderr
    assert 1 <= elapsed < 10
    for rank in range(2):
        assert gone(int((tmp_path / f"pid-{rank}").read_text()))
    assert not os.path.exists((tmp_path / "dir-0").read_text())


# -- signals sent to the launcher -----------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_forwarded(tmp_path, signum):
    prog = program(tmp_path, helpers=True, body="""
        import signal
        def handler(signum, frame):
            report(f"signal-{rank}", str(signum))
            sys.exit(0)
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        report("pid-" + rank, str(os.getpid()))
        report("dir-" + rank, os.environ["CMAMPI_DIR"])
        time.sleep(60)
    """)
    proc = start("-n", 2, prog, tmp_path)
    try:
        pids = [int(wait_for(tmp_path / f"pid-{rank}")) for rank in range(2)]
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=LIMIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signum
    assert signal.Signals(signum).name in err
    for rank, pid in enumerate(pids):
        assert (tmp_path / f"signal-{rank}").read_text() == str(int(signum))
        assert gone(pid)
    assert not os.path.exists((tmp_path / "dir-0").read_text())


def test_signal_with_default_handlers(tmp_path):
    prog = program(tmp_path, SLEEPER, helpers=True)
    proc = start("-n", 2, prog, tmp_path)
    try:
        pids = [int(wait_for(tmp_path / f"pid-{rank}")) for rank in range(2)]
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=LIMIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM
    assert all(gone(pid) for pid in pids)


def test_tag_output_writes_whole_lines():
    """Each forwarded write is one whole tagged line: a last line without its
    newline gets one in the same write, so another rank's line cannot land
    between them (the forwarders of all ranks share one output)."""
    import io

    from cmampi.launch import _MAX_LINE, _forward

    class Recorder:
        def __init__(self):
            self.writes = []

        def write(self, data):
            self.writes.append(data)

    sink = Recorder()
    _forward(io.BufferedReader(io.BytesIO(b"one\ntwo\nno newline")), sink, b"[3] ")
    assert sink.writes == [b"[3] one\n", b"[3] two\n", b"[3] no newline\n"]
    sink = Recorder()                     # untagged output passes through as it is
    _forward(io.BufferedReader(io.BytesIO(b"a\nb")), sink, b"")
    assert b"".join(sink.writes) == b"a\nb"
    sink = Recorder()                     # a line longer than the cap is not held whole
    long = b"x" * (_MAX_LINE + 10)
    _forward(io.BufferedReader(io.BytesIO(long + b"\n")), sink, b"[0] ")
    assert b"".join(sink.writes) == b"[0] " + long + b"\n"
    assert all(len(w) <= _MAX_LINE + 4 for w in sink.writes)
