"""cmampi: single-copy intra-node messaging for Python with an mpi4py-compatible API.

Payloads above the eager limit are pulled by the receiver straight out of the
sender's memory with Linux Cross Memory Attach (``process_vm_readv``).
"""

from __future__ import annotations

from .comm import Intracomm
from .request import Message, Prequest, Request

__all__ = ["Intracomm", "Request", "Prequest", "Message", "MPI", "COMM_WORLD", "COMM_SELF"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Wrapping the world communicator is collective: only on first use.
    if name in ("MPI", "COMM_WORLD", "COMM_SELF"):
        import importlib

        mod = importlib.import_module(".MPI", __name__)
        return mod if name == "MPI" else getattr(mod, name)
    raise AttributeError(f"module 'cmampi' has no attribute {name!r}")
