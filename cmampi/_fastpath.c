/* The compiled path of small nonblocking messages (see _fastpath.py).

   A small receive is posted into a stage inside its own object, as the Python
   engine posts it into a stage array; a small send goes from the user's buffer
   as itself. Waitall completes a list of them with MPI_Waitsome and copies each
   message that is itself (at most the eager limit) from its stage into the
   user's buffer. Anything else (a control message of cmampi's protocol, a
   truncation, an error) is left "arrived" for the Python engine, which takes the
   op over (`p2p.promote`): no protocol is decided here.

   Built once per MPI library from that library's mpi.h (MPI_Comm and
   MPI_Request differ between MPICH and Open MPI), linked to the library
   mpi4py loaded. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <mpi.h>
#include "mpi4py/mpi4py.h"

#ifndef FASTPATH_NAME
#error "FASTPATH_NAME: the module's name (one per MPI library)"
#endif
#define STR_(x) #x
#define STR(x) STR_(x)
#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)

/* An op's state (_fastpath.py names them for Python). */
enum { POSTED = 0, DONE = 1, ARRIVED = 2, RELEASED = 3 };

typedef struct Staged {
    PyObject_VAR_HEAD
    struct Staged *prev, *next;  /* the live list (POSTED or ARRIVED), which holds a reference */
    MPI_Request req;
    Py_buffer view;              /* the user's buffer, until done or released */
    int has_view;
    int is_recv;
    int split;                   /* a receive into the buffer but for its head (band bytes) */
    int whole;                   /* an object's receive: the whole message lands in `own` */
    char *own;                   /* an object's receive: its buffer (`take_block`) */
    Py_ssize_t own_len;
    int state;
    int busy;                    /* a wait without the GIL holds its request */
    int source, tag, error;      /* of the completed message */
    MPI_Status st;               /* its status, as MPI gave it (the error in MPI_ERROR) */
    Py_ssize_t count;            /* bytes of the completed message */
    Py_ssize_t nbytes;           /* bytes the user's buffer takes (receives) */
    Py_ssize_t stage_len;        /* bytes of the stage the engine sees (the buffer export) */
    PyObject *engine;            /* the engine the op belongs to */
    PyObject *obj;               /* the buffer argument as the user gave it (a spec) */
    PyObject *op;                /* the Python op it became (p2p.promote) */
    char stage[1];               /* receives: the message lands here */
} Staged;

static PyTypeObject StagedType;
/* Sentinels of the live lists: sends, then receives (`is_recv`), each in the
   order posted. Waits look through the receives alone (a send needs nothing of
   this rank), however many sends a window keeps in flight. */
static Staged live_heads[2];
static Py_ssize_t live_count = 0, live_recvs = 0;
static Py_ssize_t cfg_limit = -1, cfg_band = -1, cfg_cma_min = -1, cfg_cma_min_busy = -1;
static MPI_Datatype gap_type = MPI_DATATYPE_NULL;  /* guarded receives (Open MPI) */
static PyObject *str_fast = NULL;
static PyObject *mpi_exception = NULL;

static void link_live(Staged *s) {
    Staged *head = &live_heads[s->is_recv != 0];
    Py_INCREF(s);
    s->prev = head->prev;
    s->next = head;
    head->prev->next = s;
    head->prev = s;
    live_count++;
    live_recvs += s->is_recv;
}

/* Unlink (if linked) and drop the list's reference: the caller holds one. */
static void unlink_live(Staged *s) {
    if (s->next == NULL) return;
    s->prev->next = s->next;
    s->next->prev = s->prev;
    s->prev = s->next = NULL;
    live_count--;
    live_recvs -= s->is_recv;
    Py_DECREF(s);
}

/* The buffers of objects' receives (a stage as large as the longest message a
   source sends as itself): a few freed ones are kept for the next receives, so
   that a window of receives does not allocate (nor fault in) a stage each. */
#define BLOCKS_KEPT 4
static char *kept_blocks[BLOCKS_KEPT];
static Py_ssize_t kept_lens[BLOCKS_KEPT];
static int kept_count = 0;

/* A buffer of *len* bytes (a kept one if there is one), or NULL. */
static char *take_block(Py_ssize_t len) {
    for (int k = kept_count - 1; k >= 0; k--)
        if (kept_lens[k] == len) {
            char *b = kept_blocks[k];
            kept_blocks[k] = kept_blocks[--kept_count];
            kept_lens[k] = kept_lens[kept_count];
            return b;
        }
    return malloc((size_t)len);
}

/* Keep *b* (of *len* bytes) for a later `take_block`, or free it. */
static void give_block(char *b, Py_ssize_t len) {
    if (b == NULL) return;
    if (kept_count == BLOCKS_KEPT) {
        free(kept_blocks[0]);       /* the oldest goes */
        kept_blocks[0] = kept_blocks[--kept_count];
        kept_lens[0] = kept_lens[kept_count];
    }
    kept_blocks[kept_count] = b;
    kept_lens[kept_count++] = len;
}

static void drop_view(Staged *s) {
    if (s->has_view) {
        s->has_view = 0;
        PyBuffer_Release(&s->view);
    }
}

static int Staged_traverse(Staged *s, visitproc visit, void *arg) {
    Py_VISIT(s->engine);
    Py_VISIT(s->obj);
    Py_VISIT(s->op);
    return 0;
}

static int Staged_clear(Staged *s) {
    Py_CLEAR(s->engine);
    Py_CLEAR(s->op);
    if (!s->has_view) Py_CLEAR(s->obj);
    return 0;
}

static void Staged_dealloc(Staged *s) {
    /* Never linked here: the live list holds a reference until done or released,
       and a released request's memory is kept by its Python op. */
    PyObject_GC_UnTrack(s);
    drop_view(s);
    give_block(s->own, s->own_len);
    Py_CLEAR(s->engine);
    Py_CLEAR(s->obj);
    Py_CLEAR(s->op);
    PyObject_GC_Del(s);
}

static int Staged_getbuffer(Staged *s, Py_buffer *view, int flags) {
    if (!s->is_recv) {
        PyErr_SetString(PyExc_BufferError, "a send has no stage");
        return -1;
    }
    if (s->whole)   /* an object's receive: its buffer (kept while exported: the op's) */
        return PyBuffer_FillInfo(view, (PyObject *)s, s->own, s->own_len, 0, flags);
    return PyBuffer_FillInfo(view, (PyObject *)s, s->stage, s->stage_len, 0, flags);
}

static PyBufferProcs Staged_as_buffer = {(getbufferproc)Staged_getbuffer, NULL};

static Staged *new_staged(Py_ssize_t stage, PyObject *engine, PyObject *obj, int is_recv) {
    Staged *s = PyObject_GC_NewVar(Staged, &StagedType, stage);
    if (s == NULL) return NULL;
    s->prev = s->next = NULL;
    s->req = MPI_REQUEST_NULL;
    s->has_view = 0;
    s->is_recv = is_recv;
    s->split = 0;
    s->whole = 0;
    s->own = NULL;
    s->own_len = 0;
    s->stage_len = stage;
    s->state = POSTED;
    s->busy = 0;
    s->source = s->tag = -1;
    s->error = MPI_SUCCESS;
    s->count = 0;
    s->nbytes = 0;
    Py_INCREF(engine);
    s->engine = engine;
    Py_INCREF(obj);
    s->obj = obj;
    s->op = NULL;
    PyObject_GC_Track(s);
    return s;
}

/* What configure() names: the request class of compiled ops, the buffer types
   taken as they are, and mpi4py's MPI.BYTE (specs [buffer, count, MPI.BYTE]). */
static PyTypeObject *request_type = NULL;
/* The request class of objects' receives (set by `objects()`). */
static PyTypeObject *object_request_type = NULL;
static PyObject *ndarray_type = NULL, *mmap_type = NULL, *byte_type = NULL;
static PyObject *empty_tuple = NULL;
static int tag_ub = 32767;
/* The Python engine's receives that wait for progress (p2p._PENDING, a dict) and
   ops left to finish on their own (p2p._DETACHED, a list). */
static PyObject *engine_pending = NULL, *engine_detached = NULL;

/* Whether an op of the Python engine waits for progress: something pending or
   detached (a finalizer run by an allocation may have handed one over since the
   caller looked). A compiled wait would not advance it. */
static int engine_waits(void) {
    return PyDict_GET_SIZE(engine_pending) > 0 || PyList_GET_SIZE(engine_detached) > 0;
}

/* Whether nothing but the caller's *m* compiled receives waits for this rank to
   act: no other compiled receive live, and not `engine_waits`. A wait or blocking
   call that sees this may block in the MPI library alone: the compiled sends
   live meanwhile are messages as themselves, which the library completes. */
static int nothing_else_waits(Py_ssize_t m) {
    return live_recvs == m && !engine_waits();
}

/* The buffer a message spec names and how many of its bytes (-1: all), if it is
   one of the forms this path takes: a numpy array, bytearray, mmap (or bytes, to
   send), bare or as [buffer, count, MPI.BYTE]. NULL: not one. Borrowed. */
static PyObject *spec_buffer(PyObject *spec, int writable, Py_ssize_t *nbytes) {
    PyObject *buf = spec;
    *nbytes = -1;
    PyTypeObject *t = Py_TYPE(spec);
    if ((t == &PyList_Type || t == &PyTuple_Type) && Py_SIZE(spec) == 3) {
        PyObject **item = t == &PyList_Type ? ((PyListObject *)spec)->ob_item
                                            : ((PyTupleObject *)spec)->ob_item;
        if (item[2] != byte_type || !PyLong_CheckExact(item[1])) return NULL;
        Py_ssize_t count = PyLong_AsSsize_t(item[1]);
        if (count < 0) {
            PyErr_Clear();
            return NULL;
        }
        *nbytes = count;
        buf = item[0];
        t = Py_TYPE(buf);
    }
    if ((PyObject *)t == ndarray_type || t == &PyByteArray_Type || (PyObject *)t == mmap_type ||
            (t == &PyBytes_Type && !writable))
        return buf;
    return NULL;
}

/* Whether a buffer's format is plain native data, as the engine sends raw
   (no Python objects, no foreign byte order). */
static int plain_format(const char *format) {
    if (format == NULL) return 1;
#if PY_BIG_ENDIAN
    return strpbrk(format, "O<") == NULL;
#else
    return strpbrk(format, "O>!") == NULL;
#endif
}

/* Take the buffer of *spec* into *view* and the bytes it names into *nbytes*; 0
   with no error set (and no view held) if it is not one this path takes, or holds
   fewer than the count (the caller's Python path decides). */
static int take_buffer(PyObject *spec, int writable, Py_buffer *view, Py_ssize_t *nbytes) {
    PyObject *buf = spec_buffer(spec, writable, nbytes);
    if (buf == NULL) return 0;
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(buf, view, flags) < 0) {
        PyErr_Clear();
        return 0;
    }
    if (*nbytes < 0) *nbytes = view->len;
    if (*nbytes > view->len || *nbytes > INT_MAX || !plain_format(view->format)) {
        PyBuffer_Release(view);
        return 0;
    }
    return 1;
}

/* `take_buffer` into op *s*. */
static int take_view(Staged *s, PyObject *spec, int writable) {
    if (!take_buffer(spec, writable, &s->view, &s->nbytes)) return 0;
    s->has_view = 1;
    return 1;
}

static int as_int(PyObject *o, int *out) {
    if (!PyLong_CheckExact(o)) return 0;
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (v < INT_MIN || v > INT_MAX) return 0;
    *out = (int)v;
    return 1;
}

/* The request of compiled op *s* (a new reference), or NULL with an error. */
static PyObject *request_of(Staged *s) {
    /* mpi4py's own tp_new, as the class's __new__ calls it, without a Python frame */
    PyObject *req = PyMPIRequest_Type.tp_new(s->whole ? object_request_type : request_type,
                                             empty_tuple, NULL);
    if (req == NULL) return NULL;
    if (PyObject_SetAttr(req, str_fast, (PyObject *)s) < 0) {
        Py_DECREF(req);
        return NULL;
    }
    return req;
}

/* A request's end. Most requests of compiled ops end null (their op done, or
   handed to the engine: `_fast` is None) and leave nothing for `Request.__del__`
   to hand over; calling it costs a request's end 0.25 us more than mpi4py's.
   So their classes' finalizer looks at the `_fast` slot first, and calls the
   class's own (that __del__) only for a request that still holds an op. */
static Py_ssize_t fast_offset = -1;                 /* of the `_fast` slot */
static void (*python_finalize)(PyObject *) = NULL;  /* the classes' own */

static void finalize_request(PyObject *req) {
    PyObject *f = *(PyObject **)((char *)req + fast_offset);
    if (f != Py_None) python_finalize(req);     /* unset, or an op: __del__ decides */
}

/* Give request class *t* `finalize_request`, if its objects keep `_fast` in a
   slot and it has a finalizer (the classes' own, the same for every class);
   otherwise leave it as it is. 0, or -1 with an error set. */
static int finalize_fast(PyTypeObject *t) {
    if (t->tp_finalize == finalize_request || t->tp_finalize == NULL) return 0;
    PyObject *d = PyObject_GetAttr((PyObject *)t, str_fast);
    if (d == NULL) {
        PyErr_Clear();
        return 0;
    }
    int slot = Py_IS_TYPE(d, &PyMemberDescr_Type) &&
               ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX;
    Py_ssize_t offset = slot ? ((PyMemberDescrObject *)d)->d_member->offset : -1;
    Py_DECREF(d);
    if (!slot || (fast_offset >= 0 && offset != fast_offset) ||
            (python_finalize != NULL && t->tp_finalize != python_finalize))
        return 0;
    fast_offset = offset;
    python_finalize = t->tp_finalize;
    t->tp_finalize = finalize_request;
    return 0;
}

/* The communicator, or NULL (not one, or *peer* and *tag* not a rank and tag
   of it this path takes: the Python path checks them). */
static MPI_Comm *comm_for(PyObject *comm, PyObject *peer, PyObject *tagobj, int any,
                          int *rank, int *tag) {
    MPI_Comm *c;
    int size;
    if (!PyObject_TypeCheck(comm, &PyMPIComm_Type) || !as_int(peer, rank) ||
            !as_int(tagobj, tag))
        return NULL;
    c = PyMPIComm_Get(comm);
    if (MPI_Comm_size(*c, &size) != MPI_SUCCESS) return NULL;
    if (!((0 <= *rank && *rank < size) || (any && *rank == MPI_ANY_SOURCE))) return NULL;
    if (!((0 <= *tag && *tag <= tag_ub) || (any && *tag == MPI_ANY_TAG))) return NULL;
    return c;
}

