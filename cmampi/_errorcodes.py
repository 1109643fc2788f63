"""Error classes, codes and strings a program adds (``MPI.Add_error_class`` and kin).

The socket channel's namespace keeps them here. As in MPI, a class or code
the program added numbers above ``ERR_LASTCODE`` (the ``LASTUSEDCODE``
attribute is the largest in use), a code belongs to one class, and each may
have a string. Removing is the reverse: a string first, then a code, then a
class with no code left.
"""

from __future__ import annotations

import threading as _threading

__all__ = ["ErrorCodes", "InUse", "NotAdded"]


class NotAdded(LookupError):
    """The code or class was not added by the program (or was removed)."""


class InUse(ValueError):
    """The code or class still has a string, or the class still has codes."""


class ErrorCodes:
    """The classes and codes a program added, their classes and strings."""

    def __init__(self, last_predefined: int) -> None:
        self._lock = _threading.Lock()
        #: the largest number given out so far (``LASTUSEDCODE``); never given again
        self.last_used = last_predefined
        self._class_of: dict[int, int] = {}    # added class or code -> its class
        self._strings: dict[int, str] = {}

    def add_class(self) -> int:
        """A new error class."""
        with self._lock:
            self.last_used += 1
            self._class_of[self.last_used] = self.last_used
            return self.last_used

    def add_code(self, errorclass: int, predefined: bool) -> int:
        """A new error code of *errorclass* (*predefined*: whether it is one of MPI's)."""
        with self._lock:
            if not predefined and self._class_of.get(errorclass) != errorclass:
                raise NotAdded(errorclass)
            self.last_used += 1
            self._class_of[self.last_used] = errorclass
            return self.last_used

    def class_of(self, errorcode: int) -> int | None:
        """The class of an added code or class (None: not added)."""
        return self._class_of.get(errorcode)

    def string_of(self, errorcode: int) -> str | None:
        """The string of an added code or class ("" when it has none; None: not added)."""
        if errorcode not in self._class_of:
            return None
        return self._strings.get(errorcode, "")

    def set_string(self, errorcode: int, string: str) -> None:
        with self._lock:
            if errorcode not in self._class_of:
                raise NotAdded(errorcode)
            self._strings[errorcode] = string

    def remove_string(self, errorcode: int) -> None:
        with self._lock:
            if errorcode not in self._class_of:
                raise NotAdded(errorcode)
            self._strings.pop(errorcode, None)

    def remove_code(self, errorcode: int) -> None:
        with self._lock:
            errorclass = self._class_of.get(errorcode)
            if errorclass is None or errorclass == errorcode:
                raise NotAdded(errorcode)
            if errorcode in self._strings:
                raise InUse(errorcode)
            del self._class_of[errorcode]

    def remove_class(self, errorclass: int) -> None:
        with self._lock:
            if self._class_of.get(errorclass) != errorclass:
                raise NotAdded(errorclass)
            if errorclass in self._strings or any(
                    cls == errorclass and code != errorclass
                    for code, cls in self._class_of.items()):
                raise InUse(errorclass)
            del self._class_of[errorclass]
