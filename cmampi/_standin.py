"""Classes that stand in for mpi4py's: ``isinstance``/``issubclass`` accept mpi4py's own.

cmampi's namespace replaces some of mpi4py's classes (``MPI.Request``,
``MPI.Intracomm``, ...) with subclasses. Code that checks
``isinstance(obj, MPI.Request)`` must still accept the objects mpi4py itself
makes (a delegated ``Ibcast``'s request, ``Intercomm.Merge``'s communicator),
as it would without cmampi: the stand-in's metaclass says so. Only the
stand-in itself is widened; a user's subclass of it checks as usual.
"""

from __future__ import annotations

from typing import Any

__all__ = ["StandIn", "is_ours"]


class StandIn(type):
    """Metaclass of a class standing in for the mpi4py class it subclasses."""

    def _stands_for(cls) -> Any:
        for base in cls.__mro__[1:]:
            if base.__module__.startswith("mpi4py"):
                return base
        return None

    def __instancecheck__(cls, obj: Any) -> bool:
        if type.__instancecheck__(cls, obj):
            return True
        real = cls.__dict__.get("_stand_in_for")
        return real is not None and isinstance(obj, real)

    def __subclasscheck__(cls, sub: Any) -> bool:
        if type.__subclasscheck__(cls, sub):
            return True
        real = cls.__dict__.get("_stand_in_for")
        return real is not None and issubclass(sub, real)

    def __init__(cls, name, bases, namespace, **kwargs) -> None:
        super().__init__(name, bases, namespace, **kwargs)
        # Widened only where the class says so (a subclass of it is not).
        if namespace.get("_stand_in", False):
            cls._stand_in_for = cls._stands_for()


def is_ours(cls: type, obj: Any) -> bool:
    """``isinstance(obj, cls)`` without the widening: *obj* is cmampi's."""
    return type.__instancecheck__(cls, obj)
