"""Rendezvous channels: how ranks exchange headers, descriptors and acks.

`Channel` is the contract between the protocols (`cmampi.p2p`, `cmampi.coll`,
`cmampi.objects`) and a channel: `channel.mpi.MPIChannel` over an mpi4py
communicator, `channel.socket.SocketChannel` over Unix sockets and rings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

__all__ = ["Channel", "Completion", "Info", "completion"]


class Completion(NamedTuple):
    """What a completed handle reports. A receive into a buffer too small for
    its message completes with the MPI library's truncation error in *error*,
    rather than raising."""

    source: int
    tag: int
    nbytes: int
    error: BaseException | None


Info = Completion

_new = tuple.__new__


def completion(source: int, tag: int, nbytes: int,
               error: BaseException | None = None) -> Completion:
    """A `Completion`, made without NamedTuple's argument parsing (it is made
    once per message)."""
    return _new(Completion, (source, tag, nbytes, error))


@runtime_checkable
class Channel(Protocol):
    """Two matching spaces among a group of ranks, and completion of their handles.

    The *user* space carries cmampi's messages (raw messages and control
    messages alike), matched by the user's ``(source, tag)`` in MPI's order.
    The *side* space carries replies and payloads keyed by a transfer id
    (``xid``, below `xid_limit`), which no user receive can match. A handle
    is whatever the channel completes (an MPI request, a socket handle).
    Making a channel, `dup` and `allgather` are collective over its ranks.
    """

    rank: int
    size: int
    tag_ub: int
    #: Transfer ids live in ``[0, xid_limit)``.
    xid_limit: int
    #: From this size on payloads are pulled with CMA, by default (`_tuning`) ...
    cma_min: int
    #: ... and from this size on by a rank with receives of its own pending.
    cma_min_busy: int
    #: Per rank: process id, node key, pid namespace, user namespace (CMA may
    #: only be used between ranks of one node and namespaces).
    pids: list[int]
    nodes: list[str]
    pidns: list[Any]
    userns: list[Any]
    #: A handle that never completes, to stand in a list for one already taken.
    null_handle: Any

    # -- the user space ------------------------------------------------------------------------
    def send(self, data, dest: int, tag: int) -> None:
        """Send bytes *data* (blocking: it may be reused on return)."""

    def isend(self, data, dest: int, tag: int) -> Any:
        """Start sending *data*; a handle. *data* is read until it completes."""

    def recv(self, buf, source: int, tag: int) -> tuple[int, int, int]:
        """Receive into *buf* (blocking): (source, tag, bytes)."""

    def irecv(self, buf, source: int, tag: int) -> Any:
        """Post a receive into *buf*; a handle whose info is the message's."""

    def mprobe(self, source: int, tag: int) -> tuple[Any, tuple[int, int, int]]:
        """Match a message without receiving it (blocking): (matched handle,
        (source, tag, bytes)); `mrecv` takes it."""

    def mrecv(self, handle, buf) -> None:
        """Receive the message *handle* matched into *buf* (large enough)."""

    def recv_object(self, source: int, tag: int) -> object:
        """Receive a message and unpickle it in one call (blocking); its
        (source, tag, bytes) are `last`'s."""

    def last(self) -> tuple[int, int, int]:
        """(source, tag, bytes) of the last `recv_object`."""

    def take_any(self) -> tuple[int, int, bytes | bytearray] | None:
        """A message that has arrived, received whole, if any (never blocks)."""

    def probe_any(self, source: int, block: bool = True) -> None:
        """Wait until a message from *source* (or anyone) has arrived, or
        (*block* false) just let the channel make progress."""

    # -- the side space ------------------------------------------------------------------------
    def send_reply(self, data, dest: int, xid: int) -> None:
        """Send the reply of transfer *xid*."""

    def irecv_reply(self, buf, source: int, xid: int) -> Any:
        """Post the receive of transfer *xid*'s reply; a handle."""

    def send_payload(self, data, dest: int, xid: int) -> None:
        """Send transfer *xid*'s payload (blocking)."""

    def isend_payload(self, data, dest: int, xid: int) -> Any:
        """Start sending transfer *xid*'s payload; a handle."""

    def irecv_payload(self, buf, source: int, xid: int) -> Any:
        """Post the receive of transfer *xid*'s payload into *buf*; a handle."""

    # -- completion ----------------------------------------------------------------------------
    def waitany(self, handles: Sequence[Any]) -> tuple[int, Info]:
        """Block until one of *handles* completes: (its index, its info)."""

    def testany(self, handles: Sequence[Any]) -> tuple[int, Info] | None:
        """(index, info) of a completed handle of *handles* (taken ones replaced
        by `null_handle`), without blocking; or None."""

    def test(self, handle) -> Info | None:
        """*handle*'s info if it has completed (never blocks), else None."""

    def wait_cancelled(self, handle) -> Completion | None:
        """Complete a handle whose cancellation was asked: None if the cancel
        won, else the message's (source, tag, bytes)."""

    # -- the group -----------------------------------------------------------------------------
    def allgather(self, obj: Any) -> list[Any]:
        """Every rank's small picklable *obj*, in rank order (collective)."""

    def dup(self) -> Channel:
        """A channel over the same ranks with spaces of its own (collective)."""

    def collective(self) -> None:
        """Mark this channel as carrying collectives only: where the channel can
        tell failed ranks, every operation on it then fails once a member has
        failed (every collective needs every member), so none waits on a rank
        that has given up on it."""

    def free(self) -> None:
        """Release the channel's resources."""
