"""cmampi: single-copy intra-node messaging for Python with an mpi4py-compatible API.

Payloads above the eager limit are pulled by the receiver straight out of the
sender's memory with Linux Cross Memory Attach (``process_vm_readv``).
``from cmampi import MPI`` is a drop-in for ``from mpi4py import MPI``;
``python -m cmampi.run prog.py`` runs an unmodified mpi4py program on cmampi.
"""

from __future__ import annotations

__all__ = [
    "COMM_SELF",
    "COMM_WORLD",
    "MPI",
    "Intracomm",
    "Message",
    "Prequest",
    "Request",
    "accelerate",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Loading the MPI namespace is collective (it attaches the world): on first use.
    if name == "accelerate":        # attaches only the communicator it is given
        from .mpicomm import accelerate

        return accelerate
    if name in __all__:
        import importlib

        mod = importlib.import_module(".MPI", __name__)
        return mod if name == "MPI" else getattr(mod, name)
    raise AttributeError(f"module 'cmampi' has no attribute {name!r}")