/* Split receives' datatypes, kept by address: a window of receives into one
   buffer reuses the stages of the window before (malloc hands the same memory
   back), so most are made once (a new one costs about 0.4 us with MPICH). One
   that an entry gives up stays valid for the receives still using it (MPI). */
#define SPLIT_TYPES 256
static struct {
    char *stage, *tail;
    Py_ssize_t tail_len;
    MPI_Datatype dt;
} split_types[SPLIT_TYPES];

/* Guarded receives of objects' stages (see `irecv_object`), kept by address as
   `split_types` are: the stages are the engine's, reused. */
#define GUARD_TYPES 64
static struct {
    char *buf;
    Py_ssize_t len;
    MPI_Datatype dt;
} guard_types[GUARD_TYPES];

/* The committed datatype of the first *len* - 1 bytes at *buf*, a gap of one, then
   one byte: a message of *len* bytes ends past the gap, and one longer is
   truncated there (a guarded channel: see channel/mpi.py). MPI_DATATYPE_NULL if
   MPI refuses. */
static MPI_Datatype guard_type(char *buf, Py_ssize_t len) {
    size_t h = (((size_t)buf >> 4) ^ (size_t)len) % GUARD_TYPES;
    if (guard_types[h].dt != MPI_DATATYPE_NULL && guard_types[h].buf == buf &&
            guard_types[h].len == len)
        return guard_types[h].dt;
    MPI_Datatype dt;
    int lens[2] = {(int)len - 1, 1};
    MPI_Aint displs[2];
    MPI_Get_address(buf, &displs[0]);
    MPI_Get_address(buf + len, &displs[1]);
    if (MPI_Type_create_hindexed(2, lens, displs, MPI_BYTE, &dt) != MPI_SUCCESS)
        return MPI_DATATYPE_NULL;
    if (MPI_Type_commit(&dt) != MPI_SUCCESS) {
        MPI_Type_free(&dt);
        return MPI_DATATYPE_NULL;
    }
    if (guard_types[h].dt != MPI_DATATYPE_NULL) MPI_Type_free(&guard_types[h].dt);
    guard_types[h].buf = buf;
    guard_types[h].len = len;
    guard_types[h].dt = dt;
    return dt;
}

/* The committed datatype of a stage's band bytes, then *tail_len* bytes at *tail*;
   MPI_DATATYPE_NULL if MPI refuses. */
static MPI_Datatype split_type(char *stage, char *tail, Py_ssize_t tail_len) {
    size_t h = (((size_t)stage >> 4) ^ ((size_t)tail >> 4) ^ (size_t)tail_len) % SPLIT_TYPES;
    if (split_types[h].dt != MPI_DATATYPE_NULL && split_types[h].stage == stage &&
            split_types[h].tail == tail && split_types[h].tail_len == tail_len)
        return split_types[h].dt;
    MPI_Datatype dt;
    int lens[2] = {(int)cfg_band, (int)tail_len};
    MPI_Aint displs[2];
    MPI_Get_address(stage, &displs[0]);
    MPI_Get_address(tail, &displs[1]);
    if (MPI_Type_create_hindexed(2, lens, displs, MPI_BYTE, &dt) != MPI_SUCCESS)
        return MPI_DATATYPE_NULL;
    if (MPI_Type_commit(&dt) != MPI_SUCCESS) {
        MPI_Type_free(&dt);
        return MPI_DATATYPE_NULL;
    }
    if (split_types[h].dt != MPI_DATATYPE_NULL) MPI_Type_free(&split_types[h].dt);
    split_types[h].stage = stage;
    split_types[h].tail = tail;
    split_types[h].tail_len = tail_len;
    split_types[h].dt = dt;
    return dt;
}

/* The communicator of a call's arguments (comm, spec, peer, tag, engine, ...: at
   least *least*, at most *most* of them), its peer and tag; NULL with an error set
   (wrong arguments) or without (not a call this path takes: not configured, or
   *peer* or *tag* not ones it takes). */
static MPI_Comm *call_args(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t least,
                           Py_ssize_t most, const char *usage, int any, int *peer, int *tag) {
    if (nargs < least || nargs > most) {
        PyErr_SetString(PyExc_TypeError, usage);
        return NULL;
    }
    if (request_type == NULL) return NULL;
    return comm_for(args[0], args[2], args[3], any, peer, tag);
}

/* The op of a receive into *spec* (of fewer than *below* bytes), not posted yet:
   a new reference, or NULL with an error set or without (not one this path takes). */
static Staged *recv_op(PyObject *spec, PyObject *engine, Py_ssize_t below) {
    Staged *s = new_staged(cfg_band + (gap_type != MPI_DATATYPE_NULL), engine, spec, 1);
    if (s == NULL) return NULL;
    if (!take_view(s, spec, 1) || s->nbytes == cfg_band || s->nbytes >= below) {
        Py_DECREF(s);
        return NULL;
    }
    return s;
}

/* Post receive *s* from *source* with *tag*: into its stage if smaller than one,
   else split. 0 once posted (the live list holds a reference); else MPI refused
   it (the Python path posts it, and raises what MPI raises). */
static int start_recv(Staged *s, MPI_Comm *comm, int source, int tag) {
    int rc;
    if (s->nbytes < cfg_band) {
        rc = gap_type != MPI_DATATYPE_NULL
                 ? MPI_Irecv(s->stage, 1, gap_type, source, tag, *comm, &s->req)
                 : MPI_Irecv(s->stage, (int)cfg_band, MPI_BYTE, source, tag, *comm, &s->req);
    } else {
        /* Larger: the message lands in the buffer but for its first band bytes, which
           take the stage (a control message is read from there, never overwritten by
           another receive into the same buffer): p2p.Engine._irecv_split. */
        MPI_Datatype dt = split_type(s->stage, (char *)s->view.buf + cfg_band,
                                     s->nbytes - cfg_band);
        if (dt == MPI_DATATYPE_NULL) return -1;
        s->split = 1;
        s->stage_len = cfg_band;
        rc = MPI_Irecv(MPI_BOTTOM, 1, dt, source, tag, *comm, &s->req);
    }
    if (rc != MPI_SUCCESS) return -1;
    link_live(s);
    return 0;
}

/* `recv_op`, posted (`start_recv`); NULL as `recv_op` returns it, or when MPI refused it. */
static Staged *post_recv(MPI_Comm *comm, PyObject *spec, int source, int tag, PyObject *engine,
                         Py_ssize_t below) {
    Staged *s = recv_op(spec, engine, below);
    if (s != NULL && start_recv(s, comm, source, tag) < 0) Py_CLEAR(s);
    return s;
}

/* The op of a standard-mode send of *spec* that travels as itself, from the
   user's buffer, not posted yet: what the engine sends so (p2p.Engine.raw): up to
   the eager limit, and past the control band up to the pull threshold, the higher
   one while this rank has receives pending (*receiving*: of this path; the
   engine's decline it). A new reference, or NULL as `recv_op` returns it. */
static Staged *send_op(PyObject *spec, PyObject *engine, int receiving) {
    Staged *s = new_staged(0, engine, spec, 0);
    if (s == NULL) return NULL;
    Py_ssize_t raw_max = receiving ? cfg_cma_min_busy : cfg_cma_min;
    if (!take_view(s, spec, 0) ||
            (s->nbytes > cfg_limit && (s->nbytes <= cfg_band || s->nbytes >= raw_max))) {
        Py_DECREF(s);
        return NULL;
    }
    return s;
}

/* Post send *s*; 0 or -1 as `start_recv`. */
static int start_send(Staged *s, MPI_Comm *comm, int dest, int tag) {
    if (MPI_Isend(s->view.buf, (int)s->nbytes, MPI_BYTE, dest, tag, *comm, &s->req) !=
            MPI_SUCCESS)
        return -1;
    link_live(s);
    return 0;
}

/* The request of a posted op *s*, whose reference it steals. */
static PyObject *request_stealing(Staged *s) {
    PyObject *req = request_of(s);
    Py_DECREF(s);
    return req;    /* an error here leaves s live: the engine takes it over (settle) */
}

/* irecv(comm, spec, source, tag, engine[, below]) -> request | None: `post_recv`. */
static PyObject *fp_irecv(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    int source, tag;
    MPI_Comm *comm = call_args(args, nargs, 5, 6,
                               "irecv(comm, spec, source, tag, engine[, below])", 1, &source,
                               &tag);
    if (comm == NULL) return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    Py_ssize_t below = nargs == 6 ? PyLong_AsSsize_t(args[5]) : PY_SSIZE_T_MAX;
    if (below == -1 && PyErr_Occurred()) return NULL;
    Staged *s = post_recv(comm, args[1], source, tag, args[4], below);
    if (s == NULL) return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    return request_stealing(s);
}

/* irecv_object(comm, nbytes, source, tag, engine) -> request | None: the receive
   of an object's message, whole, into a buffer of *nbytes* of its own (as large
   as the longest message the source sends as itself, and on a guarded channel
   one byte more: `guard_type`), as the engine posts one into a stage
   (`p2p.Engine._irecv_staged`); its request is of the class `objects()` names,
   and `object_in` unpickles it. None: not one this path takes (not configured
   for objects, MPI refused it: the Python path posts it). */
static PyObject *fp_irecv_object(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    int source, tag;
    MPI_Comm *comm = call_args(args, nargs, 5, 5,
                               "irecv_object(comm, nbytes, source, tag, engine)", 1, &source,
                               &tag);
    if (comm == NULL) return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    Py_ssize_t nbytes = PyLong_AsSsize_t(args[1]);
    if (nbytes == -1 && PyErr_Occurred()) return NULL;
    if (object_request_type == NULL || nbytes < 2 || nbytes > INT_MAX) Py_RETURN_NONE;
    Staged *s = new_staged(0, args[4], Py_None, 1);
    if (s == NULL) return NULL;
    s->whole = 1;
    s->own = take_block(nbytes);
    if (s->own == NULL) {
        Py_DECREF(s);
        return PyErr_NoMemory();
    }
    s->own_len = s->nbytes = nbytes;
    s->view.buf = s->own;   /* not a view of anyone's (has_view stays 0) */
    int rc = MPI_ERR_OTHER;
    if (gap_type == MPI_DATATYPE_NULL) {
        rc = MPI_Irecv(s->own, (int)nbytes, MPI_BYTE, source, tag, *comm, &s->req);
    } else {
        MPI_Datatype dt = guard_type(s->own, nbytes - 1);
        if (dt != MPI_DATATYPE_NULL)
            rc = MPI_Irecv(MPI_BOTTOM, 1, dt, source, tag, *comm, &s->req);
    }
    if (rc != MPI_SUCCESS) {
        Py_DECREF(s);
        return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    }
    link_live(s);
    return request_stealing(s);
}

/* The request of `send_op` of *spec*, posted; None if this path does not take
   it or MPI refused it (the Python path sends it, and raises what MPI raises);
   NULL with an error set. */
static PyObject *post_send(MPI_Comm *comm, PyObject *spec, int dest, int tag,
                           PyObject *engine) {
    Staged *s = send_op(spec, engine, live_recvs > 0);
    if (s == NULL) return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    if (start_send(s, comm, dest, tag) < 0) {
        Py_DECREF(s);
        Py_RETURN_NONE;
    }
    return request_stealing(s);
}

/* isend(comm, spec, dest, tag, engine) -> request | None: `send_op`, posted. */
static PyObject *fp_isend(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    int dest, tag;
    MPI_Comm *comm = call_args(args, nargs, 5, 5, "isend(comm, spec, dest, tag, engine)", 0,
                               &dest, &tag);
    if (comm == NULL) return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    return post_send(comm, args[1], dest, tag, args[4]);
}

static PyObject *fp_pickled(PyObject *mod, PyObject *const *args, Py_ssize_t nargs);

/* isend_object(comm, obj, dest, tag, engine, oob) -> request | (stream,) | None:
   a lowercase isend in one call: *obj* pickled as `pickled` pickles it (*oob*:
   the engine's list of the peers that may pull), and a pickle of up to the eager
   limit sent as itself (`isend`). A tuple: pickled, not sent here (the pickle,
   or None for an object with a buffer to leave out of band), for the Python
   path to send; None: *dest* or *tag* is not one this path takes. */
static PyObject *fp_isend_object(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    int dest, tag;
    MPI_Comm *comm = call_args(args, nargs, 6, 6,
                               "isend_object(comm, obj, dest, tag, engine, oob)", 0, &dest,
                               &tag);
    if (comm == NULL) return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    if (!PyList_CheckExact(args[5]) || dest >= PyList_GET_SIZE(args[5])) Py_RETURN_NONE;
    PyObject *pickle_args[2] = {args[1], PyList_GET_ITEM(args[5], dest)};
    PyObject *stream = fp_pickled(mod, pickle_args, 2);
    if (stream == NULL) return NULL;    /* the object's own pickling error */
    if (PyBytes_CheckExact(stream) && PyBytes_GET_SIZE(stream) <= cfg_limit) {
        PyObject *req = post_send(comm, stream, dest, tag, args[4]);
        if (req != Py_None) {   /* posted, or an error */
            Py_DECREF(stream);
            return req;
        }
        Py_DECREF(req);
    }
    PyObject *out = PyTuple_Pack(1, stream);
    Py_DECREF(stream);
    return out;
}

/* send(comm, spec, dest, tag) -> bool: a blocking standard-mode send of a
   message that travels as itself, where `p2p.Engine.send` sends it inside the
   channel: up to the eager limit; past the control band below the pull
   threshold too while `nothing_else_waits`. False: the Python path sends it (a
   buffer or size this path does not take, or MPI refused it: that path raises
   what MPI raises). */
static PyObject *fp_send(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    int dest, tag, rc;
    MPI_Comm *comm = call_args(args, nargs, 4, 4, "send(comm, spec, dest, tag)", 0, &dest,
                               &tag);
    if (comm == NULL) return PyErr_Occurred() ? NULL : Py_NewRef(Py_False);
    Py_buffer view;
    Py_ssize_t nbytes;
    if (!take_buffer(args[1], 0, &view, &nbytes)) Py_RETURN_FALSE;
    if (nbytes > cfg_limit &&
            (nbytes <= cfg_band || nbytes >= cfg_cma_min || !nothing_else_waits(0))) {
        PyBuffer_Release(&view);
        Py_RETURN_FALSE;
    }
    Py_BEGIN_ALLOW_THREADS
    rc = MPI_Send(view.buf, (int)nbytes, MPI_BYTE, dest, tag, *comm);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return Py_NewRef(rc == MPI_SUCCESS ? Py_True : Py_False);
}

/* -- small collectives, as mpi4py runs them ---------------------------------------- */

static void raise_mpi(int code);

