"""Process groups on the socket channel, as mpi4py's ``MPI.Group``.

A group is an ordered list of processes, named here by their rank in the
world (``COMM_WORLD``), with the calling process's own world rank to answer
``Get_rank``. Groups are local objects: making one never communicates.
`socketcomm.Intracomm` makes them (``Get_group``) and makes communicators
from them (``Create``, ``Create_group``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

from . import _names
from .comm import as_int

__all__ = ["GROUP_EMPTY", "GROUP_NULL", "Group"]


class Group:
    """Group of processes."""

    __slots__ = ("__weakref__", "_handle", "_me", "_members", "_null")

    _handles = itertools.count(2)       # 0: the null group, 1: the empty one

    def __init__(self, group: Group | None = None) -> None:
        #: world ranks in group order (None: the null group)
        self._members: tuple[int, ...] | None = None
        self._me = _names.UNDEFINED       # our world rank
        self._null = True
        #: what MPI's handle is: copies (``Group(group)``) share it, and compare equal
        self._handle = 0
        if group is not None:
            self._members, self._me, self._null = group._members, group._me, group._null
            self._handle = group._handle

    @classmethod
    def _of(cls, members: Iterable[int], me: int) -> Group:
        """The group of world ranks *members* (in that order), seen by world rank *me*."""
        self = cls()
        self._members, self._me, self._null = tuple(members), me, False
        self._handle = next(cls._handles)
        return self

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Group):
            return NotImplemented
        return self._handle == other._handle

    def __ne__(self, other: object) -> bool:
        if not isinstance(other, Group):
            return NotImplemented
        return self._handle != other._handle

    __hash__ = None     # type: ignore[assignment]  # unhashable, as mpi4py's (compared by handle)

    def __bool__(self) -> bool:
        return not self._null

    def __repr__(self) -> str:
        if self._members is None:       # the null group
            return "<cmampi.Group (null)>"
        return f"<cmampi.Group of {len(self._members)} processes>"

    def __reduce__(self):
        if self is GROUP_EMPTY or self is GROUP_NULL:
            return "GROUP_EMPTY" if self is GROUP_EMPTY else "GROUP_NULL"
        if self._handle == GROUP_EMPTY._handle:
            return _predefined, ("GROUP_EMPTY",)
        if self._handle == GROUP_NULL._handle:
            return _predefined, ("GROUP_NULL",)
        raise ValueError("cannot serialize Group instance")

    def _live(self) -> tuple[int, ...]:
        members = self._members
        if members is None:             # the null group
            raise _names.Exception(_names.ERR_GROUP)
        return members

    # -- accessors --------------------------------------------------------------------------
    def Get_size(self) -> int:
        """Return the number of processes in a group."""
        return len(self._live())

    @property
    def size(self) -> int:
        """Number of processes."""
        return self.Get_size()

    def Get_rank(self) -> int:
        """Return the rank of this process in a group (``UNDEFINED`` if not in it)."""
        members = self._live()
        return members.index(self._me) if self._me in members else _names.UNDEFINED

    @property
    def rank(self) -> int:
        """Rank of this process."""
        return self.Get_rank()

    def Translate_ranks(self, ranks: Sequence[int] | None = None,
                        group: Group | None = None) -> list[int]:
        """Translate ranks in a group to those in another group (``COMM_WORLD``'s
        if *group* is None); ``UNDEFINED`` for a process not in it."""
        members = self._live()
        ranks = range(len(members)) if ranks is None else \
            [r if r == _names.PROC_NULL else self._checked(r, members)
             for r in map(as_int, ranks)]
        other = group._live() if group is not None else None
        out = []
        for r in ranks:
            if r == _names.PROC_NULL:
                out.append(_names.PROC_NULL)
            elif other is None:
                out.append(members[r])
            else:
                w = members[r]
                out.append(other.index(w) if w in other else _names.UNDEFINED)
        return out

    def Compare(self, group: Group) -> int:
        """Compare two groups: ``IDENT`` (same processes, same order), ``SIMILAR``
        (same processes) or ``UNEQUAL``."""
        a, b = self._live(), group._live()
        if a == b:
            return _names.IDENT
        return _names.SIMILAR if sorted(a) == sorted(b) else _names.UNEQUAL

    # -- constructors -----------------------------------------------------------------------
    def Dup(self) -> Group:
        """Duplicate a group."""
        return Group._of(self._live(), self._me)

    @classmethod
    def Union(cls, group1: Group, group2: Group) -> Group:
        """Create a new group from the union of two existing groups."""
        a, b = group1._live(), group2._live()
        return cls._of(a + tuple(w for w in b if w not in a), group1._me)

    @classmethod
    def Intersection(cls, group1: Group, group2: Group) -> Group:
        """Create a new group from the intersection of two existing groups."""
        b = group2._live()
        return cls._of((w for w in group1._live() if w in b), group1._me)

    Intersect = Intersection

    @classmethod
    def Difference(cls, group1: Group, group2: Group) -> Group:
        """Create a new group from the difference of two existing groups."""
        b = group2._live()
        return cls._of((w for w in group1._live() if w not in b), group1._me)

    def Incl(self, ranks: Sequence[int]) -> Group:
        """Create a new group by including listed members."""
        members = self._live()
        ranks = [self._checked(r, members) for r in ranks]
        if len(set(ranks)) != len(ranks):
            raise _names.Exception(_names.ERR_RANK)
        return Group._of((members[r] for r in ranks), self._me)

    def Excl(self, ranks: Sequence[int]) -> Group:
        """Create a new group by excluding listed members."""
        members = self._live()
        out = {self._checked(r, members) for r in ranks}
        if len(out) != len(ranks):
            raise _names.Exception(_names.ERR_RANK)
        return Group._of((w for r, w in enumerate(members) if r not in out), self._me)

    def Range_incl(self, ranks: Sequence[tuple[int, int, int]]) -> Group:
        """Create a new group by including ranges of members."""
        return self.Incl(self._ranges(ranks))

    def Range_excl(self, ranks: Sequence[tuple[int, int, int]]) -> Group:
        """Create a new group by excluding ranges of members."""
        return self.Excl(self._ranges(ranks))

    def Free(self) -> None:
        """Free a group (the predefined ones stay)."""
        self._live()
        if self is not GROUP_EMPTY:
            self._members, self._null, self._handle = None, True, 0

    def free(self) -> None:
        """Call `Free` if not null or predefined."""
        if not self._null and self is not GROUP_EMPTY:
            self.Free()

    # -- helpers ----------------------------------------------------------------------------
    def _checked(self, rank, members: tuple[int, ...]) -> int:
        """*rank* as an int, a rank of this group of *members* (``ERR_RANK`` if not)."""
        r = as_int(rank)
        if not 0 <= r < len(members):
            raise _names.Exception(_names.ERR_RANK)
        return r

    def _ranges(self, ranges: Sequence[tuple[int, int, int]]) -> list[int]:
        """The ranks of (first, last, stride) triplets, in order."""
        out: list[int] = []
        for first, last, stride in ranges:
            if stride == 0:
                raise _names.Exception(_names.ERR_ARG)
            out.extend(range(first, last + (1 if stride > 0 else -1), stride))
        return out


def _predefined(name: str) -> Group:
    """A copy of the predefined group *name* (what a pickled one loads as)."""
    return Group(globals()[name])


GROUP_NULL = Group()
GROUP_EMPTY = Group._of((), _names.UNDEFINED)
GROUP_EMPTY._handle = 1
