"""``--plot FILE.png``: every size sweep on log-log axes, one subplot per benchmark.

matplotlib is imported only here, and only when a plot is asked for (the
``plot`` extra: ``pip install cmampi[plot]``).
"""

from __future__ import annotations

import importlib.util as _importlib_util
import math as _math
from typing import Any

from ._common import Result, format_size
from ._report import machine_line

__all__ = ["available", "plot"]

_COLORS = {"cmampi": "C0", "mpi4py": "C1", "pkl5": "C2", "pipe": "C3", "socket": "C4"}
_TITLES = {"contiguous": "ping-pong, contiguous", "stream": "streaming bandwidth",
           "array": "objects: numpy arrays"}
#: Benchmarks drawn as bandwidth (the others as time per operation).
_BANDWIDTH = ("pingpong", "bandwidth", "patterns")


def available() -> str | None:
    """None if matplotlib can be imported, else why not."""
    if _importlib_util.find_spec("matplotlib") is None:
        return "--plot needs matplotlib: pip install 'cmampi[plot]' (or matplotlib)"
    return None


def _short(n: float, _pos: Any = None) -> str:
    return format_size(int(n)).replace(" ", "")


def _spaced(sizes: list[int]) -> list[int]:
    """The sizes to label: each at least 8 times the previous one, so labels do not collide."""
    out: list[int] = []
    for n in sizes:
        if not out or n >= 8 * out[-1]:
            out.append(n)
    return out


def plot(path: str, info: dict[str, Any], results: list[Result]) -> None:
    """Write the size sweeps among *results* to the PNG file *path*."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    panels: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        if r.sized:
            panels.setdefault((r.bench, r.op), []).append(r)
    cols = max(1, min(4, len(panels)))
    rows = max(1, _math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows + 0.8), squeeze=False)
    for ax, ((bench, op), group) in zip(axes.flat, panels.items()):
        group = sorted(group, key=lambda r: r.nbytes)
        x = [r.nbytes for r in group]
        for impl in group[0].impls:
            y = [r.gbps(impl) if bench in _BANDWIDTH else r.median(impl) * 1e6 for r in group]
            ax.loglog(x, y, marker="o", markersize=3, label=impl, color=_COLORS.get(impl))
        ax.set_title(_TITLES.get(op, op), fontsize=10)
        ax.set_ylabel("GB/s" if bench in _BANDWIDTH else "µs per operation", fontsize=9)
        ax.set_xlabel("bytes" + (" per rank" if bench == "collectives" else ""), fontsize=9)
        ax.set_xticks(_spaced(x))
        ax.xaxis.set_major_formatter(FuncFormatter(_short))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(labelsize=7)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    title = machine_line(info)
    cut = title.find("; ")
    fig.suptitle(title[:cut + 1] + "\n" + title[cut + 2:] if cut > 0 else title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