/* The collectives `coll` runs (`_fastpath.py` names them for Python). */
enum { BCAST = 0, GATHER, SCATTER, ALLGATHER, ALLTOALL, REDUCE, ALLREDUCE };

/* The MPI datatype of plain numbers of buffer format *format* (as mpi4py maps
   it), or MPI_DATATYPE_NULL. */
static MPI_Datatype number_type(const char *format) {
    if (format == NULL) return MPI_UNSIGNED_CHAR;
    if (*format == '@' || *format == '=' || *format == '<') format++;
    if (format[0] == 'Z' && format[1] && !format[2]) {
        switch (format[1]) {
            case 'f': return MPI_C_FLOAT_COMPLEX;
            case 'd': return MPI_C_DOUBLE_COMPLEX;
            case 'g': return MPI_C_LONG_DOUBLE_COMPLEX;
        }
        return MPI_DATATYPE_NULL;
    }
    if (!format[0] || format[1]) return MPI_DATATYPE_NULL;
    switch (format[0]) {
        case 'b': return MPI_SIGNED_CHAR;
        case 'B': return MPI_UNSIGNED_CHAR;
        case '?': return MPI_C_BOOL;
        case 'h': return MPI_SHORT;
        case 'H': return MPI_UNSIGNED_SHORT;
        case 'i': return MPI_INT;
        case 'I': return MPI_UNSIGNED;
        case 'l': return MPI_LONG;
        case 'L': return MPI_UNSIGNED_LONG;
        case 'q': return MPI_LONG_LONG;
        case 'Q': return MPI_UNSIGNED_LONG_LONG;
        case 'f': return MPI_FLOAT;
        case 'd': return MPI_DOUBLE;
        case 'g': return MPI_LONG_DOUBLE;
    }
    return MPI_DATATYPE_NULL;
}

/* Whether *op* is one of MPI's predefined reductions of numbers. */
static int number_op(MPI_Op op) {
    return op == MPI_SUM || op == MPI_PROD || op == MPI_MAX || op == MPI_MIN ||
           op == MPI_LAND || op == MPI_LOR || op == MPI_LXOR || op == MPI_BAND ||
           op == MPI_BOR || op == MPI_BXOR;
}

/* A whole numpy array of plain numbers, as `take_buffer` takes it, into *view*. */
static int take_array(PyObject *obj, int writable, Py_buffer *view) {
    Py_ssize_t n;
    if ((PyObject *)Py_TYPE(obj) != ndarray_type) return 0;
    return take_buffer(obj, writable, view, &n);
}

/* coll(comm, kind, send, recv, root, op, limit) -> bool: collective *kind* run by
   the MPI library as mpi4py runs it, for whole numpy arrays of plain numbers of
   at most *limit* bytes (this rank's part: *recv*'s for SCATTER, *send*'s
   else), each the size the call expects (what moves is bytes; reductions keep
   the numbers' type and take MPI's predefined operations). False, with nothing
   done: the caller's path runs it (and raises what mpi4py raises). An error of
   the MPI library is raised as mpi4py raises it. */
static PyObject *fp_coll(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "coll(comm, kind, send, recv, root, op, limit)");
        return NULL;
    }
    PyObject *send = args[2], *recv = args[3];
    int kind, root = 0, size, rank, rc, ok = 0;
    Py_ssize_t limit = PyLong_AsSsize_t(args[6]);
    if (limit == -1 && PyErr_Occurred()) return NULL;
    if (request_type == NULL || !PyObject_TypeCheck(args[0], &PyMPIComm_Type) ||
            !as_int(args[1], &kind) || kind > ALLREDUCE)
        Py_RETURN_FALSE;
    MPI_Comm comm = *PyMPIComm_Get(args[0]);
    if (MPI_Comm_size(comm, &size) != MPI_SUCCESS || MPI_Comm_rank(comm, &rank) != MPI_SUCCESS)
        Py_RETURN_FALSE;
    int rooted = kind == BCAST || kind == GATHER || kind == SCATTER || kind == REDUCE;
    if (rooted && (!as_int(args[4], &root) || root < 0 || root >= size)) Py_RETURN_FALSE;
    int at_root = rooted && rank == root;
    /* which buffers this rank passes (others are ignored, as MPI ignores them) */
    int uses_send = !(kind == SCATTER && !at_root);
    int uses_recv = kind != BCAST && (!rooted || at_root || kind == SCATTER);
    MPI_Op op = MPI_OP_NULL;
    if (kind == REDUCE || kind == ALLREDUCE) {
        if (!PyObject_TypeCheck(args[5], &PyMPIOp_Type)) Py_RETURN_FALSE;
        op = *PyMPIOp_Get(args[5]);
        if (!number_op(op)) Py_RETURN_FALSE;
    }
    Py_buffer sv, rv;
    int has_s = 0, has_r = 0;
    if (uses_send) {
        if (!take_array(send, kind == BCAST && !at_root, &sv)) goto out;
        has_s = 1;
    }
    if (uses_recv) {
        if (!take_array(recv, 1, &rv)) goto out;
        has_r = 1;
    }
    Py_ssize_t part = kind == SCATTER ? rv.len : sv.len;
    if (part > limit || part > INT_MAX / size) goto out;
    int n = (int)part;
    MPI_Datatype dt = MPI_BYTE;
    switch (kind) {
        case GATHER: case ALLGATHER:
            if (has_r && rv.len != part * size) goto out;
            break;
        case SCATTER:
            if (has_s && sv.len != part * size) goto out;
            break;
        case ALLTOALL:
            if (rv.len != sv.len || sv.len % size) goto out;
            break;
        case REDUCE: case ALLREDUCE:
            dt = number_type(sv.format);
            if (dt == MPI_DATATYPE_NULL || sv.itemsize <= 0 || sv.len % sv.itemsize) goto out;
            if (has_r && (rv.len != sv.len || rv.itemsize != sv.itemsize ||
                          number_type(rv.format) != dt))
                goto out;
            n = (int)(sv.len / sv.itemsize);
            break;
    }
    void *sb = has_s ? sv.buf : NULL, *rb = has_r ? rv.buf : NULL;
    Py_BEGIN_ALLOW_THREADS
    switch (kind) {
        case BCAST: rc = MPI_Bcast(sb, n, MPI_BYTE, root, comm); break;
        case GATHER: rc = MPI_Gather(sb, n, MPI_BYTE, rb, n, MPI_BYTE, root, comm); break;
        case SCATTER: rc = MPI_Scatter(sb, n, MPI_BYTE, rb, n, MPI_BYTE, root, comm); break;
        case ALLGATHER: rc = MPI_Allgather(sb, n, MPI_BYTE, rb, n, MPI_BYTE, comm); break;
        case ALLTOALL:
            rc = MPI_Alltoall(sb, n / size, MPI_BYTE, rb, n / size, MPI_BYTE, comm);
            break;
        case REDUCE: rc = MPI_Reduce(sb, rb, n, dt, op, root, comm); break;
        default: rc = MPI_Allreduce(sb, rb, n, dt, op, comm); break;
    }
    Py_END_ALLOW_THREADS
    if (rc != MPI_SUCCESS) {
        raise_mpi(rc);
        ok = -1;
    } else {
        ok = 1;
    }
out:
    if (has_s) PyBuffer_Release(&sv);
    if (has_r) PyBuffer_Release(&rv);
    if (ok < 0) return NULL;
    return Py_NewRef(ok ? Py_True : Py_False);
}

/* -- short lowercase collectives in slots (objcoll.py) ------------------------------- */

/* What `slot_config` names: how a slot's pickle is made (dumps(obj, 5, **kwargs),
   kwargs naming the buffer callback that stops a long one) and read, the slot's
   bytes, and what `slots` returns for the full path. */
static PyObject *slot_dumps = NULL, *slot_loads = NULL, *slot_kwargs = NULL;
static PyObject *slot_declined = NULL, *slot_protocol = NULL;
static Py_ssize_t slot_size = 0;
/* Longest pickle a slot announces (flag MEDIUM, its length after it) for a second
   collective to move, where every rank learns of it from the first (bcast, and
   the collectives that gather every slot everywhere); 0: none. */
static Py_ssize_t slot_medium = 0;
enum { SCAN = ALLREDUCE + 1, EXSCAN };
/* A slot's flag: empty (the full path), a short pickle, a medium one's length,
   or a short pickle in a row (scatter, alltoall) that has medium ones too. */
enum { EMPTY = 0, HELD = 1, MEDIUM = 2, HELD_MORE = 3 };

/* Put *obj*'s pickle in the slot at *at* (a flag, then the pickle): HELD if
   short; with *medium* given, MEDIUM if up to `slot_medium` bytes long (its
   length, an int64, follows the flag; *medium* takes the pickle); else EMPTY, as
   when it does not pickle (an Exception, cleared: the full path raises it on
   every rank); -1 with any other exception set. A pickle too long is appended to
   the list *longer*, if one is given: it holds every buffer in band, as the full
   path pickles it, which takes it. */
static int fill_slot(char *at, PyObject *obj, PyObject *longer, PyObject **medium) {
    at[0] = EMPTY;
    PyObject *args = PyTuple_Pack(2, obj, slot_protocol);
    if (args == NULL) return -1;
    PyObject *stream = PyObject_Call(slot_dumps, args, slot_kwargs);
    Py_DECREF(args);
    if (stream == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) return -1;
        PyErr_Clear();
        return 0;
    }
    int ok = PyBytes_Check(stream) && PyBytes_GET_SIZE(stream) < slot_size;
    if (ok) {
        memcpy(at + 1, PyBytes_AS_STRING(stream), (size_t)PyBytes_GET_SIZE(stream));
        at[0] = HELD;
    } else if (medium != NULL && PyBytes_CheckExact(stream) &&
               PyBytes_GET_SIZE(stream) <= slot_medium) {
        int64_t len = PyBytes_GET_SIZE(stream);
        memcpy(at + 1, &len, sizeof len);
        at[0] = MEDIUM;
        *medium = stream;
        return MEDIUM;
    } else if (longer != NULL && PyBytes_CheckExact(stream) &&
               PyList_Append(longer, stream) < 0) {
        Py_DECREF(stream);
        return -1;
    }
    Py_DECREF(stream);
    return ok;
}

/* The slots of *obj*'s items, one per rank, at *row* (scatter, alltoall): 1 if
   every item is short and there are *size* of them (None: None to each, as
   mpi4py); MEDIUM if every item is short or medium and some are (*streams*, an
   array of *size*, takes their pickles; the short ones are flagged HELD_MORE);
   else 0, every flag cleared (the full path takes it: any other sequence too,
   which only it reads); -1 with an error set. */
static int fill_row(char *row, PyObject *obj, int size, PyObject **streams) {
    int all = 1, medium = 0;
    PyObject *items = NULL;     /* a tuple of our own: pickling may change a list */
    if (obj != Py_None) {
        if ((PyList_CheckExact(obj) || PyTuple_CheckExact(obj)) &&
                PySequence_Fast_GET_SIZE(obj) == size)
            items = PySequence_Tuple(obj);
        if (items == NULL) {
            if (PyErr_Occurred()) return -1;
            all = 0;
        }
    }
    for (int r = 0; r < size && all; r++) {
        int rc = fill_slot(row + (Py_ssize_t)r * slot_size,
                           items == NULL ? Py_None : PyTuple_GET_ITEM(items, r), NULL,
                           streams == NULL ? NULL : &streams[r]);
        if (rc < 0) {
            Py_XDECREF(items);
            return -1;
        }
        medium |= rc == MEDIUM;
        all = rc != EMPTY;
    }
    Py_XDECREF(items);
    if (!all)
        for (int r = 0; r < size; r++) row[(Py_ssize_t)r * slot_size] = EMPTY;
    else if (medium)
        for (int r = 0; r < size; r++)
            if (row[(Py_ssize_t)r * slot_size] == HELD) row[(Py_ssize_t)r * slot_size] = HELD_MORE;
    return !all ? 0 : medium ? MEDIUM : 1;
}

/* The pickles of *streams* (NULL: none; else *size* of them, NULL where none) in
   one new buffer, their lengths and places in *counts* and *displs*; NULL with
   an error. Medium pickles are taken only where *size* of them fit MPI's counts. */
