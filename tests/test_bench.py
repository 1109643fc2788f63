"""``python -m cmampi.bench``: every benchmark runs (--quick) on both channels; its options."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
from jobenv import NO_MPI4PY, job_env

from cmampi.bench import cli, plot

MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
BENCHES = ["pingpong", "bandwidth", "patterns", "collectives", "objects", "lowercase"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


#: Variables of an enclosing job, which must not leak into the jobs a test starts.
def _env(*paths) -> dict:
    """A new job's environment (see `jobenv`), its mpiexec bounded in time."""
    env = job_env(*paths)
    env.setdefault("MPIEXEC_TIMEOUT", "120")
    return env


def _run(cmd, env, code: int = 0) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == code, out.stdout + out.stderr
    return out


def _check_table(text: str, alternative: str) -> None:
    for bench in BENCHES:
        assert f"## {bench}" in text, text
    for row in ("| 8 B ", "| 1 MiB ", "A[:, ::2] -> B[:, ::2]", "| Allreduce ", "| Barrier ",
                "| array 1 MiB ", "| dict of 100 arrays", "| int ", "| tuple ",
                "| pingpong spec ", "| pingpong bytearray ", "| pingpong mmap ",
                "| stream 64 x one buffer ", "| bidirectional 64+64 ", "| isend+irecv ",
                "| isend+recv ", "| sendrecv ", "| scan "):
        assert row in text, text
    assert f"{alternative}/cmampi" in text, text


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
def test_all_quick_under_mpiexec_table_and_plot(tmp_path):
    report, png = tmp_path / "report.txt", tmp_path / "bench.png"
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "cmampi.bench", "all", "--quick",
           "--output", str(report)]
    out = _run(cmd + (["--plot", str(png)] if HAVE_MATPLOTLIB else []), _env())
    _check_table(out.stdout, "mpi4py")
    assert "pkl5/cmampi" in out.stdout and "mpi channel" in out.stdout
    assert report.read_text().strip() == out.stdout.strip()
    assert out.stdout.count("## pingpong") == 1, "output on rank 0 only"
    if HAVE_MATPLOTLIB:
        assert png.read_bytes()[:8] == PNG_MAGIC


def test_all_quick_under_launcher_json(tmp_path):
    """No MPI at all: mpi4py blocked; the alternative is a multiprocessing Connection."""
    png = tmp_path / "bench.png"
    cmd = [sys.executable, "-m", "cmampi", "-n", "2", "--timeout", "120", "-m", "cmampi.bench",
           "all", "--quick", "--format", "json"]
    plotting = HAVE_MATPLOTLIB and MPIEXEC is None     # else the mpiexec run draws one
    out = _run(cmd + (["--plot", str(png)] if plotting else []), _env(NO_MPI4PY))
    doc = json.loads(out.stdout)
    assert doc["machine"]["channel"] == "socket"
    assert sorted({r["bench"] for r in doc["results"]}) == sorted(BENCHES)
    for r in doc["results"]:
        assert r["cmampi"]["median_us"] > 0
        if r["bench"] not in ("collectives", "patterns", "lowercase"):
            assert r["pipe"]["ratio"] > 0
        if r["bench"] == "objects":
            assert r["cmampi"]["minflt_per_recv"] >= 0
    if plotting:
        assert png.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
@pytest.mark.parametrize("bench", ["pingpong", "bandwidth", "patterns"])
def test_socket_channel_beside_the_mpi_one(bench):
    """--socket: cmampi over sockets, set up among the mpiexec job's ranks, runs in
    the same processes as the MPI channel, checked results and a ratio of its own."""
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "cmampi.bench", bench, "--quick",
           "--socket", "--format", "json"]
    doc = json.loads(_run(cmd, _env()).stdout)
    assert doc["machine"]["channel"] == "mpi"
    cases = [r["case"] for r in doc["results"]]
    # the strided case runs, checked, on the socket channel too; patterns: 4
    # buffer forms, 7 windows and 2 exchanges
    assert cases == {"pingpong": ["8 B", "1 MiB", "256x256 float64, A[:, ::2] -> B[:, ::2]"],
                     "bandwidth": ["8 B", "1 MiB"],
                     "patterns": ["8 B", "1 MiB"] * 13}[bench]
    for r in doc["results"]:
        assert r["socket"]["median_us"] > 0 and r["socket"]["ratio"] > 0
        assert r["mpi4py"]["ratio"] > 0


