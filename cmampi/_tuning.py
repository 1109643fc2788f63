"""Every size and time threshold of cmampi's protocols, in one place, with why.

The environment settings (``CMAMPI_*``, see `_config`) are the ones users tune;
these are the measured crossovers and buffer sizes behind them. Each module
imports what it uses from here, so a change here is the whole change.
"""

from __future__ import annotations

__all__ = [
           "AGREED_INLINE",
           "CHUNK",
           "CMA_MIN_BUSY_DEFAULTS",
           "CMA_MIN_BUSY_GUARDED",
           "CMA_MIN_DEFAULTS",
           "COARSE_RUN",
           "COLL_INLINE_MAX",
           "COOP_MIN",
           "EAGER_LIMIT",
           "LIBRARY_RUNS",
           "LOOK_SECONDS",
           "NATIVE_MAX",
           "OBJECT_MEDIUM",
           "OBJECT_RAW_MAX",
           "OBJECT_SLOT",
           "OOB_MIN",
           "P2P_OOB_MIN",
           "PIECE",
           "POOL",
           "POOL_MIN",
           "SPIN_SECONDS",
           "STREAM_INLINE",
]

# -- point to point ----------------------------------------------------------------------------
#: Messages up to this size travel as themselves, with no header (``CMAMPI_EAGER_LIMIT``).
EAGER_LIMIT = 4 << 10
#: From this size on payloads are pulled with CMA, per channel (``CMAMPI_CMA_MIN``).
#: MPI channel: MPICH and Open MPI copy large messages once themselves (CMA), so
#: a pull gains only by splitting the copy with the blocked sender, and pays its
#: Python bookkeeping (30-80 us a message where the interpreter is slow). A 1 MiB
#: ping-pong pulled ran at 1.06-1.14x mpi4py on one node (AMD EPYC) and at
#: 0.62-0.65x and 0.62-0.89x on two others; as itself at 0.91-1.03x on all three.
#: From 2 MiB on a pull ties or wins everywhere measured, from 4 MiB it leads
#: (1.1-1.6x). Over sockets a message costs two copies through the ring, so
#: pulling pays off sooner.
CMA_MIN_DEFAULTS = {"mpi": 2 << 20, "socket": 512 << 10}
#: ... but a rank that has receives of its own pending (both directions at once)
#: sends as itself below this size, unless ``CMAMPI_CMA_MIN`` is set (then it
#: alone decides): there both cores copy anyway, and the library's own single
#: copy has no bookkeeping in Python. Two ranks exchanging by ``Sendrecv`` or
#: ``Irecv`` + ``Isend`` ran at 0.84-0.86x mpi4py pulling 4 MiB and 0.97-0.99x
#: pulling 16 MiB, against 0.97-1.00x and 1.11-1.14x as themselves (medians of
#: three runs, MPICH 5.0, 2 ranks).
CMA_MIN_BUSY_DEFAULTS = {"mpi": 32 << 20, "socket": 512 << 10}
#: ... except on a guarded MPI channel (Open MPI, `channel.mpi.MPIChannel.guarded`),
#: whose receives of messages as themselves go through a datatype with a gap:
#: Open MPI's path for those runs at a quarter of its contiguous one's speed in
#: some jobs. 4 MiB exchanges ran at 0.22-0.73x mpi4py as themselves (six jobs),
#: 0.61-0.74x pulled: there the pull threshold holds with receives pending too.
CMA_MIN_BUSY_GUARDED = 2 << 20
#: From this size on a sender blocked in ``Send`` writes part of the payload itself
#: while the receiver pulls the rest (``CMAMPI_COOP_MIN``).
COOP_MIN = 1 << 20
#: Payload bytes per pulled piece of a strided transfer staged through cache
#: (``CMAMPI_CHUNK``).
CHUNK = 2 << 20
#: Runs of a strided layout at least this long travel as iovecs; shorter ones are
#: staged through cache, because the kernel pins the remote pages once per iovec.
COARSE_RUN = 2048

