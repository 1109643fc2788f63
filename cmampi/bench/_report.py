"""Reports: machine information, and the results as tables, CSV or JSON."""

from __future__ import annotations

import csv as _csv
import io as _io
import json as _json
import os as _os
import socket as _socket
import sys as _sys
from typing import Any

import numpy as _np

from ._common import CMAMPI, Context, Result, format_size

__all__ = ["emit", "machine_info", "machine_line", "markdown_table", "render"]

#: Columns per implementation, by benchmark.
_METRICS = {"pingpong": ("us", "GB/s"), "bandwidth": ("us", "GB/s"), "patterns": ("us", "GB/s"),
            "collectives": ("us",),
            "objects": ("us", "flt"), "lowercase": ("us",)}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def machine_info(ctx: Context) -> dict[str, Any]:
    import cmampi

    from .._config import config

    info: dict[str, Any] = {
        "hostname": _socket.gethostname(), "cpu": _cpu_model(), "cpus": _os.cpu_count(),
        "kernel": _os.uname().release, "python": _sys.version.split()[0],
        "numpy": _np.__version__, "cmampi": cmampi.__version__, "channel": ctx.channel,
        "ranks": ctx.size, "transport": config.transport, "eager_limit": config.eager_limit,
        "cma_min": ctx.comm._engine.cma_min,
    }
    if ctx.raw is not None:
        import mpi4py

        # Open MPI's string ends in a NUL byte, which would make the report binary.
        version = ctx.MPI.Get_library_version().replace("\x00", "")
        info["mpi"] = " ".join(version.splitlines()[0].split())
        info["mpi4py"] = mpi4py.__version__
    return info


def machine_line(info: dict[str, Any]) -> str:
    mpi = f"{info['mpi']}, mpi4py {info['mpi4py']}" if "mpi" in info else "no MPI"
    return (f"{info['cpu']}, {info['cpus']} CPUs, Linux {info['kernel']}, "
            f"Python {info['python']}, numpy {info['numpy']}, {mpi}; cmampi {info['cmampi']}, "
            f"{info['channel']} channel, {info['ranks']} ranks, transport "
            f"{info['transport']}, pulls from {format_size(info['cma_min'])}")


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A pipe table, aligned for the terminal and valid Markdown (first column left)."""
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]

    def line(cells: list[str]) -> str:
        out = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "| " + " | ".join(out) + " |"

    dashes = ["-" * (widths[0] + 2)] + ["-" * (w + 1) + ":" for w in widths[1:]]
    return [line(header), "|" + "|".join(dashes) + "|"] + [line(r) for r in rows]


def _cell(r: Result, impl: str, metric: str) -> str:
    if metric == "us":
        return f"{r.median(impl) * 1e6:.2f}"
    if metric == "flt":
        return f"{r.extra[impl]['minflt_per_recv']:.1f}"
    if not r.nbytes:
        return "-"
    gbps = r.gbps(impl)
    return f"{gbps:.3f}" if gbps < 1 else f"{gbps:.2f}"


def _table(bench: str, results: list[Result]) -> list[str]:
    impls = results[0].impls
    alts = [i for i in impls if i != CMAMPI]
    by_op = {"collectives": "collective", "patterns": "pattern"}
    first = [by_op[bench], "size"] if bench in by_op else ["case"]
    header = first + [f"{i} {m}" for i in impls for m in _METRICS[bench]] + \
        [f"{a}/{CMAMPI}" for a in alts]
    rows = []
    for r in results:
        cells = [r.op, r.case] if bench in by_op else [r.case]
        cells += [_cell(r, i, m) for i in impls for m in _METRICS[bench]]
        rows.append(cells + [f"{r.ratio(a):.2f}" for a in alts])
    return markdown_table(header, rows)


def _by_bench(results: list[Result]) -> dict[str, list[Result]]:
    groups: dict[str, list[Result]] = {}
    for r in results:
        groups.setdefault(r.bench, []).append(r)
    return groups


def _method(ctx: Context) -> str:
    t = ctx.timing
    block = f"{t.reps} iterations" if t.reps else f"calibrated to ~{t.block_s * 1e3:g} ms"
    return (f"Median of {t.rounds} rounds on rank 0; each round runs every implementation's "
            f"block once, in turn, in the same processes (blocks {block}, after a verified "
            f"exchange and {t.warmup_iters} warm-up iterations). GB/s = 1e9 B/s. "
            f"X/{CMAMPI} = X's time / cmampi's time (> 1: cmampi faster).")


def render(fmt: str, ctx: Context, info: dict[str, Any], notes: dict[str, str],
           results: list[Result]) -> str:
    """The report in *fmt* (table, csv or json); *notes* describe each benchmark."""
    if fmt == "json":
        t = ctx.timing
        method = {"rounds": t.rounds, "block_s": t.block_s, "min_iters": t.min_iters,
                  "reps": t.reps, "statistic": "median over rounds", "gb": 1e9,
                  "ratio": f"alternative time / {CMAMPI} time (> 1: cmampi faster)",
                  "description": notes}
        return _json.dumps({"machine": info, "method": method,
                            "results": [r.as_dict() for r in results]}, indent=2)
    if fmt == "csv":
        return _csv_text(results)
    out = [machine_line(info), "", _method(ctx)]
    for bench, group in _by_bench(results).items():
        out += ["", f"## {bench}", "", notes[bench], "", *_table(bench, group)]
    return "\n".join(out)


def _csv_text(results: list[Result]) -> str:
    cols = ["bench", "op", "case", "size_bytes", "impl", "median_us", "min_us", "max_us",
            "gbps", "iters_per_round", "rounds", "ratio", "minflt_per_recv"]
    text = _io.StringIO()
    writer = _csv.writer(text, lineterminator="\n")
    writer.writerow(cols)
    for r in results:
        for impl, d in r.as_dict().items():
            if not isinstance(d, dict):
                continue
            writer.writerow([r.bench, r.op, r.case, r.nbytes, impl, f"{d['median_us']:.3f}",
                             f"{d['min_us']:.3f}", f"{d['max_us']:.3f}", f"{d['gbps']:.4f}",
                             d["iters_per_round"], len(d["rounds_us"]),
                             f"{d['ratio']:.4f}" if "ratio" in d else "",
                             d.get("minflt_per_recv", "")])
    return text.getvalue().rstrip("\n")


def emit(report: str, output: str | None) -> None:
    """Print *report*; also write it to the file *output*, if any."""
    print(report, flush=True)
    if output:
        with open(output, "w", encoding="utf-8") as f:
            f.write(report + "\n")