static char *packed_streams(PyObject **streams, int size, int *counts, int *displs) {
    int64_t total = 0;
    for (int r = 0; r < size; r++) {
        Py_ssize_t len = streams != NULL && streams[r] != NULL ? PyBytes_GET_SIZE(streams[r]) : 0;
        counts[r] = (int)len;
        displs[r] = (int)total;
        total += len;
    }
    char *out = malloc((size_t)total + 1);
    if (out == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (int r = 0; r < size; r++)
        if (counts[r]) memcpy(out + displs[r], PyBytes_AS_STRING(streams[r]), (size_t)counts[r]);
    return out;
}

/* The object in the slot at *at* (a new reference), or NULL with an error. */
static PyObject *unslot(char *at) {
    PyObject *view = PyMemoryView_FromMemory(at + 1, slot_size - 1, PyBUF_READ);
    if (view == NULL) return NULL;
    PyObject *obj = PyObject_CallOneArg(slot_loads, view);
    Py_DECREF(view);
    return obj;
}

/* The objects of the first *count* slots at *slots*, in a new list, those of
   MEDIUM slots unpickled from *data* (at *displs*, as long as their slots say);
   NULL on error. */
static PyObject *unslot_mixed(char *slots, int count, char *data, const int *displs) {
    PyObject *out = PyList_New(count);
    if (out == NULL) return NULL;
    for (int r = 0; r < count; r++) {
        char *at = slots + (Py_ssize_t)r * slot_size;
        PyObject *obj;
        if (at[0] == MEDIUM) {
            int64_t len;
            memcpy(&len, at + 1, sizeof len);
            PyObject *view = PyMemoryView_FromMemory(data + displs[r], (Py_ssize_t)len,
                                                     PyBUF_READ);
            obj = view == NULL ? NULL : PyObject_CallOneArg(slot_loads, view);
            Py_XDECREF(view);
        } else {
            obj = unslot(at);
        }
        if (obj == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, r, obj);
    }
    return out;
}

/* items[0] op items[1] op ... in rank order (objcoll._fold); steals *items*. */
static PyObject *fold(PyObject *op, PyObject *items) {
    if (items == NULL) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(items);
    PyObject *acc = n ? Py_NewRef(PyList_GET_ITEM(items, 0)) : Py_NewRef(Py_None);
    for (Py_ssize_t k = 1; k < n && acc != NULL; k++) {
        PyObject *next = PyObject_CallFunctionObjArgs(op, acc, PyList_GET_ITEM(items, k), NULL);
        Py_SETREF(acc, next);
    }
    Py_DECREF(items);
    return acc;
}

/* GATHER and REDUCE at the root, every rank's slot in *slots*: the ranks whose
   slots announce MEDIUM pickles send them next, point to point on *side* with
   *tag* (the root's own is *mine*). The objects (a list), or their REDUCE with
   *op*; or, where some slot is EMPTY, *declined*, the list *partial* then holding
   each rank's object or *declined* (the full path brings those). */
static PyObject *at_root(MPI_Comm side, int tag, int kind, char *slots, PyObject *mine,
                         int root, int size, PyObject *op, PyObject *partial) {
    Py_ssize_t n = slot_size;
    PyObject *data = PyList_New(size), *items = NULL;    /* MEDIUM pickles, then objects */
    if (data == NULL) return NULL;
    int rc = MPI_SUCCESS, empty = 0;
    for (int q = 0; q < size; q++) {    /* every pickle sent is taken, come what may */
        char *at = slots + (Py_ssize_t)q * n;
        PyObject *got = Py_NewRef(Py_None);
        empty |= at[0] == EMPTY;
        if (at[0] == MEDIUM && q == root) {
            Py_SETREF(got, Py_NewRef(mine));
        } else if (at[0] == MEDIUM) {
            int64_t len;
            memcpy(&len, at + 1, sizeof len);
            Py_SETREF(got, PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len));
            if (got == NULL) goto fail;
            char *into = PyBytes_AS_STRING(got);
            if (rc == MPI_SUCCESS) {
                Py_BEGIN_ALLOW_THREADS
                rc = MPI_Recv(into, (int)len, MPI_BYTE, q, tag, side, MPI_STATUS_IGNORE);
                Py_END_ALLOW_THREADS
            }
        }
        PyList_SET_ITEM(data, q, got);
    }
    if (rc != MPI_SUCCESS) {
        raise_mpi(rc);
        goto fail;
    }
    if ((items = PyList_New(size)) == NULL) goto fail;
    for (int q = 0; q < size; q++) {
        char *at = slots + (Py_ssize_t)q * n;
        PyObject *obj = at[0] == HELD ? unslot(at)
                        : at[0] == MEDIUM ? PyObject_CallOneArg(slot_loads, PyList_GET_ITEM(data, q))
                        : Py_NewRef(slot_declined);
        if (obj == NULL) goto fail;
        PyList_SET_ITEM(items, q, obj);
    }
    Py_DECREF(data);
    if (empty) {
        int bad = PyList_SetSlice(partial, 0, PyList_GET_SIZE(partial), items);
        Py_DECREF(items);
        return bad < 0 ? NULL : Py_NewRef(slot_declined);
    }
    return kind == REDUCE ? fold(op, items) : items;
fail:
    Py_DECREF(data);
    Py_XDECREF(items);
    return NULL;
}

/* The objects of the MEDIUM pickles in *data* (at *displs*, as long as *slots*
   say; none: NULL) and the short ones in *slots*: the result `slots` makes of
   them (but for BCAST; for GATHER and REDUCE, the root's). */
static PyObject *medium_result(int kind, char *slots, char *data, const int *displs, int rank,
                               int size, PyObject *op) {
    if (kind == SCATTER) {
        if (slots[0] != MEDIUM) return unslot(slots);
        int64_t len;
        memcpy(&len, slots + 1, sizeof len);
        PyObject *view = PyMemoryView_FromMemory(data, (Py_ssize_t)len, PyBUF_READ);
        PyObject *obj = view == NULL ? NULL : PyObject_CallOneArg(slot_loads, view);
        Py_XDECREF(view);
        return obj;
    }
    int count = kind == SCAN ? rank + 1 : kind == EXSCAN ? rank : size;
    PyObject *items = unslot_mixed(slots, count, data, displs);
    if (items == NULL) return NULL;
    switch (kind) {
        case ALLGATHER: case ALLTOALL: case GATHER: return items;
        case ALLREDUCE: case SCAN: case REDUCE: return fold(op, items);
        case EXSCAN:
            if (rank) return fold(op, items);
            Py_DECREF(items);
            return Py_NewRef(Py_None);
    }
    Py_DECREF(items);
    PyErr_SetString(PyExc_ValueError, "slots: unknown kind");
    return NULL;
}

/* The rest of `slots` where the slots *recv* (the root's for BCAST, this rank's
   for SCATTER, every rank's else) announce MEDIUM pickles and none is EMPTY: a
   second collective moves them, and the result is made as `slots` makes it.
   This rank's own pickle is *mine* (BCAST at the root, GATHER, REDUCE and the
   collectives that gather every slot), or its row's *streams* (SCATTER at the
   root, ALLTOALL). */
