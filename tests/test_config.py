"""The README's configuration table and `cmampi._config`, checked against each other."""

from __future__ import annotations

import os
import re

import pytest

from cmampi import _config, _tuning

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _documented():
    """(variable, default as written) of each row of the README's table."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    return re.findall(r"^\| `(CMAMPI_\w+)` \| ([^|]+?) \|", text, re.M)


def _read_by_config():
    with open(_config.__file__, encoding="utf-8") as f:
        return set(re.findall(r'"(CMAMPI_\w+)"', f.read()))


def test_every_variable_read_is_documented_and_no_other():
    assert {name for name, _ in _documented()} == _read_by_config()


@pytest.mark.parametrize("name,default", [row for row in _documented()
                                          if row[1].startswith("`")])
def test_documented_default_is_the_default(monkeypatch, name, default):
    """Setting a variable to its documented default changes nothing."""
    for var in _read_by_config():
        monkeypatch.delenv(var, raising=False)
    unset = _config.Config.from_environ()
    monkeypatch.setenv(name, default.strip("`"))
    assert _config.Config.from_environ() == unset


def test_channel_defaults_of_the_pull_threshold_are_documented():
    row = dict(_documented())["CMAMPI_CMA_MIN"]
    assert row == "channel's"
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        line = next(ln for ln in f if ln.startswith("| `CMAMPI_CMA_MIN`"))
    mpi, sock = _tuning.CMA_MIN_DEFAULTS["mpi"], _tuning.CMA_MIN_DEFAULTS["socket"]
    assert f"MPI channel {mpi >> 20} MiB" in line and f"socket channel {sock >> 10} KiB" in line


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_exit_wait_must_be_seconds(monkeypatch, value):
    monkeypatch.setenv("CMAMPI_EXIT_WAIT", value)
    with pytest.raises(ValueError, match="CMAMPI_EXIT_WAIT"):
        _config.Config.from_environ()