# -- collectives -------------------------------------------------------------------------------
#: Bytes per rank up to which a collective of numbers runs in the MPI library
#: (MPI channel): its shared-memory collectives beat pulls driven by Python there.
#: Measured crossovers on 2 ranks, MPICH (see the README's results).
NATIVE_MAX = {
    "Bcast": 4 << 20, "Gather": 2 << 20, "Scatter": 1 << 20, "Allgather": 64 << 10,
    "Alltoall": 1 << 20, "Reduce": 2 << 20, "Allreduce": 4 << 20, "Scan": 64 << 10,
    "Exscan": 64 << 10, "Reduce_scatter_block": 1 << 20,
}
#: Collectives the MPI library runs at every size on one node: above
#: `NATIVE_MAX` the ranks first agree on their arguments, as for cmampi's own,
#: then the library runs the call. cmampi's pushes lost to MPICH's own at every
#: size measured, mpi4py/cmampi on 2 ranks (AMD EPYC): Allgather 0.72, 0.84 and
#: 0.85-0.89 at 1, 4 and 16 MiB per rank; Alltoall 0.69, 0.75 and 0.91-0.92.
#: Each rank copies its own block and pushes it to the others, as the library
#: does, but a process_vm_writev of 16 MiB costs 1.0 ms against 0.6 ms for a
#: memcpy (the kernel pins every remote page), and nothing overlaps it.
LIBRARY_RUNS = frozenset({"Allgather", "Alltoall"})
#: Payload bytes per rank that ride in the agreement of a checked collective
#: (``CMAMPI_CHECK_COLLECTIVES=1``): a 2 KiB row costs 0.3-0.5 us more per call
#: than a 1 KiB one, and lets a 1 KiB Scatter or Alltoall ride too.
AGREED_INLINE = 2048
#: cmampi's own collectives: per-rank payloads up to this size travel inside
#: the exchange of descriptors itself.
COLL_INLINE_MAX = 16 << 10
#: Bytes a reduction pulls into cache, combines and writes out per piece.
PIECE = 512 << 10

# -- objects -----------------------------------------------------------------------------------
#: Contiguous buffers of a pickled object from this size on travel out of band
#: (pulled) in collectives: bcast + allgather of a 128 KiB array ran 2.6x as fast
#: as mpi4py out of band, 1.8x in band (MPICH, 2 ranks).
OOB_MIN = 128 << 10
#: The same for ``send``/``isend`` of an object. Below it the pickle travels in
#: band, as itself. Ping-pong, mpi4py's time over cmampi's (MPICH, 2 ranks): an
#: array of 256 KiB 0.89 in band against 0.77 out of band; one of 512 KiB 0.68
#: in band against 2.4 out of band.
P2P_OOB_MIN = 512 << 10
#: A pickle up to this long, outside the control band and below the pull
#: threshold, travels as itself: object receives post a receive this large (or
#: as large as the sender's largest message as itself, if that is smaller). Longer
#: ones announce their size first, which costs 15-20 us more (8 KiB: 15 us
#: against 34 us when announced; mpi4py 12 us).
OBJECT_RAW_MAX = 1 << 20
#: Bytes per rank of the one MPI collective that runs a lowercase bcast,
#: allgather or allreduce of objects that pickle short (3 of them say how
#: long): a 256-byte Bcast or Allgather costs what an 8-byte one does, and
#: the full path costs 7-14 us where mpi4py's takes 2.5-6 (MPICH, 2 ranks).
OBJECT_SLOT = 256
#: A lowercase collective whose objects pickle longer than a slot, up to this
#: size (nothing out of band), takes a second step, as mpi4py's does: the slots
#: say how long, a second collective moves the pickles (gather and reduce: point
#: to point to the root). mpi4py's time over cmampi's (MPICH, 2 ranks, medians):
#: lists of 100 ints in scatter, alltoall, gather and reduce 0.93-1.0 so,
#: 0.29-0.44 by the full path (its records and acks cost 20-40 us in Python);
#: lists of ints in bcast / allgather, pickled to 3 KB 1.02 / 0.92 so, 0.63 /
#: 0.54 by the full path; 30 KB 1.00 / 1.05 against 0.64 / 0.82; 150 KB 0.97 /
#: 1.01 against 1.04 / 0.94; 1 MB 1.08 / 0.99 against 0.90 / 1.01; 4.9 MB 0.98 /
#: 1.01 against 0.89 / 1.07 (pickling rules).
OBJECT_MEDIUM = 1 << 20
#: Pickle streams of object collectives up to this size travel inside the records.
STREAM_INLINE = 16 << 10
#: Receive buffers from this size on are anonymous mappings, kept for reuse
#: (``CMAMPI_POOL`` bytes of them); smaller ones come from numpy's allocator.
POOL_MIN = 4 << 20
#: Bytes of such mappings kept once dropped (``CMAMPI_POOL``): a receive of a size
#: seen before then takes no page faults.
POOL = 256 << 20

# -- socket channel ----------------------------------------------------------------------------
#: A wait polls the rings without blocking this long, then sleeps in ``poll()``.
SPIN_SECONDS = 5e-4
#: A spinning wait looks at the kernel (pidfds, sockets) this often: a ``poll()``
#: costs about a microsecond, as much as a few turns of the spin.
LOOK_SECONDS = 2e-4