static PyObject *medium_stage(MPI_Comm comm, int kind, char *recv, PyObject *mine,
                              PyObject **streams, int root, int rank, int size, PyObject *op) {
    Py_ssize_t n = slot_size;
    int rc = MPI_SUCCESS;
    if (kind == BCAST) {
        int64_t len;
        memcpy(&len, recv + 1, sizeof len);
        PyObject *data = rank == root ? Py_NewRef(mine)
                                      : PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len);
        if (data == NULL) return NULL;
        char *at = PyBytes_AS_STRING(data);
        Py_BEGIN_ALLOW_THREADS
        rc = MPI_Bcast(at, (int)len, MPI_BYTE, root, comm);
        Py_END_ALLOW_THREADS
        PyObject *obj = rc == MPI_SUCCESS ? PyObject_CallOneArg(slot_loads, data) : NULL;
        if (rc != MPI_SUCCESS) raise_mpi(rc);
        Py_DECREF(data);
        return obj;
    }
    /* counts and places: what this rank sends (s*) and receives (r*) */
    int *sc = malloc(sizeof(int) * (size_t)size), *sd = malloc(sizeof(int) * (size_t)size);
    int *rcn = malloc(sizeof(int) * (size_t)size), *rd = malloc(sizeof(int) * (size_t)size);
    char *out = NULL, *in = NULL;
    PyObject *result = NULL;
    if (sc == NULL || sd == NULL || rcn == NULL || rd == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int slots_in = kind == SCATTER ? 1 : size;      /* the slots at recv */
    int64_t total = 0;
    for (int r = 0; r < slots_in; r++) {
        char *at = recv + (Py_ssize_t)r * n;
        int64_t len = 0;
        if (at[0] == MEDIUM) memcpy(&len, at + 1, sizeof len);
        rcn[r] = (int)len;
        rd[r] = (int)total;
        total += len;
    }
    if ((in = malloc((size_t)total + 1)) == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int own = mine != NULL ? (int)PyBytes_GET_SIZE(mine) : 0;
    char *own_at = mine != NULL ? PyBytes_AS_STRING(mine) : in;
    if (kind == SCATTER || kind == ALLTOALL) {
        if ((kind == ALLTOALL || rank == root) &&
                (out = packed_streams(streams, size, sc, sd)) == NULL)
            goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    switch (kind) {
        case SCATTER:
            rc = MPI_Scatterv(out, sc, sd, MPI_BYTE, in, rcn[0], MPI_BYTE, root, comm);
            break;
        case ALLTOALL:
            rc = MPI_Alltoallv(out, sc, sd, MPI_BYTE, in, rcn, rd, MPI_BYTE, comm);
            break;
        case GATHER: case REDUCE:
            rc = MPI_Gatherv(own_at, own, MPI_BYTE, in, rcn, rd, MPI_BYTE, root, comm);
            break;
        default:
            rc = MPI_Allgatherv(own_at, own, MPI_BYTE, in, rcn, rd, MPI_BYTE, comm);
    }
    Py_END_ALLOW_THREADS
    if (rc != MPI_SUCCESS) {
        raise_mpi(rc);
        goto done;
    }
    if ((kind == GATHER || kind == REDUCE) && rank != root)
        result = Py_NewRef(Py_None);
    else
        result = medium_result(kind, recv, in, rd, rank, size, op);
done:
    free(sc);
    free(sd);
    free(rcn);
    free(rd);
    free(out);
    free(in);
    return result;
}

/* slots(comm, kind, obj, root, op, partial, pickled) -> result | declined

   Lowercase collective *kind* (BCAST .. ALLREDUCE, SCAN, EXSCAN) of *obj* as
   `objcoll.slotted` runs it, in one MPI collective of fixed-size slots on
   *comm*: the result, or `slot_config`'s *declined* where some object it moves
   pickles long, which every rank learns from that same collective (then the
   caller's full path runs it). GATHER and REDUCE gather the slots at the root
   alone: *declined* there on a rank whose own object is long, and at the root
   if any is, the root's list *partial* then holding each rank's object or
   *declined* (the full path brings the long ones). *root* must be a rank of
   *comm*. BCAST and the collectives that gather every slot everywhere
   (ALLGATHER, ALLREDUCE, SCAN, EXSCAN) take pickles of up to `slot_medium` bytes
   too: a slot announces its length, and a second collective moves it
   (`medium_stage`). This rank's own *obj* (not a scatter's or alltoall's items),
   if it pickles too long for that, leaves its pickle in the list *pickled* for
   the full path. An error of the MPI library is raised as mpi4py raises it; one of
   *op* or of unpickling, as they raise it. */
static PyObject *fp_slots(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 9 || !PyList_CheckExact(args[5]) || !PyList_CheckExact(args[6])) {
        PyErr_SetString(PyExc_TypeError,
                        "slots(comm, kind, obj, root, op, partial, pickled, side, tag)");
        return NULL;
    }
    int kind, root, size, rank, rc, ok = 0, tag;
    if (slot_dumps == NULL || !PyObject_TypeCheck(args[0], &PyMPIComm_Type) ||
            !PyObject_TypeCheck(args[7], &PyMPIComm_Type) || !as_int(args[1], &kind) ||
            !as_int(args[3], &root) || !as_int(args[8], &tag)) {
        PyErr_SetString(PyExc_TypeError, "slots: not configured, or bad arguments");
        return NULL;
    }
    MPI_Comm comm = *PyMPIComm_Get(args[0]), side = *PyMPIComm_Get(args[7]);
    if (MPI_Comm_size(comm, &size) != MPI_SUCCESS || MPI_Comm_rank(comm, &rank) != MPI_SUCCESS ||
            root < 0 || root >= size) {
        PyErr_SetString(PyExc_ValueError, "slots: not a rank of the communicator");
        return NULL;
    }
    PyObject *obj = args[2], *op = args[4], *pickled = args[6], *result = NULL;
    PyObject *mine = NULL;          /* this rank's MEDIUM pickle */
    PyObject **streams = NULL;      /* a row's MEDIUM pickles (SCATTER at the root, ALLTOALL) */
    Py_ssize_t n = slot_size, all = n * size;
    /* medium pickles only where a second collective's counts take *size* of them */
    int takes_medium = (int64_t)size * slot_medium <= INT_MAX;
    PyObject **medium_of = takes_medium ? &mine : NULL;
    int row = kind == SCATTER || kind == ALLTOALL;
    /* one slot, or a row, to send; the slots received */
    char *send = malloc((size_t)(row ? all : n));
    char *recv = malloc((size_t)(kind == BCAST || kind == SCATTER ? n : all));
    if (row && takes_medium && (streams = calloc((size_t)size, sizeof(PyObject *))) == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    if (send == NULL || recv == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    if (kind == BCAST) {
        ok = rank == root ? fill_slot(recv, obj, pickled, medium_of) : 0;
        if (ok < 0) goto out;
        Py_BEGIN_ALLOW_THREADS
        rc = MPI_Bcast(recv, (int)n, MPI_BYTE, root, comm);
        Py_END_ALLOW_THREADS
    } else if (kind == SCATTER) {
        if (rank == root && fill_row(send, obj, size, streams) < 0) goto out;
        Py_BEGIN_ALLOW_THREADS
        rc = MPI_Scatter(send, (int)n, MPI_BYTE, recv, (int)n, MPI_BYTE, root, comm);
        Py_END_ALLOW_THREADS
    } else if (kind == ALLTOALL) {
        if (fill_row(send, obj, size, streams) < 0) goto out;
        Py_BEGIN_ALLOW_THREADS
        rc = MPI_Alltoall(send, (int)n, MPI_BYTE, recv, (int)n, MPI_BYTE, comm);
        Py_END_ALLOW_THREADS
    } else if (kind == GATHER || kind == REDUCE) {
        if ((ok = fill_slot(send, obj, pickled, medium_of)) < 0) goto out;
        Py_BEGIN_ALLOW_THREADS
        rc = MPI_Gather(send, (int)n, MPI_BYTE, recv, (int)n, MPI_BYTE, root, comm);
        if (rc == MPI_SUCCESS && rank != root && ok == MEDIUM)   /* the root takes it next */
            rc = MPI_Send(PyBytes_AS_STRING(mine), (int)PyBytes_GET_SIZE(mine), MPI_BYTE, root,
                          tag, side);
        Py_END_ALLOW_THREADS
        if (rc == MPI_SUCCESS) {
            result = rank != root ? Py_NewRef(ok == EMPTY ? slot_declined : Py_None)
                                  : at_root(side, tag, kind, recv, mine, root, size, op, args[5]);
            goto out;
        }
    } else {
        if ((ok = fill_slot(send, obj, pickled, medium_of)) < 0) goto out;
        Py_BEGIN_ALLOW_THREADS
        rc = MPI_Allgather(send, (int)n, MPI_BYTE, recv, (int)n, MPI_BYTE, comm);
        Py_END_ALLOW_THREADS
    }
    if (rc != MPI_SUCCESS) {
        raise_mpi(rc);
        goto out;
    }
    int got = kind == BCAST || kind == SCATTER ? 1 : size, medium = 0;
    for (int r = 0; r < got; r++) {
        char flag = recv[(Py_ssize_t)r * n];
        medium |= flag == MEDIUM || flag == HELD_MORE;
        if (flag == EMPTY) {
            /* the full path sends a MEDIUM pickle of ours as it is */
            if (mine != NULL && PyList_Append(pickled, mine) < 0) goto out;
            result = Py_NewRef(slot_declined);
            goto out;
        }
    }
    if (medium) {
        result = medium_stage(comm, kind, recv, mine, streams, root, rank, size, op);
        goto out;
    }
    /* every object in its slot */
    result = kind == BCAST ? unslot(recv) : medium_result(kind, recv, NULL, NULL, rank, size, op);
out:
    Py_XDECREF(mine);
    if (streams != NULL)
        for (int r = 0; r < size; r++) Py_XDECREF(streams[r]);
    free(streams);
    free(send);
    free(recv);
    return result;
}

/* slot_config(dumps, loads, kwargs, size, declined, medium): see `slots`. */
static PyObject *fp_slot_config(PyObject *mod, PyObject *args) {
    PyObject *dumps, *loads, *kwargs, *declined;
    Py_ssize_t size, medium;
    if (!PyArg_ParseTuple(args, "OOO!nOn", &dumps, &loads, &PyDict_Type, &kwargs, &size,
                          &declined, &medium))
        return NULL;
    if (size < 1 + (Py_ssize_t)sizeof(int64_t) || size > INT_MAX || medium < 0 ||
            medium > INT_MAX) {
        PyErr_SetString(PyExc_ValueError,
                        "slot_config: a slot of 9 bytes at least, a medium pickle of 0 to "
                        "INT_MAX bytes");
        return NULL;
    }
    if (slot_protocol == NULL && (slot_protocol = PyLong_FromLong(5)) == NULL) return NULL;
    Py_INCREF(dumps);
    Py_XSETREF(slot_dumps, dumps);
    Py_INCREF(loads);
    Py_XSETREF(slot_loads, loads);
    Py_INCREF(kwargs);
    Py_XSETREF(slot_kwargs, kwargs);
    Py_INCREF(declined);
    Py_XSETREF(slot_declined, declined);
    slot_size = size;
    slot_medium = medium;
    Py_RETURN_NONE;
}

/* Record the completion of *s* (no Python call: the GIL may be released): a
   send is done; a receive whose message is itself and fits is copied into the
   buffer and done (an object's is in its buffer already); anything else (a
   control message: an object's record, whose sender waits for the pull, comes
   in one or behind one) arrived, for the engine. */
static void record(Staged *s, MPI_Status *st, int error) {
    s->st = *st;
    s->st.MPI_ERROR = error;    /* MPI sets it only for some calls */
    s->source = st->MPI_SOURCE;
    s->tag = st->MPI_TAG;
    s->error = error;
    s->req = MPI_REQUEST_NULL;
    if (s->is_recv) {
        int count = 0;
        MPI_Get_count(st, MPI_BYTE, &count);
        s->count = count == MPI_UNDEFINED ? 0 : count;
        if (error != MPI_SUCCESS || s->count > s->nbytes ||
                (s->count > cfg_limit && !((s->split || s->whole) && s->count > cfg_band))) {
            s->state = ARRIVED;     /* stays live: the engine takes it over */
            return;
        }
        /* itself: in the stage, or (split) its head there and the rest in place */
        Py_ssize_t head = s->count < s->stage_len ? s->count : s->stage_len;
        if (head) memcpy(s->view.buf, s->stage, (size_t)head);
        if (s->whole && gap_type != MPI_DATATYPE_NULL && s->count == s->nbytes - 1) {
            char *b = s->view.buf;      /* its last byte landed past the gap */
            b[s->count - 1] = b[s->count];
        }
    } else if (error != MPI_SUCCESS) {
        s->state = ARRIVED;
        return;
    }
    s->state = DONE;
}

/* Let a done op go of the user's buffer and the live list (with the GIL). */
static void settled(Staged *s) {
    if (s->state == DONE) {
        drop_view(s);
        unlink_live(s);
    }
}

/* MPI_Testsome over the *count* requests *reqs* of the ops *ops*, recording each
   op done (its index into *idx*, its status into *sts*): 1 if one arrived for the
   engine, 0 if none did, -rc on an MPI error. *mine*, if not NULL, is decreased
   by those done among the first *first* ops. */
static int tested_some(Staged **ops, MPI_Request *reqs, Py_ssize_t count, int *idx,
                       MPI_Status *sts, Py_ssize_t first, Py_ssize_t *mine) {
    int out = 0, arrived = 0;
    int rc = MPI_Testsome((int)count, reqs, &out, idx, sts);
    if (rc != MPI_SUCCESS && rc != MPI_ERR_IN_STATUS) return -rc;
    for (int j = 0; j < out && out != MPI_UNDEFINED; j++) {
        Staged *s = ops[idx[j]];
        record(s, &sts[j], rc == MPI_ERR_IN_STATUS ? sts[j].MPI_ERROR : MPI_SUCCESS);
        arrived |= s->state == ARRIVED;
        if (mine != NULL) *mine -= idx[j] < first;
    }
    return arrived;
}

/* Complete the posted ops among the first *m* of *ops* (their requests in
   *reqs*) until all are done or an op has arrived, without the GIL: 1 if one
   arrived, -rc on an MPI error. The *total* - *m* ops after them are the other
   live ones, waited on by nobody: they are tested too, since the engine must
   act at once on a message in any of them (its sender may wait for us).
   Messages mostly complete in posting order: the first op not done is tested
   alone (a call on the whole list costs per request: 1.3 us for 64 with MPICH),
   and every few polls the whole list. */
static int poll_ops(Staged **ops, MPI_Request *reqs, Py_ssize_t m, Py_ssize_t total,
                    int *idx, MPI_Status *sts, int yielding) {
    Py_ssize_t lo = 0, left = 0;
    unsigned polls = 0;
    for (Py_ssize_t k = 0; k < m; k++) left += ops[k]->state == POSTED;
    while (left > 0) {
        while (ops[lo]->state != POSTED) lo++;
        int flag = 0, rc;
        MPI_Status st;
        rc = MPI_Test(&reqs[lo], &flag, &st);
        if (!flag && rc != MPI_SUCCESS) return -rc;
        if (flag) {
            /* MPI_Test reports the request's error in its return code */
            record(ops[lo], &st, rc);
            left--;
            if (ops[lo]->state == ARRIVED) return 1;
            continue;
        }
        if ((++polls & 15) == 0 && (left > 1 || total > m)) {
            rc = tested_some(ops + lo, reqs + lo, total - lo, idx, sts, m - lo, &left);
            if (rc != 0) return rc;
        }
        if (yielding) sched_yield();
    }
    return 0;
}

/* Wait here for the *m* (at most 2) ops just posted in *ops*, if
   `nothing_else_waits` (checked now, after every allocation of the call: a
   finalizer run by one may have handed an op to the engine): 1 once all are done
   (and settled); 0 if the caller must hand them to their requests' waits
   (another op to progress, a message for the engine, an MPI error: those waits
   act on it, or raise it). */
static int waited_alone(Staged **ops, Py_ssize_t m, int yielding) {
    MPI_Request reqs[2];
    int idx[2], rc;
    MPI_Status sts[2];
    if (m > 2) return 0;
    Py_ssize_t recvs = 0;
    for (Py_ssize_t k = 0; k < m; k++) recvs += ops[k]->is_recv;
    if (!nothing_else_waits(recvs)) return 0;
    for (Py_ssize_t k = 0; k < m; k++) {
        reqs[k] = ops[k]->req;
        ops[k]->busy = 1;
    }
    Py_BEGIN_ALLOW_THREADS
    rc = poll_ops(ops, reqs, m, m, idx, sts, yielding);
    Py_END_ALLOW_THREADS
    int done = rc == 0;
    for (Py_ssize_t k = 0; k < m; k++) {
        ops[k]->busy = 0;
        done &= ops[k]->state == DONE;
        settled(ops[k]);
    }
    return done;
}

/* recv(comm, spec, source, tag, engine, below, yielding, status) -> True | request
   | None: a blocking receive: `post_recv`, then `waited_alone`. True once its
   message, itself, is in the buffer (and its status, as MPI gave it, in *status*,
   an mpi4py Status, unless None); else its request, to wait on as any other (with
   the status); None: not one this path takes. */
static PyObject *fp_recv(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    int source, tag;
    MPI_Comm *comm = call_args(args, nargs, 8, 8,
                               "recv(comm, spec, source, tag, engine, below, yielding, status)",
                               1, &source, &tag);
    if (comm == NULL) return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    Py_ssize_t below = PyLong_AsSsize_t(args[5]);
    if (below == -1 && PyErr_Occurred()) return NULL;
    PyObject *status = args[7];
    if (status != Py_None && !PyObject_TypeCheck(status, &PyMPIStatus_Type)) Py_RETURN_NONE;
    Staged *s = post_recv(comm, args[1], source, tag, args[4], below);
    if (s == NULL) return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    if (waited_alone(&s, 1, PyObject_IsTrue(args[6]))) {
        if (status != Py_None) *PyMPIStatus_Get(status) = s->st;
        Py_DECREF(s);
        Py_RETURN_TRUE;
    }
    return request_stealing(s);
}

/* The status of the last message `recv_object` received. */
static MPI_Status last_status;

static PyObject *object_of(MPI_Comm *comm, int source, int tag, PyObject *loads,
                           PyObject *status);

/* recv_object(comm, source, tag, loads, status, declined) -> object | declined

   A blocking receive of an object's message, as mpi4py's recv makes it: matched
   with MPI_Mprobe, received into a new bytes object and unpickled with *loads* (an
   empty message is None), while `nothing_else_waits` (the caller checks there is
   no message stashed). Its status, as MPI gave it, goes into *status* (an mpi4py
   Status, or None) and `last()`. *declined*: not a call this path takes (not
   configured, a source or tag it does not take, another op to progress): the
   caller's path receives it. An error of the MPI library is raised as mpi4py
   raises it (the message, if matched, is received first). */
static PyObject *fp_recv_object(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    int source, tag;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "recv_object(comm, source, tag, loads, status, declined)");
        return NULL;
    }
    PyObject *status = args[4], *declined = args[5];
    if (request_type == NULL || (status != Py_None &&
                                 !PyObject_TypeCheck(status, &PyMPIStatus_Type)))
        return Py_NewRef(declined);
    MPI_Comm *comm = comm_for(args[0], args[1], args[2], 1, &source, &tag);
    if (comm == NULL || !nothing_else_waits(0)) return Py_NewRef(declined);
    return object_of(comm, source, tag, args[3], status);
}

/* The object of the next message from *source* with *tag* on *comm*, as
   `recv_object` receives it (NULL with an error raised). */
static PyObject *object_of(MPI_Comm *comm, int source, int tag, PyObject *loads,
                           PyObject *status) {
    int rc, count = 0;
    MPI_Message msg;
    MPI_Status st;
    Py_BEGIN_ALLOW_THREADS
    rc = MPI_Mprobe(source, tag, *comm, &msg, &st);
    Py_END_ALLOW_THREADS
    if (rc != MPI_SUCCESS) {
        raise_mpi(rc);
        return NULL;
    }
    MPI_Get_count(&st, MPI_BYTE, &count);
    if (count == MPI_UNDEFINED) count = 0;
    PyObject *data = PyBytes_FromStringAndSize(NULL, count);
    char scratch[1];
    char *buf = data != NULL ? PyBytes_AS_STRING(data) : count ? malloc((size_t)count) : NULL;
    int room = buf != NULL ? count : 0;     /* no memory at all: taken, truncated */
    Py_BEGIN_ALLOW_THREADS
    rc = MPI_Mrecv(buf != NULL ? buf : scratch, room, MPI_BYTE, &msg, &st);  /* matched: taken */
    Py_END_ALLOW_THREADS
    if (data == NULL) {
        free(buf);
        return NULL;    /* the allocation's error */
    }
    st.MPI_ERROR = rc;
    last_status = st;
    if (status != Py_None) *PyMPIStatus_Get(status) = st;
    if (rc != MPI_SUCCESS) {
        Py_DECREF(data);
        raise_mpi(rc);
        return NULL;
    }
    if (count == 0) {
        Py_DECREF(data);
        Py_RETURN_NONE;
    }
    PyObject *obj = PyObject_CallOneArg(loads, data);
    Py_DECREF(data);
    return obj;
}

/* sendrecv_object(comm, stream, dest, sendtag, source, recvtag, loads, status,
                   declined) -> object | declined

   mpi4py's sendrecv of an object whose pickle, *stream* (bytes, at most the eager
   limit), goes out as itself: posted with MPI_Isend, then the receive as
   `recv_object` makes it, then the send completed. *declined* as there. */
static PyObject *fp_sendrecv_object(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    int dest, sendtag, source, recvtag, rc;
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "sendrecv_object(comm, stream, dest, sendtag, source, "
                                         "recvtag, loads, status, declined)");
        return NULL;
    }
    PyObject *stream = args[1], *status = args[7], *declined = args[8];
    if (request_type == NULL || !PyBytes_CheckExact(stream) ||
            PyBytes_GET_SIZE(stream) > cfg_limit ||
            (status != Py_None && !PyObject_TypeCheck(status, &PyMPIStatus_Type)))
        return Py_NewRef(declined);
    MPI_Comm *comm = comm_for(args[0], args[2], args[3], 0, &dest, &sendtag);
    if (comm == NULL || comm_for(args[0], args[4], args[5], 1, &source, &recvtag) == NULL ||
            !nothing_else_waits(0))
        return Py_NewRef(declined);
    MPI_Request req;
    if (MPI_Isend(PyBytes_AS_STRING(stream), (int)PyBytes_GET_SIZE(stream), MPI_BYTE, dest,
                  sendtag, *comm, &req) != MPI_SUCCESS)
        return Py_NewRef(declined);     /* the Python path sends it (and raises) */
    PyObject *obj = object_of(comm, source, recvtag, args[6], status);
    /* an eager send: it completes whatever the receive did (*stream* is the caller's) */
    Py_BEGIN_ALLOW_THREADS
    rc = MPI_Wait(&req, MPI_STATUS_IGNORE);
    Py_END_ALLOW_THREADS
    if (rc != MPI_SUCCESS && obj != NULL) {
        Py_CLEAR(obj);
        raise_mpi(rc);
    }
    return obj;
}

/* sendrecv(comm, sendspec, dest, sendtag, recvspec, source, recvtag, engine,
            yielding) -> op | (recv request, send request or None) | None

   A blocking send and receive, both checked before either is posted (a receive
   left behind by a refused send would take a later message): `recv_op` and
   `send_op`, posted, then `waited_alone`. The receive's op once both are done
   (its source, tag and count are the status); else their requests, to wait on
   (no send request: MPI refused the send, which the caller then sends itself);
   None: not a call this path takes. */
static PyObject *fp_sendrecv(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    int dest, sendtag, source, recvtag;
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "sendrecv(comm, sendspec, dest, sendtag, recvspec, "
                                         "source, recvtag, engine, yielding)");
        return NULL;
    }
    if (request_type == NULL) Py_RETURN_NONE;
    MPI_Comm *comm = comm_for(args[0], args[2], args[3], 0, &dest, &sendtag);
    if (comm == NULL || comm_for(args[0], args[5], args[6], 1, &source, &recvtag) == NULL)
        Py_RETURN_NONE;
    Staged *r = recv_op(args[4], args[7], PY_SSIZE_T_MAX), *s = NULL;
    if (r != NULL)
        s = send_op(args[1], args[7], 1);   /* sent while its receive is pending */
    if (s == NULL || start_recv(r, comm, source, recvtag) < 0) {
        Py_XDECREF(r);
        Py_XDECREF(s);
        return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    }
    if (start_send(s, comm, dest, sendtag) < 0) {
        /* MPI refused the send: the Python path sends it (and raises what MPI
           raises); the receive, posted, may have matched a message already */
        Py_DECREF(s);
        PyObject *rreq = request_stealing(r);
        return rreq == NULL ? NULL : Py_BuildValue("(NO)", rreq, Py_None);
    }
    Staged *ops[2] = {r, s};
    if (waited_alone(ops, 2, PyObject_IsTrue(args[8]))) {
        Py_DECREF(s);
        return (PyObject *)r;
    }
    PyObject *rreq = request_stealing(r), *sreq = request_stealing(s);
    if (rreq == NULL || sreq == NULL) {
        Py_XDECREF(rreq);
        Py_XDECREF(sreq);
        return NULL;
    }
    return Py_BuildValue("(NN)", rreq, sreq);
}

