"""Which ranks of a communicator may read each other's memory with CMA.

Found out once per communicator, when its engine is made, and never assumed:
each rank holds a pidfd of every peer on its node and probes it with a real
read; the ranks then exchange what they found, because a payload is pulled by
its receiver, so a send to rank p may be pulled only if p may read us. Where
CMA is refused, payloads travel through the channel, with one warning per
process.

Yama's ``ptrace_scope`` 1 refuses reads between siblings unless the process
read asks for it (`allow_peers`): the channels ask before their first
collective handshake, so no peer can probe a process that has not asked yet.
"""

from __future__ import annotations

import os as _os
import warnings as _warnings

from . import _cma

__all__ = ["PeerAccess", "allow_peers", "warn_once"]

_warned = False
_ptracer_pid = 0


def warn_once(why: str) -> None:
    """One warning per process: CMA is off for some peer, payloads are copied instead."""
    global _warned
    if not _warned:
        _warned = True
        fix = "" if "CMAMPI_TRANSPORT=copy" in why else \
            " Set CMAMPI_TRANSPORT=copy to choose this explicitly."
        _warnings.warn(f"cmampi: {why}; payloads that cannot be pulled are copied through "
                       f"the channel instead (results are the same, only slower).{fix}",
                       RuntimeWarning, stacklevel=4)


def allow_peers(config) -> None:
    """Under Yama's ptrace_scope 1, let the job's peers read this process.

    Once per process (a forked child must ask again: Yama's exception does not
    cross fork). A failure is left to the peers' probes, whose warnings say why.
    """
    global _ptracer_pid
    if _ptracer_pid == _os.getpid():
        return
    _ptracer_pid = _os.getpid()
    if _cma.ptracer_plan(_cma.ptrace_scope(), config.set_ptracer) == "set":
        try:
            _cma.set_ptracer_any()
        except OSError:
            pass


class PeerAccess:
    """Who may read whom among a channel's ranks, and the pidfds that make it safe."""

    __slots__ = ("all_cma", "can_read", "cma", "peers", "raw_max", "raw_max_any")

    def __init__(self, can_read: list[bool], cma: list[bool], raw_max: list[int | None],
                 peers: dict[int, _cma.Peer], all_cma: bool) -> None:
        #: We may read (and write) rank p's memory: pulls we issue, pushes that help.
        self.can_read = can_read
        #: Payloads to rank p are pulled by p (else they travel through the channel).
        self.cma = cma
        #: The longest message rank p sends as itself (the rest are pulled or
        #: announced): what a receive from p must have room for, beside its buffer.
        self.raw_max = raw_max
        known = [n for n in raw_max if n is not None]
        #: The same for a receive from any source (None: no bound).
        self.raw_max_any = max(known) if len(known) == len(raw_max) else None
        #: Every rank may read every other: collectives copy between any two ranks.
        self.all_cma = all_cma
        #: Held pidfds of the peers we may read (see `_cma.Peer`), closed by `release`.
        self.peers = peers

    @classmethod
    def discover(cls, channel, config, cma_min: int) -> PeerAccess:
        """Probe every peer of *channel* and agree with them (collective over it);
        *cma_min* is this rank's pull threshold, which the peers learn."""
        allow_peers(config)
        peers: dict[int, _cma.Peer] = {}
        refusals = [_refusal(channel, p, config, peers) for p in range(channel.size)]
        # Per pair: None, may read; True, refused (and warned); False, not meant to.
        mine = [None if why is None else bool(why) for why in refusals]
        both = channel.allgather((mine, cma_min)) if channel.size > 1 else [(mine, cma_min)]
        seen = [row for row, _ in both]
        me = channel.rank
        access = cls(
            can_read=[why is None for why in refusals],
            cma=[seen[p][me] is None for p in range(channel.size)],
            raw_max=[their_min - 1 if seen[me][p] is None else None
                     for p, (_, their_min) in enumerate(both)],
            peers=peers,
            all_cma=all(x is None for row in seen for x in row))
        why = next((w for w in refusals if w), None) or next(
            (f"rank {p} was refused access to this process's memory (its own warning "
             "says why)" for p in range(channel.size) if seen[p][me] is True), None)
        if why:
            warn_once(why)
        return access

    def release(self) -> None:
        """Close the peers' pidfds."""
        peers, self.peers = self.peers, {}
        for held in peers.values():
            _cma.release(held)


def _refusal(channel, peer: int, config, peers: dict[int, _cma.Peer]) -> str | None:
    """None if we may read *peer*'s memory: same node, same pid and user
    namespaces, a pidfd held (added to *peers*), and the kernel actually lets
    us (probed, never assumed). Otherwise why not ("" when CMA is not meant
    to be used)."""
    ch = channel
    if config.transport != "cma" or ch.nodes[peer] != ch.nodes[ch.rank]:
        return ""
    if peer == ch.rank:
        return None
    if ch.pidns[peer] != ch.pidns[ch.rank]:
        return f"rank {peer} runs in another pid namespace"
    mine, theirs = ch.userns[ch.rank], ch.userns[peer]
    if mine is not None and theirs is not None and mine != theirs:
        return (f"rank {peer} runs in another user namespace (uids and capabilities "
                "mean different things there)")
    pid = ch.pids[peer]
    try:
        held = _cma.hold(pid, peer)
    except OSError as exc:
        return (f"no pidfd for rank {peer} (pid {pid}), needed so that a read can never "
                f"reach another process that reuses its pid: {exc}")
    try:
        _cma.probe(pid)
    except OSError as exc:
        _cma.release(held)
        return f"cross-memory access to rank {peer} (pid {pid}) was refused: {exc}"
    peers[peer] = held
    return None