def test_socket_option_needs_mpiexec():
    out = _run([sys.executable, "-m", "cmampi", "-n", "2", "--timeout", "120", "-m",
                "cmampi.bench", "bandwidth", "--quick", "--socket"], _env(NO_MPI4PY), code=2)
    assert "--socket" in out.stderr and "mpiexec" in out.stderr


def test_csv_one_row_per_implementation():
    """A one-case collectives run, CSV on stdout (socket channel: the cheapest start)."""
    out = _run([sys.executable, "-m", "cmampi", "-n", "2", "--timeout", "120", "-m",
                "cmampi.bench", "collectives", "--quick", "--only", "Bcast", "--sizes", "1k",
                "--format", "csv"], _env())
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("bench,op,case,size_bytes,impl,median_us")
    assert [line.split(",")[:5] for line in lines[1:]] == \
        [["collectives", "Bcast", "1 KiB", "1024", "cmampi"]]


@pytest.mark.parametrize("args", [[], ["pingpong", "--sizes", "0"]])
def test_usage_errors_exit_2(args):
    out = _run([sys.executable, "-m", "cmampi.bench", *args], _env(), code=2)
    assert "usage:" in out.stderr


@pytest.mark.parametrize("args", [
    ["bandwidth", "--format", "xml"],
    ["collectives", "--only", "Allreduce,Nonesuch"],
    ["objects", "--rounds", "0"],
    ["objects", "--sizes", "8,1x"],
    ["pingpong", "--only", "Bcast"],             # another subcommand's option
])
def test_bad_arguments(args, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(args)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_quiet_ranks_print_nothing(capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["pingpong", "--rounds", "x"], quiet=True)
    assert capsys.readouterr() == ("", "")


def test_one_rank_is_a_usage_error():
    out = _run([sys.executable, "-m", "cmampi.bench", "pingpong", "--quick"], _env(), code=2)
    assert "needs exactly 2 ranks" in out.stderr


def test_plot_without_matplotlib_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setattr(cli, "available", lambda: "--plot needs matplotlib")
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(["pingpong", "--plot", "x.png"])
    assert exc.value.code == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err


def test_options():
    args = cli.parse_args(["all", "--sizes", "1k,8,1k,2m", "--only", "Bcast", "--window", "4"])
    assert args.sizes == [8, 1024, 2 << 20] and args.only == ["Bcast"] and args.window == 4
    quick = cli._timing(cli.parse_args(["objects", "--quick", "--rounds", "3"]))
    assert quick.rounds == 3 and quick.reps == cli.QUICK["reps"]
    assert plot.available() is None or "matplotlib" in plot.available()


def test_progress_lines_when_forced(capsys):
    bar = cli.Progress(2, enabled=True, forced=True, terminal=False)
    bar.step("pingpong 8 B")
    bar.step("pingpong 1 MiB")
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("[....................] 1/2 ") and "pingpong 8 B" in lines[0]
    assert lines[1].startswith("[##########..........] 2/2 ")


def test_no_progress_off_a_terminal_unless_forced(capsys):
    bar = cli.Progress(2, enabled=True, forced=False, terminal=False)
    bar.step("pingpong 8 B")
    bar.close()
    assert capsys.readouterr().err == ""


def test_progress_redraws_in_place_on_a_terminal(capsys):
    bar = cli.Progress(2, enabled=True, forced=True, terminal=True)
    bar.step("a")
    bar.step("b")
    bar.close()
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and err.count(cli.Progress._UP) == 2