/* Raise mpi4py's MPI.Exception for error code *code*. */
static void raise_mpi(int code) {
    PyObject *exc = PyObject_CallFunction(mpi_exception, "i", code);
    if (exc != NULL) {
        PyErr_SetObject(mpi_exception, exc);
        Py_DECREF(exc);
    }
}

/* The staged op of a request of *rtype* or a subclass (Py_None for a null one), or
   NULL: not such a request, or an error (set). */
static PyObject *staged_of(PyObject *req, PyObject *rtype) {
    if (!PyType_Check(rtype) || !PyObject_TypeCheck(req, (PyTypeObject *)rtype)) return NULL;
    PyObject *f = PyObject_GetAttr(req, str_fast);
    if (f == NULL) return NULL;
    if (f != Py_None && Py_TYPE(f) != &StagedType) {
        Py_DECREF(f);
        return NULL;
    }
    return f;
}

/* Claim the compiled ops of the requests *items*: 1 with the op of each non-null
   one in *ops* (a reference of ours, marked busy; *m* of them); 0 if one is not
   for this path (another kind of request, an op the engine took over or must act
   on, one another wait holds or listed twice); -1 with an error set. The ops
   claimed so far are in *ops* whatever the outcome, for `let_go`; the index of
   each one's request goes in *where*. */
static int claim(PyObject **items, Py_ssize_t n, PyObject *rtype, Staged **ops,
                 Py_ssize_t *where, Py_ssize_t *m) {
    *m = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *f = staged_of(items[k], rtype);
        if (f == NULL) return PyErr_Occurred() ? -1 : 0;
        if (f == Py_None) {
            Py_DECREF(f);
            continue;
        }
        Staged *s = (Staged *)f;
        if (s->state == RELEASED || s->state == ARRIVED || s->busy || s->op != NULL) {
            Py_DECREF(f);
            return 0;
        }
        s->busy = 1;
        where[*m] = k;
        ops[(*m)++] = s;
    }
    return 1;
}

static void let_go(Staged **ops, Py_ssize_t m) {
    for (Py_ssize_t k = 0; k < m; k++) {
        ops[k]->busy = 0;
        Py_DECREF(ops[k]);
    }
}

/* Make every request of *rtype* (or a subclass) among *items* null (its ops are
   done); -1 on error. */
static int null_requests(PyObject **items, Py_ssize_t n, PyObject *rtype) {
    for (Py_ssize_t k = 0; k < n; k++)
        if (PyObject_TypeCheck(items[k], (PyTypeObject *)rtype) &&
                PyObject_SetAttr(items[k], str_fast, Py_None) < 0)
            return -1;
    return 0;
}

/* Append the other live receives (not busy: neither the caller's nor another
   wait's) to *ops* and their requests to *reqs*, from *total* on, each a reference
   of ours marked busy (for `let_go`), within the arrays' *room*. -1 if one has
   arrived already (its message goes to the engine first), or if there are more
   than the arrays hold (a finalizer run since they were sized posted more): the
   Python path waits then. */
static int gather_others(Staged **ops, MPI_Request *reqs, Py_ssize_t *total,
                         Py_ssize_t room) {
    for (Staged *s = live_heads[1].next; s != &live_heads[1]; s = s->next) {
        if (s->busy) continue;
        if (s->state == ARRIVED || *total >= room) return -1;
        Py_INCREF(s);
        s->busy = 1;
        ops[*total] = s;
        reqs[*total] = s->req;
        (*total)++;
    }
    return 0;
}


/* As `poll_ops`, until any one of the first *m* ops is done (0), or an op arrived
   for the engine (1), or on an MPI error (-rc); the other live ops after them are
   tested every few polls. */
static int poll_any(Staged **ops, MPI_Request *reqs, Py_ssize_t m, Py_ssize_t total,
                    int *idx, MPI_Status *sts, int yielding) {
    unsigned polls = 0;
    for (;;) {
        int index = MPI_UNDEFINED, flag = 0;
        MPI_Status st;
        int rc = MPI_Testany((int)m, reqs, &index, &flag, &st);
        if (flag && index != MPI_UNDEFINED) {
            record(ops[index], &st, rc);    /* the request's error is the call's code */
            return ops[index]->state == ARRIVED;
        }
        if (rc != MPI_SUCCESS) return -rc;
        if (flag) return 0;     /* every one null (callers poll only posted ops) */
        if ((++polls & 15) == 0 && total > m) {
            rc = tested_some(ops + m, reqs + m, total - m, idx, sts, 0, NULL);
            if (rc != 0) return rc;
        }
        if (yielding) sched_yield();
    }
}

/* Whether *statuses* is a form the compiled waits and tests fill: None, or a list
   of exactly *n* mpi4py Statuses (anything else: the Python path, which refuses
   what mpi4py refuses). */
static int statuses_form(PyObject *statuses, Py_ssize_t n) {
    if (statuses == Py_None) return 1;
    if (!PyList_CheckExact(statuses) || PyList_GET_SIZE(statuses) != n) return 0;
    for (Py_ssize_t k = 0; k < n; k++)
        if (!PyObject_TypeCheck(PyList_GET_ITEM(statuses, k), &PyMPIStatus_Type)) return 0;
    return 1;
}

/* Fill *statuses* (`statuses_form`, of as many requests as *m*) with the statuses
   MPI gave the done ops *ops*: 1, or 0 if they are not of that form any more (the
   Python path fills them). */
static int filled_statuses(PyObject *statuses, Staged **ops, Py_ssize_t m) {
    if (statuses == Py_None) return 1;
    if (!statuses_form(statuses, m)) return 0;
    for (Py_ssize_t k = 0; k < m; k++)
        *PyMPIStatus_Get(PyList_GET_ITEM(statuses, k)) = ops[k]->st;
    return 1;
}

/* `poll_ops` or `poll_any`. */
typedef int (*PollFn)(Staged **, MPI_Request *, Py_ssize_t, Py_ssize_t, int *, MPI_Status *,
                      int);

/* Poll the *m* claimed ops *ops* with *poll*, the GIL released, together with every
   other live receive (`gather_others`: *ops* has room for *room* ops), then settle
   them all and let the others go again: 0 once *poll* is satisfied; 1 if the
   engine acts first (a message arrived: the Python path waits); -1 with an error set (memory, or MPI's, raised once the others are let
   go). */
static int polled_with_others(Staged **ops, Py_ssize_t m, Py_ssize_t room, PollFn poll,
                              int yielding) {
    Py_ssize_t total = m;
    MPI_Request *reqs = PyMem_Malloc(room * sizeof(MPI_Request));
    int *idx = PyMem_Malloc(room * sizeof(int));
    MPI_Status *sts = PyMem_Malloc(room * sizeof(MPI_Status));
    int rc = 1;
    if (reqs && idx && sts) {
        for (Py_ssize_t k = 0; k < m; k++) reqs[k] = ops[k]->req;  /* null once done */
        if (gather_others(ops, reqs, &total, room) == 0) {
            Py_BEGIN_ALLOW_THREADS
            rc = poll(ops, reqs, m, total, idx, sts, yielding);
            Py_END_ALLOW_THREADS
        }
        for (Py_ssize_t k = 0; k < total; k++) settled(ops[k]);
        let_go(ops + m, total - m);     /* the others, before anything allocates */
    }
    int ok = reqs && idx && sts;
    PyMem_Free(reqs);
    PyMem_Free(idx);
    PyMem_Free(sts);
    if (!ok) {
        PyErr_NoMemory();
        return -1;
    }
    if (rc < 0) {
        raise_mpi(-rc);
        return -1;
    }
    return rc;
}

/* A `PollFn` that tests the others once, with no op of the caller's (*m* is 0). */
static int others_tested(Staged **ops, MPI_Request *reqs, Py_ssize_t m, Py_ssize_t total,
                         int *idx, MPI_Status *sts, int yielding) {
    (void)yielding;
    return total > m ? tested_some(ops + m, reqs + m, total - m, idx, sts, 0, NULL) : 0;
}

/* Test every other live receive once, as a test that finds its own requests not
   done must (their senders may wait for this rank to act on a message): 1 if a
   message for the engine arrived among them, 0 if none did, -1 with an error
   set. */
static int progress_others(void) {
    Py_ssize_t room = 0;
    for (Staged *s = live_heads[1].next; s != &live_heads[1]; s = s->next) room += !s->busy;
    if (room == 0) return 0;
    Staged **ops = PyMem_Malloc(room * sizeof(Staged *));
    if (ops == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    int got = polled_with_others(ops, 0, room, others_tested, 0);
    PyMem_Free(ops);
    return got;
}

/* Requests a wait claims without an allocation of its own. */
#define FEW_WAITED 8

/* Test the *m* claimed ops still posted, in turn, once each: 2 if one arrived (a
   message for the engine, or its error: the Python path acts on it or raises
   it), -rc on an MPI error; else 1 if all are done now, 0 if not. *until_pending*
   (a wait): stop at the first one not complete yet; a wait whose ops all complete
   so needs no other receive progressed, as `poll_ops` progresses none when its
   first tests complete them. */
static int tested(Staged **ops, Py_ssize_t m, int until_pending) {
    int all = 1;
    for (Py_ssize_t k = 0; k < m; k++) {
        Staged *s = ops[k];
        if (s->state != POSTED) continue;
        int flag = 0;
        MPI_Status st;
        int rc = MPI_Test(&s->req, &flag, &st);
        if (!flag) {
            if (rc != MPI_SUCCESS) return -rc;
            all = 0;
            if (until_pending) return 0;
            continue;
        }
        record(s, &st, rc);     /* MPI_Test reports the request's error in its code */
        if (s->state == ARRIVED) return 2;
    }
    return all;
}

static PyObject *unpickled(Staged *s, PyObject *loads);

/* The objects of *n* requests whose *m* done ops are *ops* (at the indices
   *where*): an object receive's unpickled with *loads*, None for every other
   request (a send, a null one); a new list, or NULL with an error set. */
static PyObject *objects_of(Staged **ops, const Py_ssize_t *where, Py_ssize_t m, Py_ssize_t n,
                            PyObject *loads) {
    PyObject *out = PyList_New(n);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) PyList_SET_ITEM(out, i, Py_NewRef(Py_None));
    for (Py_ssize_t k = 0; k < m; k++) {
        if (!ops[k]->whole) continue;
        PyObject *obj = unpickled(ops[k], loads);
        if (obj == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SetItem(out, where[k], obj);     /* steals it, drops the None */
    }
    return out;
}

/* What a wait or test of the *n* requests *items* gives once their *m* ops are
   all done: their *statuses* filled, the requests made null, and True, or with
   *loads* their objects (`objects_of`); *declined* (the Python path finishes) if
   the statuses are not of a form filled here any more. A new reference, or NULL
   with an error set. */
static PyObject *all_done(PyObject **items, Py_ssize_t n, PyObject *rtype, Staged **ops,
                          const Py_ssize_t *where, Py_ssize_t m, PyObject *statuses,
                          PyObject *loads, PyObject *declined) {
    if (!filled_statuses(statuses, ops, m)) return Py_NewRef(declined);
    if (null_requests(items, n, rtype) < 0) return NULL;
    return loads != Py_None ? objects_of(ops, where, m, n, loads) : Py_NewRef(Py_True);
}

/* waitall(requests, rtype, yielding, statuses=None, loads=None) -> bool | list

   True: every request was a null one or a staged op of *rtype*, and all are done
   and null now, with *statuses* filled as MPI gave them (`statuses_form`); with
   *loads* (a lowercase waitall), their objects instead (`objects_of`). False:
   the Python path finishes (a request of another kind, one the engine took over, a
   message the engine acts on, statuses of null requests); nothing is lost, done
   ops stay done. *yielding*: poll and give the core away (oversubscribed ranks). */
static PyObject *fp_waitall(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 3 || nargs > 5) {
        PyErr_SetString(PyExc_TypeError,
                        "waitall(requests, rtype, yielding, statuses=None, loads=None)");
        return NULL;
    }
    PyObject *statuses = nargs >= 4 ? args[3] : Py_None, *loads = nargs == 5 ? args[4] : Py_None;
    int owned = 0;      /* whether result is a new reference (objects) */
    /* a tuple of our own: a list may change while the GIL is released */
    PyObject *seq = PySequence_Tuple(args[0]);
    if (seq == NULL) return NULL;
    int yielding = PyObject_IsTrue(args[2]);
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    PyObject *result = NULL;
    Py_ssize_t room = n + live_recvs + 1;
    /* a wait on a few requests claims them into `few` (the common case) */
    Staged *few[FEW_WAITED];
    Py_ssize_t few_where[FEW_WAITED];
    Staged **ops = n <= FEW_WAITED ? few : PyMem_Malloc(n * sizeof(Staged *));
    Py_ssize_t *where = n <= FEW_WAITED ? few_where : PyMem_Malloc(n * sizeof(Py_ssize_t));
    Py_ssize_t k, m = 0;
    if (ops == NULL || where == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    int claimed = claim(items, n, args[1], ops, where, &m);
    if (claimed <= 0) {
        if (claimed == 0) result = Py_False;
        goto out;
    }
    /* the Python path waits: for the engine, or statuses of null requests */
    if (engine_waits() || (statuses != Py_None && (m != n || !statuses_form(statuses, n)))) {
        result = Py_False;
        goto out;
    }
    /* 1: all done at once, 0: some wait, 2: one arrived for the engine, < 0: -rc */
    int rc = tested(ops, m, 1);
    for (k = 0; k < m; k++) settled(ops[k]);    /* those done leave the live list now */
    if (rc == 0) {
        /* some wait: the other live receives are polled too, in a list of all */
        Staged **all = PyMem_Malloc(room * sizeof(Staged *));
        if (all == NULL) {
            PyErr_NoMemory();
            goto out;
        }
        memcpy(all, ops, m * sizeof(Staged *));
        if (ops != few) PyMem_Free(ops);
        ops = all;
        int polled = engine_waits() ? 1 : polled_with_others(ops, m, room, poll_ops, yielding);
        if (polled < 0) goto out;
        rc = polled ? 2 : 1;
    }
    if (rc < 0) {
        raise_mpi(-rc);
        goto out;
    }
    if (rc == 2) {      /* the engine acts on it before anything else */
        result = Py_False;
        goto out;
    }
    result = all_done(items, n, args[1], ops, where, m, statuses, loads, Py_False);
    owned = 1;
out:
    if (ops != NULL) let_go(ops, m);
    if (ops != few) PyMem_Free(ops);
    if (where != few_where) PyMem_Free(where);
    Py_DECREF(seq);
    if (!owned) Py_XINCREF(result);
    return result;
}

/* testall(requests, rtype, statuses=None, loads=None) -> True (all done and null
   now, their statuses filled as waitall fills them; with *loads*, a list of their
   objects instead, as waitall gives it), False (not all done
   yet; the other live receives were tested too, as a test must progress them),
   None (the Python path decides, as for waitall, or a message among the other
   live receives is for the engine). */
static PyObject *fp_testall(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 2 || nargs > 4) {
        PyErr_SetString(PyExc_TypeError, "testall(requests, rtype, statuses=None, loads=None)");
        return NULL;
    }
    PyObject *statuses = nargs >= 3 ? args[2] : Py_None, *loads = nargs == 4 ? args[3] : Py_None;
    int owned = 0;      /* whether result is a new reference (objects) */
    PyObject *seq = PySequence_Tuple(args[0]);   /* as in waitall */
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), k, m = 0;
    PyObject **items = PySequence_Fast_ITEMS(seq);
    PyObject *result = NULL;
    Staged **ops = PyMem_Malloc((n + 1) * sizeof(Staged *));
    Py_ssize_t *where = PyMem_Malloc((n + 1) * sizeof(Py_ssize_t));
    if (ops == NULL || where == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    int claimed = claim(items, n, args[1], ops, where, &m);
    if (claimed <= 0 || engine_waits() ||
            (statuses != Py_None && (m != n || !statuses_form(statuses, n)))) {
        if (claimed >= 0) result = Py_None;     /* (statuses of null requests: Python's) */
        goto out;
    }
    /* 1: all done, 0: not all, 2: one arrived for the engine, < 0: -rc */
    int rc = tested(ops, m, 0);
    for (k = 0; k < m; k++) settled(ops[k]);
    if (rc < 0) {
        raise_mpi(-rc);
        goto out;
    }
    if (rc == 0) {      /* a test that finds them not done progresses the others */
        int others = progress_others();
        if (others >= 0) result = others > 0 ? Py_None : Py_False;
        goto out;
    }
    if (rc == 2) {      /* the engine acts on it */
        result = Py_None;
        goto out;
    }
    result = all_done(items, n, args[1], ops, where, m, statuses, loads, Py_None);
    owned = 1;
out:
    if (ops != NULL) let_go(ops, m);
    PyMem_Free(ops);
    PyMem_Free(where);
    Py_DECREF(seq);
    if (!owned) Py_XINCREF(result);
    return result;
}

