"""Wire formats of cmampi's messages: raw payloads, control headers, acks.

In the user space most messages are the payload itself, with no header, so the
receiver lets the channel write them straight into the user's buffer. Lengths
in a narrow band, ``(eager_limit, eager_limit + CTRL_MAX]``, are reserved for
control messages (a header padded into the band), so a message's length alone
tells the two apart; a payload whose length falls in the band travels as a
control message plus a side payload instead.

A control message is also a valid pickle, which loads as a `Control` holding
its header: a receive that expects a Python object can let the channel receive
and unpickle in one call and still recognise a control message by its type.
"""

from __future__ import annotations

import struct as _struct

from ._buffers import Layout

__all__ = [
    "ACK_FAILED",
    "ACK_HELP",
    "ACK_OK",
    "ACK_TRUNCATED",
    "AT",
    "CTRL_MAX",
    "F_HELP",
    "F_OFFER",
    "F_RECORD",
    "F_SYNC",
    "HELPED_SIZE",
    "PULL",
    "RECORD",
    "REPLY_MAX",
    "SIDE",
    "Control",
    "control",
    "flags",
    "header",
    "help_request",
    "helped",
    "holds_record",
    "is_control",
    "kind",
    "parse_help",
    "parse_helped",
    "parse_pull",
    "parse_record",
    "parse_side",
    "payload_size",
    "pull_control",
    "pull_header",
    "record_header",
    "side_header",
]

PULL = 1        # a descriptor: the receiver pulls the payload with CMA, then acks
SIDE = 2        # the payload follows in the side space
RECORD = 3      # the message is the bytes after the header: a record of cmampi's own

F_SYNC = 1      # the sender waits for the receiver to match (synchronous mode)
F_HELP = 2      # the sender is blocked waiting and can push part of the payload
F_OFFER = 4     # the header names a word of the sender's: 1 while it waits and can help
F_RECORD = 8    # the payload behind is an object's record (see `p2p.RecordReader`)

# Receiver -> sender replies in the side space (tag 2 * xid).
ACK_OK = 0
ACK_TRUNCATED = 1
ACK_FAILED = 2
ACK_HELP = 3    # followed by a layout: please write your bytes [lo, hi) there

_HEAD = _struct.Struct("<BBxxIQ")        # kind, flags, xid, nbytes
_LAYOUT = _struct.Struct("<qqqq")        # addr, lo, hi, ndim (then 2*ndim dims)
_HELP = _struct.Struct("<BxxxxxxxQQQ")   # ACK_HELP, lo, hi, address of byte lo
_HELPED = _struct.Struct("<Bxxxxxxxdd")  # the helper's code, when its copy began and ended
_OFFER = _struct.Struct("<Q")            # address of the sender's offer word (F_OFFER)



class Control:
    """A control message received where a Python object was expected."""

    __slots__ = ("head",)

    def __init__(self, head: bytes) -> None:
        self.head = head        # the header (and its padding): what `header` returns


# A control message is the pickle of ``Control(header + padding)``:
# PROTO 5, the global (SHORT_BINUNICODE x2, STACK_GLOBAL), BINBYTES8 <length>
# <header + padding>, then TUPLE1 REDUCE STOP.
_PICKLE_GLOBAL = b"".join(b"\x8c" + bytes((len(s),)) + s
                          for s in (__name__.encode(), Control.__name__.encode()))
_PICKLE_HEAD = b"\x80\x05" + _PICKLE_GLOBAL + b"\x93\x8e"
_PICKLE_TAIL = b"\x85R."
#: Offset of the header in a control message.
AT = len(_PICKLE_HEAD) + 8

#: Most bytes a control message's meaningful part takes (layouts of 32 dimensions).
CTRL_MAX = AT + _HEAD.size + _OFFER.size + _LAYOUT.size + 64 * 8 + len(_PICKLE_TAIL)


#: The struct of a layout of each number of dimensions: its head, then the dims.
_LAYOUTS = [_struct.Struct(f"<qqqq{2 * ndim}q") for ndim in range(33)]


def _layout_struct(ndim: int) -> _struct.Struct:
    return _LAYOUTS[ndim] if ndim < len(_LAYOUTS) else _struct.Struct(f"<qqqq{2 * ndim}q")


def _layout(layout: Layout) -> bytes:
    enc = layout.encode()
    return _layout_struct(enc[3]).pack(*enc)


def _parse_layout(buf, offset: int) -> Layout:
    ndim = _LAYOUT.unpack_from(buf, offset)[3]
    return Layout.decode(_layout_struct(ndim).unpack_from(buf, offset))


def control(head: bytes, limit: int) -> bytearray:
    """The control message of header *head*: padded into the control band, so
    it cannot be taken for a payload, and framed as a pickle of `Control`."""
    n = max(AT + len(head) + len(_PICKLE_TAIL), limit + 1)
    out = bytearray(n)
    out[:AT] = _PICKLE_HEAD + _struct.pack("<Q", n - AT - len(_PICKLE_TAIL))
    out[AT : AT + len(head)] = head
    out[n - len(_PICKLE_TAIL):] = _PICKLE_TAIL
    return out


def header(msg):
    """The header of control message *msg* (what `parse_pull` and `parse_side` read)."""
    return msg[AT:]


def is_control(count: int, limit: int) -> bool:
    """True when a user-space message of *count* bytes is a control message."""
    return limit < count <= limit + CTRL_MAX


