"""Configuration: every ``CMAMPI_*`` environment variable is read here, once."""

from __future__ import annotations

import os as _os
from dataclasses import dataclass
from typing import overload

__all__ = ["CMA_MIN_DEFAULTS", "Config", "config"]

from ._tuning import CHUNK, CMA_MIN_DEFAULTS, COOP_MIN, EAGER_LIMIT, POOL


@overload
def _size(name: str, default: int) -> int: ...
@overload
def _size(name: str, default: None) -> int | None: ...
def _size(name: str, default: int | None) -> int | None:
    raw = _os.environ.get(name)
    if raw is None or raw == "":
        return default
    text = raw.strip().lower()
    scale = 1
    for suffix, mult in (("kib", 1 << 10), ("mib", 1 << 20), ("k", 1 << 10), ("m", 1 << 20)):
        if text.endswith(suffix):
            text, scale = text[: -len(suffix)], mult
            break
    try:
        value = int(text) * scale
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected a byte count such as 16384 or 16k") from None
    if value < 0:
        raise ValueError(f"{name}={raw!r}: must not be negative")
    return value


def _seconds(name: str, default: float) -> float:
    raw = _os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected a number of seconds") from None
    if not value >= 0:
        raise ValueError(f"{name}={raw!r}: must not be negative")
    return value


def _choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _os.environ.get(name, "").strip().lower() or default
    if value not in choices:
        raise ValueError(f"{name}={value!r}: expected one of {', '.join(choices)}")
    return value


def _flag(name: str, default: bool) -> bool:
    value = _os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "yes", "true", "on"):
        return True
    if value in ("0", "no", "false", "off"):
        return False
    raise ValueError(f"{name}={value!r}: expected 1 or 0")


@dataclass(frozen=True)
class Config:
    """Settings read from the environment (see the README's configuration table)."""

    #: Messages of at most this many bytes travel inline, with no header.
    eager_limit: int
    #: From this size on, payloads to a CMA peer are pulled; below it they travel
    #: through the channel. None: the channel's own default (MPI libraries copy
    #: once themselves, so pulling pays off later there than over sockets).
    cma_min: int | None
    #: From this size on, a sender blocked in ``Send`` copies part of the payload
    #: itself (``process_vm_writev``) while the receiver pulls the rest.
    coop_min: int
    #: Payload bytes per pulled piece when a strided transfer is staged through cache.
    chunk: int
    #: ``cma`` (pull with process_vm_readv) or ``copy`` (payload through the channel).
    transport: str
    #: ``auto``, ``mpi`` or ``socket``.
    channel: str
    #: Where Yama's ptrace_scope is 1, call ``prctl(PR_SET_PTRACER, ANY)`` before
    #: the first channel's handshake, so that the job's peers may read this process.
    set_ptracer: bool = True
    #: The node this rank claims to be on (MPI channel): ranks with different
    #: values never use CMA between them. None: as ``Split_type(COMM_TYPE_SHARED)`` says.
    node: str | None = None
    #: Bytes of large receive buffers kept mapped for reuse once dropped (objects).
    pool: int = POOL
    #: Socket channel: frames between ranks travel through shared-memory rings
    #: (where the processor allows), the sockets carry doorbells and hang-ups.
    rings: bool = True
    #: MPI channel: every collective first agrees on every rank's arguments
    #: (mismatches raise on every rank). Off: small collectives go straight to
    #: the MPI library, whose own checks act, and only large ones agree.
    check_collectives: bool = False
    #: Seconds the end of the job waits, without progress, for receivers to take
    #: sends that completed here first (buffered mode, freed requests); inf:
    #: until they do, as MPI's Finalize.
    exit_wait: float = float("inf")
    #: MPI channel: small nonblocking messages and their waits take the compiled
    #: path (``_fastpath``) where it is built for the MPI library in use.
    fastpath: bool = True

    @classmethod
    def from_environ(cls) -> Config:
        return cls(
            eager_limit=_size("CMAMPI_EAGER_LIMIT", EAGER_LIMIT),
            cma_min=_size("CMAMPI_CMA_MIN", None),
            coop_min=_size("CMAMPI_COOP_MIN", COOP_MIN),
            chunk=max(_size("CMAMPI_CHUNK", CHUNK), 4096),
            transport=_choice("CMAMPI_TRANSPORT", "cma", ("cma", "copy")),
            channel=_choice("CMAMPI_CHANNEL", "auto", ("auto", "mpi", "socket")),
            set_ptracer=_flag("CMAMPI_SET_PTRACER", True),
            node=_os.environ.get("CMAMPI_NODE") or None,
            pool=_size("CMAMPI_POOL", POOL),
            rings=_flag("CMAMPI_RINGS", True),
            check_collectives=_flag("CMAMPI_CHECK_COLLECTIVES", False),
            exit_wait=_seconds("CMAMPI_EXIT_WAIT", float("inf")),
            fastpath=_flag("CMAMPI_FASTPATH", True),
        )


config = Config.from_environ()