/* The kinds of `some`: Testany, Waitany, Testsome, Waitsome. */
enum { TEST_ANY = 0, WAIT_ANY = 1, TEST_SOME = 2, WAIT_SOME = 3 };

/* some(requests, rtype, how, yielding, status, loads=None) -> int | list | False
   | tuple | None

   Testany, Waitany, Testsome or Waitsome (*how*) of *requests*, as waitall waits
   and testall tests: an index (-1: none done, for Testany; -2: every request
   null), or for the some kinds the list of the indices done (False: every one
   null); each request reported is null now. *status* (an mpi4py Status, or None)
   takes the status of an any kind's request done. With *loads* (the lowercase
   calls), also the objects: (index, object) and (indices, objects), an object
   receive's unpickled with *loads*, None for any other request. None: the Python
   path decides (as for waitall). */
static PyObject *fp_some(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 && nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "some(requests, rtype, how, yielding, status, loads=None)");
        return NULL;
    }
    PyObject *loads = nargs == 6 ? args[5] : Py_None;
    PyObject *objects = NULL;   /* with loads: a new reference */
    int how = (int)PyLong_AsLong(args[2]);
    if (how == -1 && PyErr_Occurred()) return NULL;
    int blocking = how == WAIT_ANY || how == WAIT_SOME, some = how >= TEST_SOME;
    PyObject *status = args[4];
    if (status != Py_None && (some || !PyObject_TypeCheck(status, &PyMPIStatus_Type)))
        Py_RETURN_NONE;
    PyObject *seq = PySequence_Tuple(args[0]);   /* as in waitall */
    if (seq == NULL) return NULL;
    int yielding = PyObject_IsTrue(args[3]);
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), k, m = 0;
    PyObject **items = PySequence_Fast_ITEMS(seq);
    PyObject *result = NULL;    /* a new reference */
    Py_ssize_t room = n + live_recvs + 1;
    Staged **ops = PyMem_Malloc(room * sizeof(Staged *));
    Py_ssize_t *where = PyMem_Malloc((n + 1) * sizeof(Py_ssize_t));
    if (ops == NULL || where == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    int claimed = claim(items, n, args[1], ops, where, &m);
    if (claimed < 0) goto out;
    if (claimed == 0 || engine_waits() || (m == 0 && status != Py_None)) {
        result = Py_NewRef(Py_None);    /* (an empty status: the Python path's too) */
        goto out;
    }
    if (m == 0) {       /* every request null */
        result = some ? Py_NewRef(Py_False) : PyLong_FromLong(-2);
        if (result != NULL && !some && loads != Py_None)
            result = Py_BuildValue("(NO)", result, Py_None);
        goto out;
    }
    /* 0 (1: all done), or 2: one arrived for the engine, < 0: -rc */
    int rc = tested(ops, m, 0), any = 0;
    if (rc == 1) rc = 0;
    for (k = 0; k < m; k++) any |= ops[k]->state == DONE;
    if (rc == 0 && !any) {
        if (!blocking) {    /* a test that finds none done progresses the others */
            int others = progress_others();
            if (others != 0) {
                if (others > 0) result = Py_NewRef(Py_None);
                goto out;
            }
        } else {
            int polled = engine_waits() ? 1
                                        : polled_with_others(ops, m, room, poll_any, yielding);
            if (polled < 0) goto out;
            rc = polled ? 2 : 0;
        }
    }
    for (k = 0; k < m; k++) settled(ops[k]);
    if (rc < 0) {
        raise_mpi(-rc);
        goto out;
    }
    if (rc == 2) {      /* the engine acts on it first */
        result = Py_NewRef(Py_None);
        goto out;
    }
    result = some ? PyList_New(0) : NULL;
    if (some && result == NULL) goto out;
    if (loads != Py_None && (objects = PyList_New(0)) == NULL) {
        Py_CLEAR(result);
        goto out;
    }
    for (k = 0; k < m; k++) {
        Staged *s = ops[k];
        if (s->state != DONE) continue;
        PyObject *i = PyLong_FromSsize_t(where[k]);
        if (i == NULL || PyObject_SetAttr(items[where[k]], str_fast, Py_None) < 0) {
            Py_XDECREF(i);
            Py_CLEAR(result);
            goto out;
        }
        if (objects != NULL) {
            PyObject *obj = s->whole ? unpickled(s, loads) : Py_NewRef(Py_None);
            int appended = obj != NULL ? PyList_Append(objects, obj) : -1;
            Py_XDECREF(obj);
            if (appended < 0) {
                Py_DECREF(i);
                Py_CLEAR(result);
                goto out;
            }
        }
        if (!some) {
            if (status != Py_None) *PyMPIStatus_Get(status) = s->st;
            result = i;
            break;
        }
        int appended = PyList_Append(result, i);
        Py_DECREF(i);
        if (appended < 0) {
            Py_CLEAR(result);
            goto out;
        }
    }
    if (result == NULL) result = PyLong_FromLong(-1);   /* none done (a test) */
    if (result != NULL && objects != NULL) {
        PyObject *pair = !some ? Py_BuildValue("(NO)", result,
                                               PyList_GET_SIZE(objects) ? PyList_GET_ITEM(objects, 0) : Py_None)
                               : Py_BuildValue("(NO)", result, objects);
        result = pair;  /* "N" took result's reference */
    }
out:
    Py_XDECREF(objects);
    if (ops != NULL) let_go(ops, m);
    PyMem_Free(ops);
    PyMem_Free(where);
    Py_DECREF(seq);
    return result;
}

/* release() -> mpi4py Request: the engine takes over a posted op's request. */
static PyObject *Staged_release(Staged *s, PyObject *unused) {
    if (s->busy) {
        PyErr_SetString(PyExc_RuntimeError, "a wait in another thread holds this request");
        return NULL;
    }
    if (s->state != POSTED) {
        PyErr_SetString(PyExc_RuntimeError, "only a posted op's request can be taken over");
        return NULL;
    }
    PyObject *req = PyMPIRequest_New(s->req);
    if (req == NULL) return NULL;
    s->req = MPI_REQUEST_NULL;
    s->state = RELEASED;
    if (s->is_recv) drop_view(s);   /* a send's view keeps its buffer until it is freed */
    unlink_live(s);                 /* the caller holds a reference */
    return req;
}

/* taken() -> None: the engine took over an arrived op. */
static PyObject *Staged_taken(Staged *s, PyObject *unused) {
    if (s->state != ARRIVED) {
        PyErr_SetString(PyExc_RuntimeError, "only an arrived op can be taken over");
        return NULL;
    }
    s->state = RELEASED;
    drop_view(s);
    unlink_live(s);
    Py_RETURN_NONE;
}

static PyObject *get_int(Staged *s, void *which) {
    switch ((int)(Py_ssize_t)which) {
    case 0: return PyLong_FromLong(s->state);
    case 1: return PyLong_FromLong(s->source);
    case 2: return PyLong_FromLong(s->tag);
    case 3: return PyLong_FromSsize_t(s->count);
    case 4: return PyLong_FromLong(s->error);
    case 5: return PyBool_FromLong(s->is_recv);
    case 6: return PyBool_FromLong(s->busy);
    case 8: return PyBool_FromLong(s->split);
    case 9: return PyBool_FromLong(s->whole);
    default: return PyLong_FromSsize_t(s->nbytes);
    }
}

static PyObject *get_obj(Staged *s, void *which) {
    PyObject *o = (Py_ssize_t)which == 0 ? s->engine : (Py_ssize_t)which == 1 ? s->obj : s->op;
    if (o == NULL) Py_RETURN_NONE;
    Py_INCREF(o);
    return o;
}

static int set_op(Staged *s, PyObject *value, void *unused) {
    Py_XINCREF(value);
    Py_XSETREF(s->op, value);
    return 0;
}

static PyGetSetDef Staged_getset[] = {
    {"state", (getter)get_int, NULL, "0 posted, 1 done, 2 arrived, 3 released", (void *)0},
    {"source", (getter)get_int, NULL, "the completed message's source", (void *)1},
    {"tag", (getter)get_int, NULL, "the completed message's tag", (void *)2},
    {"count", (getter)get_int, NULL, "the completed message's bytes", (void *)3},
    {"error", (getter)get_int, NULL, "the completion's MPI error code", (void *)4},
    {"is_recv", (getter)get_int, NULL, "a receive (else a send)", (void *)5},
    {"busy", (getter)get_int, NULL, "a wait without the GIL holds it", (void *)6},
    {"nbytes", (getter)get_int, NULL, "bytes the receive buffer takes", (void *)7},
    {"split", (getter)get_int, NULL, "a split receive (its head in the stage)", (void *)8},
    {"whole", (getter)get_int, NULL, "an object's receive, whole in its buffer", (void *)9},
    {"engine", (getter)get_obj, NULL, "the engine of the op", (void *)0},
    {"obj", (getter)get_obj, NULL, "the buffer argument", (void *)1},
    {"op", (getter)get_obj, (setter)set_op, "the Python op it became", (void *)2},
    {NULL}};

static PyMethodDef Staged_methods[] = {
    {"release", (PyCFunction)Staged_release, METH_NOARGS, "the posted request, for the engine"},
    {"taken", (PyCFunction)Staged_taken, METH_NOARGS, "the engine took over an arrived op"},
    {NULL}};

static PyTypeObject StagedType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cmampi." STR(FASTPATH_NAME) ".Staged",
    .tp_doc = "A small send or receive on the compiled path.",
    .tp_basicsize = offsetof(Staged, stage),
    .tp_itemsize = 1,
    .tp_dealloc = (destructor)Staged_dealloc,
    .tp_traverse = (traverseproc)Staged_traverse,
    .tp_clear = (inquiry)Staged_clear,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_as_buffer = &Staged_as_buffer,
    .tp_getset = Staged_getset,
    .tp_methods = Staged_methods,
};

/* configure(limit, band, cma_min, cma_min_busy, guarded, rtype, ndarray, mmap,
   byte): the engine's eager limit, control band and pull thresholds (idle, and
   with receives pending); guarded receives stop at their stage's end (see
   channel/mpi.py); the request class of compiled ops and the types specs name. */
static PyObject *fp_configure(PyObject *mod, PyObject *args) {
    Py_ssize_t limit, band, cma_min, cma_min_busy;
    int guarded;
    PyObject *rtype, *nd, *mm, *byte, *pending, *detached;
    if (!PyArg_ParseTuple(args, "nnnnpO!OOOO!O!", &limit, &band, &cma_min, &cma_min_busy,
                          &guarded, &PyType_Type, &rtype, &nd, &mm, &byte, &PyDict_Type,
                          &pending, &PyList_Type, &detached))
        return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)rtype, &PyMPIRequest_Type)) {
        PyErr_SetString(PyExc_TypeError, "rtype: a subclass of mpi4py's Request");
        return NULL;
    }
    if (band <= limit || limit < 0 || band > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "expected 0 <= limit < band");
        return NULL;
    }
    if (cfg_band >= 0 && (limit != cfg_limit || band != cfg_band || cma_min != cfg_cma_min ||
                          cma_min_busy != cfg_cma_min_busy)) {
        PyErr_SetString(PyExc_ValueError, "configured already with other sizes");
        return NULL;
    }
    if (guarded && gap_type == MPI_DATATYPE_NULL) {
        /* band bytes of the message: band - 1, a gap of one, then one */
        int lens[2] = {(int)band - 1, 1}, displs[2] = {0, (int)band};
        if (MPI_Type_indexed(2, lens, displs, MPI_BYTE, &gap_type) != MPI_SUCCESS ||
                MPI_Type_commit(&gap_type) != MPI_SUCCESS) {
            gap_type = MPI_DATATYPE_NULL;
            PyErr_SetString(PyExc_RuntimeError, "cannot make the guarded stage's datatype");
            return NULL;
        }
    }
    void *ub = NULL;
    int found = 0;
    if (MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &ub, &found) == MPI_SUCCESS && found)
        tag_ub = *(int *)ub;
    cfg_limit = limit;
    cfg_band = band;
    cfg_cma_min = cma_min;
    cfg_cma_min_busy = cma_min_busy;
    if (finalize_fast((PyTypeObject *)rtype) < 0) return NULL;
    Py_INCREF(rtype);
    Py_XSETREF(request_type, (PyTypeObject *)rtype);
    Py_INCREF(nd);
    Py_XSETREF(ndarray_type, nd);
    Py_INCREF(mm);
    Py_XSETREF(mmap_type, mm);
    Py_INCREF(byte);
    Py_XSETREF(byte_type, byte);
    Py_INCREF(pending);
    Py_XSETREF(engine_pending, pending);
    Py_INCREF(detached);
    Py_XSETREF(engine_detached, detached);
    Py_RETURN_NONE;
}

