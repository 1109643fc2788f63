"""Drop-in namespace for ``mpi4py.MPI``: change the import line, keep the program.

On the MPI channel this module holds every name of mpi4py's ``MPI`` module,
with cmampi's communicator, request and message classes in place of mpi4py's
(``Intracomm``, ``Cartcomm``, ``Graphcomm``, ``Distgraphcomm``, ``Request``,
``Prequest``, ``Message``): subclasses of them, so a program or library that
checks types or takes handles sees mpi4py's. ``COMM_WORLD`` and ``COMM_SELF``
are cmampi communicators over the world's and self's handles. On the socket
channel the names come from cmampi's own table (``_names``), and mpi4py need not
be installed. Importing this module is collective over ``COMM_WORLD`` (where
MPI is not initialized yet, the first use of ``COMM_WORLD`` after ``MPI.Init`` is).
"""

from ._backend import choose as _choose
from ._backend import names as _names_in_use
from ._backend import world as _world

_base = _names_in_use()
globals().update({k: v for k, v in vars(_base).items()
                  if not k.startswith("__") or k == "__pyx_capi__"})
from .request import NO_PROC_HIT as _NO_PROC_HIT, Message, Prequest, Request  # noqa: E402, F401, I001
from ._userpickle import adopt as _adopt_pickle  # noqa: E402
from ._userpickle import forwarding as _forwarding_pickle  # noqa: E402

CHANNEL = _choose()
if CHANNEL == "mpi":
    #: mpi4py's own module, for cmampi where ``mpi4py.MPI`` names this one (cmampi.run).
    _real_mpi4py = _base
    #: Customized (``pickle.__init__``), it serializes the objects cmampi sends.
    pickle = _forwarding_pickle(_base.Pickle, _base.pickle)
    from .mpicomm import Cartcomm, Comm, Distgraphcomm, Graphcomm, Intracomm  # noqa: F401
else:
    from .grequest import Grequest  # noqa: F401
    from .socketcomm import Intracomm, _comm_lock_table  # type: ignore[assignment]  # the socket channel's  # noqa: F401
    from .sockettopo import Cartcomm, Compute_dims, Distgraphcomm, Graphcomm, Topocomm  # type: ignore[assignment]  # the socket channel's  # noqa: F401
    from .sockettopo import null_comm as _null_comm
    from .sockgroup import GROUP_EMPTY, GROUP_NULL, Group  # noqa: F401
    _adopt_pickle(_base.pickle)

if CHANNEL == "mpi" and not _base.Is_initialized():
    # mpi4py.rc.initialize is False: the program initializes MPI itself. The world
    # and self become cmampi's at their first use once it has (collective then);
    # used before, or first used after MPI is finalized, they are mpi4py's own.
    globals().pop("COMM_WORLD")     # mpi4py's, copied from its namespace above
    globals().pop("COMM_SELF")
    #: ``from cmampi.MPI import *`` finds the two through `__getattr__`.
    __all__ = [k for k in globals() if not k.startswith("_")] + ["COMM_WORLD", "COMM_SELF"]

    def __getattr__(name: str):
        if name not in ("COMM_WORLD", "COMM_SELF"):
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        if not _base.Is_initialized() or _base.Is_finalized():
            return getattr(_base, name)
        world, self_ = _world(Intracomm)
        globals().update(COMM_WORLD=world, COMM_SELF=self_)
        return globals()[name]
else:
    COMM_WORLD, COMM_SELF = _world(Intracomm)
if CHANNEL != "mpi":
    # The null objects mpi4py has, as objects of cmampi's classes (they pickle by name).
    COMM_NULL = _null_comm()
    REQUEST_NULL = Request()
    MESSAGE_NULL = Message()
    MESSAGE_NO_PROC = Message._matched(COMM_SELF._engine, _NO_PROC_HIT)
    MESSAGE_NO_PROC._permanent = True

# Functions, not the module: mpi4py's test_doc walks every module this one holds.
from ._finalize import at_exit as _at_exit  # noqa: E402
from ._finalize import deliver as _deliver  # noqa: E402
from ._watch import stop as _stop_watch  # noqa: E402


def _running() -> bool:
    """Whether MPI (or the socket job) is up: initialized, not finalized."""
    return bool(_base.Is_initialized() and not _base.Is_finalized())


def Finalize() -> None:
    """Terminate the MPI execution environment, once the sends that completed
    here before their receivers took them (buffered mode, freed requests) are
    delivered."""
    try:
        if _running():
            _deliver()
    finally:
        _stop_watch()   # it calls MPI
        _base.Finalize()


_at_exit(_running)