#: A PULL descriptor of a one-dimensional layout: head, (offer,) layout, its dims.
_PULL_1D = _struct.Struct("<" + _HEAD.format[1:] + _LAYOUTS[1].format[1:])
_PULL_1D_OFFER = _struct.Struct("<" + _HEAD.format[1:] + _OFFER.format[1:]
                                + _LAYOUTS[1].format[1:])
_DIM_1D = _struct.Struct("<qq")
#: The first bytes of a control message of each length (`control`).
_PREFIXES: dict[int, bytes] = {}


def pull_control(xid: int, flags: int, layout: Layout, offer: int, limit: int) -> bytearray:
    """``control(pull_header(xid, flags, layout, offer), limit)``, built in place
    for a one-dimensional layout (the common case)."""
    if len(layout.shape) != 1:
        return control(pull_header(xid, flags, layout, offer), limit)
    st = _PULL_1D_OFFER if flags & F_OFFER else _PULL_1D
    n = max(AT + st.size + len(_PICKLE_TAIL), limit + 1)
    prefix = _PREFIXES.get(n)
    if prefix is None:
        prefix = _PREFIXES[n] = _PICKLE_HEAD + _struct.pack("<Q", n - AT - len(_PICKLE_TAIL))
    out = bytearray(n)
    out[:AT] = prefix
    dims = (layout.addr, layout.lo, layout.hi, 1, layout.shape[0], layout.strides[0])
    if flags & F_OFFER:
        st.pack_into(out, AT, PULL, flags, xid, layout.nbytes, offer, *dims)
    else:
        st.pack_into(out, AT, PULL, flags, xid, layout.nbytes, *dims)
    out[n - len(_PICKLE_TAIL):] = _PICKLE_TAIL
    return out


def pull_header(xid: int, flags: int, layout: Layout, offer: int = 0) -> bytes:
    """A PULL descriptor; with F_OFFER in *flags*, *offer* is the address of the
    sender's offer word (see `p2p.PullSendOp`)."""
    head = _HEAD.pack(PULL, flags, xid, layout.nbytes)
    if flags & F_OFFER:
        head += _OFFER.pack(offer)
    return head + _layout(layout)


def side_header(xid: int, flags: int, nbytes: int) -> bytes:
    return _HEAD.pack(SIDE, flags, xid, nbytes)


def record_header(data: bytes) -> bytes:
    """The header of a RECORD control message carrying *data* (see `holds_record`)."""
    return _HEAD.pack(RECORD, 0, 0, len(data)) + data


def holds_record(nbytes: int, limit: int) -> bool:
    """Whether a record of *nbytes* fits in a control message."""
    return AT + _HEAD.size + nbytes + len(_PICKLE_TAIL) <= limit + CTRL_MAX


def parse_record(head):
    """The data a RECORD header carries."""
    n = _HEAD.unpack_from(head)[3]
    return head[_HEAD.size : _HEAD.size + n]


def kind(head) -> int:
    """PULL, SIDE or RECORD: the kind of a control message's header."""
    return head[0]


def flags(head) -> int:
    """The flags (F_SYNC, F_RECORD, ...) of a control message's header."""
    return head[1]


def parse_pull(buf) -> tuple[int, int, int, Layout, int]:
    """(flags, xid, nbytes, remote layout, address of the offer word or 0) of a
    PULL descriptor's header."""
    _, flags, xid, nbytes = _HEAD.unpack_from(buf)
    at, offer = _HEAD.size, 0
    if flags & F_OFFER:
        offer = _OFFER.unpack_from(buf, at)[0]
        at += _OFFER.size
    addr, lo, hi, ndim = _LAYOUT.unpack_from(buf, at)
    if ndim != 1:
        return flags, xid, nbytes, _parse_layout(buf, at), offer
    shape, stride = _DIM_1D.unpack_from(buf, at + _LAYOUT.size)
    return flags, xid, nbytes, Layout(addr, (shape,), (stride,), lo, hi), offer


def parse_side(buf) -> tuple[int, int, int]:
    """(flags, xid, nbytes) of a SIDE descriptor's header."""
    _, flags, xid, nbytes = _HEAD.unpack_from(buf)
    return flags, xid, nbytes


#: Size of the buffer a sender posts for the receiver's reply.
REPLY_MAX = _HELP.size


def help_request(lo: int, hi: int, addr: int) -> bytes:
    """Receiver -> sender: write your stream bytes [lo, hi) to our address *addr*."""
    return _HELP.pack(ACK_HELP, lo, hi, addr)


def parse_help(buf) -> tuple[int, int, int]:
    """(lo, hi, addr) of a help request."""
    return _HELP.unpack_from(buf)[1:]


#: Size of the notice a helping sender sends once its part of the copy is over.
HELPED_SIZE = _HELPED.size


def helped(code: int, began: float, ended: float) -> bytes:
    """Sender -> receiver: our part is written (ACK_OK) or not; the copy began
    at *began* and ended at *ended* (CLOCK_MONOTONIC seconds, which every
    process on a host shares)."""
    return _HELPED.pack(code, began, ended)


def parse_helped(buf) -> tuple[int, float, float]:
    """(code, began, ended) of a helper's notice."""
    return _HELPED.unpack_from(buf)


def payload_size(msg, limit: int) -> int:
    """Payload bytes a user-space message carries (raw or control)."""
    if not is_control(len(msg), limit):
        return len(msg)
    return _HEAD.unpack_from(msg, AT)[3]