/* The object a done object's receive *s* holds, unpickled with *loads* (an empty
   message is None); NULL with an error. */
static PyObject *unpickled(Staged *s, PyObject *loads) {
    if (!s->whole || s->state != DONE) {
        PyErr_SetString(PyExc_ValueError, "not a done object's receive");
        return NULL;
    }
    if (s->count == 0) Py_RETURN_NONE;
    PyObject *view = PyMemoryView_FromMemory(s->own, s->count, PyBUF_READ);
    if (view == NULL) return NULL;
    PyObject *obj = PyObject_CallOneArg(loads, view);
    Py_DECREF(view);
    return obj;
}

/* object_in(staged, loads) -> object: `unpickled`. */
static PyObject *fp_object_in(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || Py_TYPE(args[0]) != &StagedType) {
        PyErr_SetString(PyExc_TypeError, "object_in(staged, loads)");
        return NULL;
    }
    return unpickled((Staged *)args[0], args[1]);
}

/* wait_object(request, rtype, yielding, loads, declined) -> object | declined: the
   object of an object's receive *request* (of *rtype*), waited for as `waitall`
   waits, unpickled (`unpickled`); *declined* where `waitall` leaves it to the
   Python path. */
static PyObject *fp_wait_object(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "wait_object(request, rtype, yielding, loads, declined)");
        return NULL;
    }
    PyObject *f = staged_of(args[0], args[1]);
    if (f == NULL || f == Py_None || !((Staged *)f)->whole) {
        Py_XDECREF(f);
        return PyErr_Occurred() ? NULL : Py_NewRef(args[4]);
    }
    PyObject *one = PyTuple_Pack(1, args[0]), *done = NULL, *obj = NULL;
    if (one != NULL) {
        PyObject *wargs[3] = {one, args[1], args[2]};
        done = fp_waitall(mod, wargs, 3);
        Py_DECREF(one);
    }
    if (done == Py_True)
        obj = unpickled((Staged *)f, args[3]);
    else if (done != NULL)
        obj = Py_NewRef(args[4]);
    Py_XDECREF(done);
    Py_DECREF(f);
    return obj;
}

/* What `in_band` tells apart (`in_band_config`): buffers of this many bytes or
   more, contiguous, raise this exception. */
static Py_ssize_t oob_least = -1;
static PyObject *oob_exception = NULL;

/* in_band(pickle_buffer) -> True: pickle's buffer callback for a send's object
   (`objects._in_band`, its twin): True (keep the buffer in the stream) unless it
   is contiguous and of `oob_least` bytes or more, which raises `oob_exception`
   (stop: the object has a buffer to leave out of band). */
static PyObject *fp_in_band(PyObject *mod, PyObject *pb) {
    Py_buffer view;
    if (oob_exception == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "in_band: not configured");
        return NULL;
    }
    if (PyObject_GetBuffer(pb, &view, PyBUF_FULL_RO) < 0) return NULL;
    int keep = view.len < oob_least || !PyBuffer_IsContiguous(&view, 'A');
    PyBuffer_Release(&view);
    if (keep) Py_RETURN_TRUE;
    PyErr_SetNone(oob_exception);
    return NULL;
}

/* What `pickled` calls: pickle.dumps, protocol 5, and ``buffer_callback=in_band``. */
static PyObject *oob_dumps = NULL, *oob_protocol = NULL, *oob_callback = NULL,
                *oob_kwnames = NULL;

/* in_band_config(least, exception, dumps): see `in_band` and `pickled`. */
static PyObject *fp_in_band_config(PyObject *mod, PyObject *args) {
    Py_ssize_t least;
    PyObject *exc, *dumps;
    if (!PyArg_ParseTuple(args, "nOO", &least, &exc, &dumps)) return NULL;
    if (!PyExceptionClass_Check(exc) || least < 0 || !PyCallable_Check(dumps)) {
        PyErr_SetString(PyExc_TypeError, "in_band_config(least, exception class, dumps)");
        return NULL;
    }
    PyObject *callback = PyObject_GetAttrString(mod, "in_band");
    if (callback == NULL) return NULL;
    if (oob_kwnames == NULL && (oob_kwnames = Py_BuildValue("(s)", "buffer_callback")) == NULL) {
        Py_DECREF(callback);
        return NULL;
    }
    if (oob_protocol == NULL && (oob_protocol = PyLong_FromLong(5)) == NULL) {
        Py_DECREF(callback);
        return NULL;
    }
    Py_XSETREF(oob_callback, callback);
    Py_INCREF(exc);
    Py_XSETREF(oob_exception, exc);
    Py_INCREF(dumps);
    Py_XSETREF(oob_dumps, dumps);
    oob_least = least;
    Py_RETURN_NONE;
}

/* pickled(obj, oob) -> bytes | None: *obj*'s pickle (protocol 5) with every buffer
   in band; with *oob* (the peer may pull), None if `in_band` stops it (a buffer
   to leave out of band). The twin of `objects._pickled_in_band`, one call. */
static PyObject *fp_pickled(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "pickled(obj, oob)");
        return NULL;
    }
    if (oob_dumps == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "pickled: not configured");
        return NULL;
    }
    int oob = PyObject_IsTrue(args[1]);
    if (oob < 0) return NULL;
    PyObject *call[3] = {args[0], oob_protocol, oob_callback};
    PyObject *out = PyObject_Vectorcall(oob_dumps, call, 2, oob ? oob_kwnames : NULL);
    if (out == NULL && oob && PyErr_ExceptionMatches(oob_exception)) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return out;
}

/* objects(rtype): the request class of objects' receives (a subclass of the
   compiled ops' one). */
static PyObject *fp_objects(PyObject *mod, PyObject *args) {
    PyObject *rtype;
    if (!PyArg_ParseTuple(args, "O!", &PyType_Type, &rtype)) return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)rtype, &PyMPIRequest_Type)) {
        PyErr_SetString(PyExc_TypeError, "objects(rtype): a subclass of mpi4py's Request");
        return NULL;
    }
    if (finalize_fast((PyTypeObject *)rtype) < 0) return NULL;
    Py_INCREF(rtype);
    Py_XSETREF(object_request_type, (PyTypeObject *)rtype);
    Py_RETURN_NONE;
}

/* last() -> (source, tag, count): of the message `recv_object` received last. */
static PyObject *fp_last(PyObject *mod, PyObject *unused) {
    int count = 0;
    MPI_Get_count(&last_status, MPI_BYTE, &count);
    return Py_BuildValue("(iii)", last_status.MPI_SOURCE, last_status.MPI_TAG,
                         count == MPI_UNDEFINED ? 0 : count);
}

/* library() -> (initialized, version): the MPI library this module calls. */
static PyObject *fp_library(PyObject *mod, PyObject *unused) {
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0, init = 0;
    MPI_Initialized(&init);
    MPI_Get_library_version(version, &len);
    return Py_BuildValue("(Os#)", init ? Py_True : Py_False, version, (Py_ssize_t)len);
}

/* live() -> the ops posted or arrived that the engine has not taken over. */
static PyObject *fp_live(PyObject *mod, PyObject *unused) {
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    for (int r = 0; r < 2; r++)
        for (Staged *s = live_heads[r].next; s != &live_heads[r]; s = s->next)
            if (PyList_Append(out, (PyObject *)s) < 0) {
                Py_DECREF(out);
                return NULL;
            }
    return out;
}

static PyObject *fp_pending(PyObject *mod, PyObject *unused) {
    return PyLong_FromSsize_t(live_count);
}

static PyObject *fp_receiving(PyObject *mod, PyObject *unused) {
    return PyLong_FromSsize_t(live_recvs);
}

static PyMethodDef methods[] = {
    {"irecv", (PyCFunction)(void (*)(void))fp_irecv, METH_FASTCALL,
     "irecv(comm, spec, source, tag, engine[, below]): the request of a receive, or None"},
    {"irecv_object", (PyCFunction)(void (*)(void))fp_irecv_object, METH_FASTCALL,
     "irecv_object(comm, array, source, tag, engine): the request of an object's receive, "
     "or None"},
    {"objects", fp_objects, METH_VARARGS, "objects(rtype): the request class of objects' receives"},
    {"recv_object", (PyCFunction)(void (*)(void))fp_recv_object, METH_FASTCALL,
     "recv_object(comm, source, tag, loads, status, declined): a blocking receive of an "
     "object, or declined"},
    {"last", fp_last, METH_NOARGS, "(source, tag, count) of the last recv_object"},
    {"in_band", fp_in_band, METH_O, "in_band(pickle_buffer): True, or raises (a large buffer)"},
    {"in_band_config", fp_in_band_config, METH_VARARGS,
     "in_band_config(least, exception, dumps): what in_band tells apart, how pickled pickles"},
    {"pickled", (PyCFunction)(void (*)(void))fp_pickled, METH_FASTCALL,
     "pickled(obj, oob): the pickle of obj, or None if it has a buffer to leave out of band"},
    {"object_in", (PyCFunction)(void (*)(void))fp_object_in, METH_FASTCALL,
     "object_in(staged, loads): the object a done object's receive holds"},
    {"wait_object", (PyCFunction)(void (*)(void))fp_wait_object, METH_FASTCALL,
     "wait_object(request, rtype, yielding, loads, declined): an object's receive's object"},
    {"slots", (PyCFunction)(void (*)(void))fp_slots, METH_FASTCALL,
     "slots(comm, kind, obj, root, op, partial, pickled): a short lowercase collective's "
     "result, or declined"},
    {"slot_config", fp_slot_config, METH_VARARGS,
     "slot_config(dumps, loads, kwargs, size, declined, medium): how slots are made and "
     "read, the longest pickle a slot announces"},
    {"sendrecv_object", (PyCFunction)(void (*)(void))fp_sendrecv_object, METH_FASTCALL,
     "sendrecv_object(comm, stream, dest, sendtag, source, recvtag, loads, status, "
     "declined): the object received, or declined"},
    {"isend_object", (PyCFunction)(void (*)(void))fp_isend_object, METH_FASTCALL,
     "isend_object(comm, obj, dest, tag, engine, oob): an object's isend: the request, "
     "(the pickle,) to send by the Python path, or None"},
    {"isend", (PyCFunction)(void (*)(void))fp_isend, METH_FASTCALL,
     "isend(comm, spec, dest, tag, engine): the request of a send as itself, or None"},
    {"recv", (PyCFunction)(void (*)(void))fp_recv, METH_FASTCALL,
     "recv(comm, spec, source, tag, engine, below, yielding, status): True, a request or "
     "None"},
    {"coll", (PyCFunction)(void (*)(void))fp_coll, METH_FASTCALL,
     "coll(comm, kind, send, recv, root, op, limit): whether it ran the collective"},
    {"sendrecv", (PyCFunction)(void (*)(void))fp_sendrecv, METH_FASTCALL,
     "sendrecv(comm, sendspec, dest, sendtag, recvspec, source, recvtag, engine, "
     "yielding): the receive's op, two requests or None"},
    {"send", (PyCFunction)(void (*)(void))fp_send, METH_FASTCALL,
     "send(comm, spec, dest, tag): whether it sent the message"},
    {"waitall", (PyCFunction)(void (*)(void))fp_waitall, METH_FASTCALL,
     "waitall(requests, rtype, yielding, statuses=None, loads=None) -> bool or list"},
    {"testall", (PyCFunction)(void (*)(void))fp_testall, METH_FASTCALL,
     "testall(requests, rtype, statuses=None, loads=None) -> True, list, False or None"},
    {"some", (PyCFunction)(void (*)(void))fp_some, METH_FASTCALL,
     "some(requests, rtype, how, yielding, status, loads=None) -> int, list, False, tuple or None"},
    {"configure", fp_configure, METH_VARARGS,
     "configure(limit, band, cma_min, cma_min_busy, guarded, rtype, ndarray, mmap, byte, "
     "pending, detached)"},
    {"library", fp_library, METH_NOARGS, "(initialized, version) of the linked MPI library"},
    {"live", fp_live, METH_NOARGS, "the ops the engine has not taken over"},
    {"pending", fp_pending, METH_NOARGS, "how many ops live() holds"},
    {"receiving", fp_receiving, METH_NOARGS, "how many of them are receives"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, STR(FASTPATH_NAME), NULL, -1, methods};

PyMODINIT_FUNC CAT(PyInit_, FASTPATH_NAME)(void) {
    if (import_mpi4py() < 0) return NULL;
    for (int r = 0; r < 2; r++) live_heads[r].prev = live_heads[r].next = &live_heads[r];
    for (int i = 0; i < SPLIT_TYPES; i++) split_types[i].dt = MPI_DATATYPE_NULL;
    for (int i = 0; i < GUARD_TYPES; i++) guard_types[i].dt = MPI_DATATYPE_NULL;
    if (PyType_Ready(&StagedType) < 0) return NULL;
    str_fast = PyUnicode_InternFromString("_fast");
    empty_tuple = PyTuple_New(0);
    if (str_fast == NULL || empty_tuple == NULL) return NULL;
    PyObject *mpi = PyImport_ImportModule("mpi4py.MPI");
    if (mpi == NULL) return NULL;
    mpi_exception = PyObject_GetAttrString(mpi, "Exception");
    Py_DECREF(mpi);
    if (mpi_exception == NULL) return NULL;
    PyObject *m = PyModule_Create(&moddef);
    if (m == NULL) return NULL;
    Py_INCREF(&StagedType);
    if (PyModule_AddObject(m, "Staged", (PyObject *)&StagedType) < 0) {
        Py_DECREF(&StagedType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
