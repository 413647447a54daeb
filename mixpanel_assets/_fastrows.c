/*
 * mixpanel_assets._fastrows: the per-line work of an events export, compiled.
 *
 * Why this exists: turning one export line into its mp_master_event row, dedup-key digest and
 * identity links costs ~13 us of Python per event (block_worker.process_block), most of the
 * export's CPU. This module does the same work for lines of Mixpanel's usual compact shape in
 * well under a microsecond, appending straight into the caller's per-window buffers.
 *
 * Why it is safe: the pure-Python loop stays the reference. scan() only takes a line it is
 * *certain* the Python path turns into the identical row (same bytes, same digest, same window,
 * same links); for anything else it stops and hands the line back to Python, which then decides
 * (row, bad line, blank, "export terminated early"...). It never refuses a line itself.
 * What it accepts, exactly:
 *
 *   {"event":"<name>","properties":{...}}[ \t\r]*
 *
 * - no whitespace outside the properties object; name non-empty, no escapes, not one of the
 *   identity events ($identify, $create_alias, $merge: Python builds their Original ID Merge links);
 * - the properties object is validated as JSON (strict UTF-8, escapes, no \u surrogates,
 *   nesting <= MAX_DEPTH, numbers only of a form orjson is known to accept: <= 18 integer digits,
 *   <= 2 exponent digits), then copied as raw bytes, as the Python path slices it;
 * - top-level property keys without escapes (an escaped key could alias a key we read), and none
 *   of the keys we read given twice (orjson keeps the last; raw bytes keep both);
 * - time: a canonical JSON integer of <= 18 digits, not -0;
 * - distinct_id, $device_id, $user_id, $insert_id, $distinct_id_before_identity: a string without
 *   escapes (so its JSON token is what orjson.dumps writes for it), or null / absent;
 * - mp_processing_time_ms: any valid value; an integer in [0, 2^64) is kept, anything else is 0.
 *
 * Window bounds come as integers: for an integer time t and a real bound s, s <= t <=> ceil(s) <= t,
 * so comparisons against ceil'ed bounds are exact (block_worker computes them).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define XXH_INLINE_ALL
#include "vendor/xxhash/xxhash.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define MAX_DEPTH 128
#define MAX_INT_DIGITS 18
#define MAX_FRAC_DIGITS 64
#define MAX_EXP_DIGITS 2

typedef unsigned char u8;

/* ------------------------------------------------------------------ JSON validation */

/* A value that scan() cannot vouch for: the caller hands the line to Python. */
#define FAIL NULL

static inline const u8 *skip_ws(const u8 *p, const u8 *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r')) p++;
    return p;
}

static inline int hexval(u8 c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* One UTF-8 sequence starting at p (p[0] >= 0x80), well-formed per Unicode table 3-7:
 * no overlongs, no surrogates, nothing above U+10FFFF. Returns the next position or FAIL. */
static inline const u8 *utf8_seq(const u8 *p, const u8 *end) {
    u8 c = p[0];
    if (c >= 0xC2 && c <= 0xDF) {
        if (end - p < 2 || (p[1] & 0xC0) != 0x80) return FAIL;
        return p + 2;
    }
    if (c >= 0xE0 && c <= 0xEF) {
        if (end - p < 3) return FAIL;
        u8 lo = 0x80, hi = 0xBF;
        if (c == 0xE0) lo = 0xA0;
        else if (c == 0xED) hi = 0x9F;
        if (p[1] < lo || p[1] > hi || (p[2] & 0xC0) != 0x80) return FAIL;
        return p + 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (end - p < 4) return FAIL;
        u8 lo = 0x80, hi = 0xBF;
        if (c == 0xF0) lo = 0x90;
        else if (c == 0xF4) hi = 0x8F;
        if (p[1] < lo || p[1] > hi || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80) return FAIL;
        return p + 4;
    }
    return FAIL;
}

/* The body of a string, p just after its opening quote. Returns the position after the closing
 * quote, or FAIL; *escaped tells whether it held any backslash escape. */
static const u8 *scan_string(const u8 *p, const u8 *end, int *escaped) {
    int esc = 0;
    for (;;) {
#if defined(__SSE2__)
        const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\'), space = _mm_set1_epi8(0x20);
        while (end - p >= 16) {
            __m128i v = _mm_loadu_si128((const __m128i *)p);
            /* signed compare: bytes < 0x20 and bytes >= 0x80 (negative) both stand out */
            __m128i special = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)),
                                           _mm_cmplt_epi8(v, space));
            int mask = _mm_movemask_epi8(special);
            if (mask) {
                p += __builtin_ctz(mask);
                break;
            }
            p += 16;
        }
#endif
        if (p >= end) return FAIL;
        u8 c = *p;
        if (c == '"') {
            *escaped = esc;
            return p + 1;
        }
        if (c == '\\') {
            esc = 1;
            if (end - p < 2) return FAIL;
            u8 e = p[1];
            if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' || e == 'r' || e == 't') {
                p += 2;
            } else if (e == 'u') {
                if (end - p < 6) return FAIL;
                int h0 = hexval(p[2]), h1 = hexval(p[3]), h2 = hexval(p[4]), h3 = hexval(p[5]);
                if ((h0 | h1 | h2 | h3) < 0) return FAIL;
                int cp = (h0 << 12) | (h1 << 8) | (h2 << 4) | h3;
                if (cp >= 0xD800 && cp <= 0xDFFF) return FAIL; /* pairs and lone halves: Python decides */
                p += 6;
            } else {
                return FAIL;
            }
        } else if (c < 0x20) {
            return FAIL;
        } else if (c >= 0x80) {
            p = utf8_seq(p, end);
            if (p == FAIL) return FAIL;
        } else {
            p++;
        }
    }
}

typedef struct {
    int is_int;      /* no fraction, no exponent */
    int negative;
    int digits;      /* integer digits */
    uint64_t value;  /* the integer's magnitude when is_int */
} number_t;

/* A JSON number of a form orjson is known to accept (see the header); FAIL otherwise. */
static inline const u8 *scan_number(const u8 *p, const u8 *end, number_t *num) {
    num->negative = 0;
    num->is_int = 1;
    if (p < end && *p == '-') {
        num->negative = 1;
        p++;
    }
    if (p >= end) return FAIL;
    uint64_t value = 0;
    int digits = 0;
    if (*p == '0') {
        p++;
        digits = 1;
        if (p < end && *p >= '0' && *p <= '9') return FAIL;
    } else if (*p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9') {
            if (++digits > MAX_INT_DIGITS) return FAIL;
            value = value * 10 + (uint64_t)(*p - '0');
            p++;
        }
    } else {
        return FAIL;
    }
    if (p < end && *p == '.') {
        num->is_int = 0;
        p++;
        int frac = 0;
        while (p < end && *p >= '0' && *p <= '9') {
            if (++frac > MAX_FRAC_DIGITS) return FAIL;
            p++;
        }
        if (frac == 0) return FAIL;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        num->is_int = 0;
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        int exp = 0;
        while (p < end && *p >= '0' && *p <= '9') {
            if (++exp > MAX_EXP_DIGITS) return FAIL;
            p++;
        }
        if (exp == 0) return FAIL;
    }
    num->digits = digits;
    num->value = value;
    return p;
}

static inline const u8 *scan_literal(const u8 *p, const u8 *end, const char *word, Py_ssize_t n) {
    if (end - p < n || memcmp(p, word, (size_t)n) != 0) return FAIL;
    return p + n;
}

static const u8 *scan_value(const u8 *p, const u8 *end, int depth);

/* An object or array body, p just after '{' or '['. */
static const u8 *scan_container(const u8 *p, const u8 *end, int depth, u8 close) {
    if (depth > MAX_DEPTH) return FAIL;
    p = skip_ws(p, end);
    if (p < end && *p == close) return p + 1;
    for (;;) {
        if (close == '}') {
            int escaped;
            if (p >= end || *p != '"') return FAIL;
            p = scan_string(p + 1, end, &escaped);
            if (p == FAIL) return FAIL;
            p = skip_ws(p, end);
            if (p >= end || *p != ':') return FAIL;
            p = skip_ws(p + 1, end);
        }
        p = scan_value(p, end, depth);
        if (p == FAIL) return FAIL;
        p = skip_ws(p, end);
        if (p >= end) return FAIL;
        if (*p == close) return p + 1;
        if (*p != ',') return FAIL;
        p = skip_ws(p + 1, end);
    }
}

static const u8 *scan_value(const u8 *p, const u8 *end, int depth) {
    if (p >= end) return FAIL;
    int escaped;
    number_t num;
    switch (*p) {
    case '"': return scan_string(p + 1, end, &escaped);
    case '{': return scan_container(p + 1, end, depth + 1, '}');
    case '[': return scan_container(p + 1, end, depth + 1, ']');
    case 't': return scan_literal(p, end, "true", 4);
    case 'f': return scan_literal(p, end, "false", 5);
    case 'n': return scan_literal(p, end, "null", 4);
    default:
        if (*p == '-' || (*p >= '0' && *p <= '9')) return scan_number(p, end, &num);
        return FAIL;
    }
}

/* ------------------------------------------------------------------ one line */

typedef struct {
    const u8 *ptr; /* the JSON token (strings: with their quotes), NULL when absent or null */
    Py_ssize_t len;
} span_t;

enum { K_TIME, K_DISTINCT, K_DEVICE, K_USER, K_INSERT, K_PROC, K_BEFORE, N_KEYS };

typedef struct {
    span_t name;        /* the event name's token, with quotes */
    span_t props;       /* the properties object, raw */
    span_t ids[N_KEYS]; /* tokens of the keys we read (K_TIME: the integer; K_PROC unused) */
    int64_t time;
    uint64_t proc;
} line_t;

static int key_index(const u8 *k, Py_ssize_t n) {
    switch (n) {
    case 4: return memcmp(k, "time", 4) == 0 ? K_TIME : -1;
    case 8: return memcmp(k, "$user_id", 8) == 0 ? K_USER : -1;
    case 10:
        if (memcmp(k, "$device_id", 10) == 0) return K_DEVICE;
        if (memcmp(k, "$insert_id", 10) == 0) return K_INSERT;
        return -1;
    case 11: return memcmp(k, "distinct_id", 11) == 0 ? K_DISTINCT : -1;
    case 21: return memcmp(k, "mp_processing_time_ms", 21) == 0 ? K_PROC : -1;
    case 28: return memcmp(k, "$distinct_id_before_identity", 28) == 0 ? K_BEFORE : -1;
    default: return -1;
    }
}

static const char PREFIX[] = "{\"event\":\"";
static const char MIDDLE[] = ",\"properties\":{";
#define PREFIX_LEN ((Py_ssize_t)(sizeof(PREFIX) - 1))
#define MIDDLE_LEN ((Py_ssize_t)(sizeof(MIDDLE) - 1))

/* Parse one line [p, end) of the accepted shape into *out; 0 if Python must take it. */
static int parse_line(const u8 *p, const u8 *end, line_t *out) {
    memset(out, 0, sizeof(*out));
    if (end - p < PREFIX_LEN || memcmp(p, PREFIX, (size_t)PREFIX_LEN) != 0) return 0;
    const u8 *name_start = p + PREFIX_LEN - 1;
    int escaped;
    p = scan_string(p + PREFIX_LEN, end, &escaped);
    if (p == FAIL || escaped) return 0;
    out->name.ptr = name_start;
    out->name.len = p - name_start;
    if (out->name.len == 2) return 0; /* "" : Python refuses it */
    if ((out->name.len == 11 && memcmp(name_start, "\"$identify\"", 11) == 0) ||
        (out->name.len == 15 && memcmp(name_start, "\"$create_alias\"", 15) == 0) ||
        (out->name.len == 8 && memcmp(name_start, "\"$merge\"", 8) == 0))
        return 0;
    if (end - p < MIDDLE_LEN || memcmp(p, MIDDLE, (size_t)MIDDLE_LEN) != 0) return 0;
    const u8 *props_start = p + MIDDLE_LEN - 1;
    p = skip_ws(p + MIDDLE_LEN, end);
    unsigned seen = 0;
    if (p < end && *p == '}') {
        p++;
    } else {
        for (;;) {
            if (p >= end || *p != '"') return 0;
            const u8 *key = p + 1;
            p = scan_string(key, end, &escaped);
            if (p == FAIL || escaped) return 0;
            int k = key_index(key, p - 1 - key);
            p = skip_ws(p, end);
            if (p >= end || *p != ':') return 0;
            p = skip_ws(p + 1, end);
            if (k < 0) {
                p = scan_value(p, end, 1);
                if (p == FAIL) return 0;
            } else {
                if (seen & (1u << k)) return 0; /* a key we read, given twice */
                seen |= 1u << k;
                const u8 *v = p;
                if (p >= end) return 0;
                if (k == K_TIME) {
                    number_t num;
                    p = scan_number(p, end, &num);
                    if (p == FAIL || !num.is_int || (num.negative && num.value == 0)) return 0;
                    out->ids[K_TIME].ptr = v;
                    out->ids[K_TIME].len = p - v;
                    out->time = num.negative ? -(int64_t)num.value : (int64_t)num.value;
                } else if (k == K_PROC) {
                    if (*p == '-' || (*p >= '0' && *p <= '9')) {
                        number_t num;
                        p = scan_number(p, end, &num);
                        if (p == FAIL) return 0;
                        out->proc = (num.is_int && !num.negative) ? num.value : 0;
                    } else {
                        p = scan_value(p, end, 1);
                        if (p == FAIL) return 0;
                        out->proc = 0;
                    }
                } else if (*p == '"') {
                    p = scan_string(p + 1, end, &escaped);
                    if (p == FAIL || escaped) return 0;
                    out->ids[k].ptr = v;
                    out->ids[k].len = p - v;
                } else if (*p == 'n') {
                    p = scan_literal(p, end, "null", 4);
                    if (p == FAIL) return 0;
                } else {
                    return 0; /* a number, bool or object as an id: Python stringifies it */
                }
            }
            p = skip_ws(p, end);
            if (p >= end) return 0;
            if (*p == '}') {
                p++;
                break;
            }
            if (*p != ',') return 0;
            p = skip_ws(p + 1, end);
        }
    }
    out->props.ptr = props_start;
    out->props.len = p - props_start;
    if (p >= end || *p != '}') return 0;
    p = skip_ws(p + 1, end);
    if (p != end) return 0;
    if (!(seen & (1u << K_TIME))) return 0;
    return 1;
}

/* ------------------------------------------------------------------ RowBuffer */

/* A growable byte buffer for a window's rows that keeps its memory when cleared. A worker reuses
 * a few of them from block to block (block_worker.process_block), so rows are written into pages
 * it already has: growing a fresh 4 MB bytearray per block costs more in page faults than the
 * parsing. Python code appends with `+=`; it exports a read-only buffer (file writes, bytes()). */
typedef struct {
    PyObject_HEAD
    char *data;
    Py_ssize_t size, capacity;
    Py_ssize_t exports;
} RowBuffer;

static PyTypeObject RowBufferType;

static int rowbuffer_reserve(RowBuffer *self, Py_ssize_t extra) {
    Py_ssize_t need = self->size + extra;
    if (need <= self->capacity) return 0;
    if (self->exports) {
        PyErr_SetString(PyExc_BufferError, "RowBuffer: cannot grow while its buffer is exported");
        return -1;
    }
    Py_ssize_t capacity = self->capacity + self->capacity / 2;
    if (capacity < need) capacity = need;
    if (capacity < 65536) capacity = 65536;
    char *data = PyMem_RawRealloc(self->data, (size_t)capacity);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->data = data;
    self->capacity = capacity;
    return 0;
}

static char *rowbuffer_extend(RowBuffer *self, Py_ssize_t n) {
    if (rowbuffer_reserve(self, n) < 0) return NULL;
    char *w = self->data + self->size;
    self->size += n;
    return w;
}

static void rowbuffer_dealloc(RowBuffer *self) {
    PyMem_RawFree(self->data);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Py_ssize_t rowbuffer_length(RowBuffer *self) { return self->size; }

static PyObject *rowbuffer_inplace_concat(RowBuffer *self, PyObject *other) {
    Py_buffer view;
    if (PyObject_GetBuffer(other, &view, PyBUF_SIMPLE) < 0) return NULL;
    char *w = rowbuffer_extend(self, view.len);
    if (w != NULL) memcpy(w, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    if (w == NULL) return NULL;
    return Py_NewRef(self);
}

static int rowbuffer_getbuffer(RowBuffer *self, Py_buffer *view, int flags) {
    if (PyBuffer_FillInfo(view, (PyObject *)self, self->data ? self->data : "", self->size, 1, flags) < 0) return -1;
    self->exports++;
    return 0;
}

static void rowbuffer_releasebuffer(RowBuffer *self, Py_buffer *view) { self->exports--; }

static PyObject *rowbuffer_clear(RowBuffer *self, PyObject *unused) {
    if (self->exports) {
        PyErr_SetString(PyExc_BufferError, "RowBuffer: cannot clear while its buffer is exported");
        return NULL;
    }
    self->size = 0;
    Py_RETURN_NONE;
}

static PyObject *rowbuffer_capacity(RowBuffer *self, void *closure) { return PyLong_FromSsize_t(self->capacity); }

static PySequenceMethods rowbuffer_as_sequence = {
    .sq_length = (lenfunc)rowbuffer_length,
    .sq_inplace_concat = (binaryfunc)rowbuffer_inplace_concat,
};

static PyBufferProcs rowbuffer_as_buffer = {
    .bf_getbuffer = (getbufferproc)rowbuffer_getbuffer,
    .bf_releasebuffer = (releasebufferproc)rowbuffer_releasebuffer,
};

static PyMethodDef rowbuffer_methods[] = {
    {"clear", (PyCFunction)rowbuffer_clear, METH_NOARGS, "Empty it, keeping its memory for the next block."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef rowbuffer_getset[] = {
    {"capacity", (getter)rowbuffer_capacity, NULL, "bytes of memory held", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RowBufferType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mixpanel_assets._fastrows.RowBuffer",
    .tp_basicsize = sizeof(RowBuffer),
    .tp_dealloc = (destructor)rowbuffer_dealloc,
    .tp_as_sequence = &rowbuffer_as_sequence,
    .tp_as_buffer = &rowbuffer_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A window's rows: append with +=, read through the buffer protocol, clear() keeps the memory.",
    .tp_methods = rowbuffer_methods,
    .tp_getset = rowbuffer_getset,
    .tp_new = PyType_GenericNew,
};

/* buffers[w], taking a RowBuffer from `pool` (or a new one) the first time window w gets a row. */
static RowBuffer *window_buffer(PyObject *buffers, Py_ssize_t w, PyObject *pool) {
    PyObject *b = PyList_GET_ITEM(buffers, w);
    if (b != Py_None) return (RowBuffer *)b;
    Py_ssize_t n = PyList_GET_SIZE(pool);
    if (n > 0) {
        b = Py_NewRef(PyList_GET_ITEM(pool, n - 1));
        if (PyList_SetSlice(pool, n - 1, n, NULL) < 0) {
            Py_DECREF(b);
            return NULL;
        }
    } else {
        b = PyType_GenericNew(&RowBufferType, NULL, NULL);
        if (b == NULL) return NULL;
    }
    PyList_SetItem(buffers, w, b); /* steals the reference; the list keeps it alive */
    return (RowBuffer *)b;
}

/* ------------------------------------------------------------------ output */

static int append(PyObject *bytearray, const void *data, Py_ssize_t n) {
    Py_ssize_t size = PyByteArray_GET_SIZE(bytearray);
    if (PyByteArray_Resize(bytearray, size + n) < 0) return -1;
    memcpy(PyByteArray_AS_STRING(bytearray) + size, data, (size_t)n);
    return 0;
}

#define PUT(lit) (memcpy(w, lit, sizeof(lit) - 1), w += sizeof(lit) - 1)
#define PUT_SPAN(s) ((s).ptr ? (memcpy(w, (s).ptr, (size_t)(s).len), w += (s).len) : (memcpy(w, "null", 4), w += 4))
#define SPAN_LEN(s) ((s).ptr ? (s).len : 4)

static int append_row(RowBuffer *buffer, const line_t *ln) {
    Py_ssize_t n = 13 + SPAN_LEN(ln->ids[K_DEVICE]) + 15 + SPAN_LEN(ln->ids[K_DISTINCT]) + 14 + ln->name.len + 13 +
                   SPAN_LEN(ln->ids[K_INSERT]) + 14 + ln->props.len + 8 + ln->ids[K_TIME].len + 11 +
                   SPAN_LEN(ln->ids[K_USER]) + 2;
    char *w = rowbuffer_extend(buffer, n);
    if (w == NULL) return -1;
    PUT("{\"device_id\":");
    PUT_SPAN(ln->ids[K_DEVICE]);
    PUT(",\"distinct_id\":");
    PUT_SPAN(ln->ids[K_DISTINCT]);
    PUT(",\"event_name\":");
    PUT_SPAN(ln->name);
    PUT(",\"insert_id\":");
    PUT_SPAN(ln->ids[K_INSERT]);
    PUT(",\"properties\":");
    PUT_SPAN(ln->props);
    PUT(",\"time\":");
    PUT_SPAN(ln->ids[K_TIME]);
    PUT(",\"user_id\":");
    PUT_SPAN(ln->ids[K_USER]);
    PUT("}\n");
    return 0;
}

/* xxh3-128 of orjson.dumps((name, distinct_id, time, insert_id)), canonical (big-endian). */
static int append_digest(PyObject *hashes, const line_t *ln) {
    char stack[512];
    Py_ssize_t n = 1 + ln->name.len + 1 + SPAN_LEN(ln->ids[K_DISTINCT]) + 1 + ln->ids[K_TIME].len + 1 +
                   SPAN_LEN(ln->ids[K_INSERT]) + 1;
    char *buf = n <= (Py_ssize_t)sizeof(stack) ? stack : PyMem_Malloc((size_t)n);
    if (buf == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    char *w = buf;
    PUT("[");
    PUT_SPAN(ln->name);
    PUT(",");
    PUT_SPAN(ln->ids[K_DISTINCT]);
    PUT(",");
    PUT_SPAN(ln->ids[K_TIME]);
    PUT(",");
    PUT_SPAN(ln->ids[K_INSERT]);
    PUT("]");
    XXH128_canonical_t canonical;
    XXH128_canonicalFromHash(&canonical, XXH3_128bits(buf, (size_t)n));
    if (buf != stack) PyMem_Free(buf);
    return append(hashes, canonical.digest, 16);
}

/* A string's text (token without its quotes; validated UTF-8 without escapes) as a str. */
static PyObject *token_str(const char *prefix, Py_ssize_t prefix_len, span_t s) {
    Py_ssize_t n = s.len - 2;
    if (prefix_len == 0) return PyUnicode_DecodeUTF8((const char *)s.ptr + 1, n, "strict");
    char stack[256];
    char *buf = prefix_len + n <= (Py_ssize_t)sizeof(stack) ? stack : PyMem_Malloc((size_t)(prefix_len + n));
    if (buf == NULL) return PyErr_NoMemory();
    memcpy(buf, prefix, (size_t)prefix_len);
    memcpy(buf + prefix_len, s.ptr + 1, (size_t)n);
    PyObject *result = PyUnicode_DecodeUTF8(buf, prefix_len + n, "strict");
    if (buf != stack) PyMem_Free(buf);
    return result;
}

static PyObject *KIND_DEVICE_USER, *KIND_REKEY;

/* links[(kind, a, b)] = min(links.get(...), time), as block_worker does for Python lines. */
static int add_link(PyObject *links, PyObject *kind, PyObject *a, PyObject *b, PyObject *time) {
    if (a == NULL || b == NULL) return -1;
    PyObject *key = PyTuple_Pack(3, kind, a, b);
    if (key == NULL) return -1;
    int rc = 0;
    PyObject *seen = PyDict_GetItemWithError(links, key);
    if (seen == NULL) {
        rc = PyErr_Occurred() ? -1 : PyDict_SetItem(links, key, time);
    } else {
        int lower = PyObject_RichCompareBool(time, seen, Py_LT);
        rc = lower < 0 ? -1 : (lower ? PyDict_SetItem(links, key, time) : 0);
    }
    Py_DECREF(key);
    return rc;
}

static int add_links(PyObject *links, const line_t *ln) {
    int want_device = ln->ids[K_DEVICE].ptr && ln->ids[K_USER].ptr;
    int want_rekey = ln->ids[K_BEFORE].ptr && ln->ids[K_DISTINCT].ptr;
    if (!want_device && !want_rekey) return 0;
    PyObject *time = PyLong_FromLongLong(ln->time);
    if (time == NULL) return -1;
    int rc = 0;
    if (want_device) {
        PyObject *a = token_str("$device:", 8, ln->ids[K_DEVICE]);
        PyObject *b = token_str(NULL, 0, ln->ids[K_USER]);
        rc = add_link(links, KIND_DEVICE_USER, a, b, time);
        Py_XDECREF(a);
        Py_XDECREF(b);
    }
    if (rc == 0 && want_rekey) {
        PyObject *a = token_str(NULL, 0, ln->ids[K_BEFORE]);
        PyObject *b = token_str(NULL, 0, ln->ids[K_DISTINCT]);
        rc = add_link(links, KIND_REKEY, a, b, time);
        Py_XDECREF(a);
        Py_XDECREF(b);
    }
    Py_DECREF(time);
    return rc;
}

/* Whether the string token's text (UTF-8 bytes) is in a set of bytes. */
static int token_in(PyObject *set, span_t s) {
    PyObject *key = PyBytes_FromStringAndSize((const char *)s.ptr + 1, s.len - 2);
    if (key == NULL) return -1;
    int rc = PySet_Contains(set, key);
    Py_DECREF(key);
    return rc;
}

/* ------------------------------------------------------------------ scan() */

static int check_list(PyObject *obj, Py_ssize_t n, const char *what, int of_bytearrays) {
    if (!PyList_CheckExact(obj) || PyList_GET_SIZE(obj) != n) {
        PyErr_Format(PyExc_TypeError, "scan(): %s must be a list of %zd items", what, n);
        return -1;
    }
    if (of_bytearrays == 2) {
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *item = PyList_GET_ITEM(obj, i);
            if (item != Py_None && !Py_IS_TYPE(item, &RowBufferType)) {
                PyErr_Format(PyExc_TypeError, "scan(): %s must hold RowBuffers or None", what);
                return -1;
            }
        }
    } else if (of_bytearrays) {
        for (Py_ssize_t i = 0; i < n; i++) {
            if (!PyByteArray_CheckExact(PyList_GET_ITEM(obj, i))) {
                PyErr_Format(PyExc_TypeError, "scan(): %s must hold bytearrays", what);
                return -1;
            }
        }
    } else {
        for (Py_ssize_t i = 0; i < n; i++) {
            if (!PyDict_CheckExact(PyList_GET_ITEM(obj, i))) {
                PyErr_Format(PyExc_TypeError, "scan(): %s must hold dicts", what);
                return -1;
            }
        }
    }
    return 0;
}

PyDoc_STRVAR(scan_doc,
"scan(block, pos, index, starts, ends, buffers, hashes, procs, no_dedup, links, events_filter,\n"
"     suppressed, suppress_none, pool) -> (pos, index, fallback_start, fallback_end, lines, outside, suppressed)\n"
"\n"
"Process the lines of `block` from byte offset `pos` (line number `index` in the block) until a\n"
"line the compiled path leaves to Python, or the end. `starts`/`ends` are the windows' bounds as\n"
"native int64 bytes (ceil'ed); per window: `buffers` (rows: a RowBuffer, or None until the window\n"
"gets a row, then one from the list `pool` or a new one), `hashes` (16-byte digests), `procs`\n"
"(native uint64), `no_dedup` (native uint32 row indexes) are bytearrays appended to, `links` dicts\n"
"(or None) get (kind, a, b) -> earliest time. `events_filter`/`suppressed`: frozensets of UTF-8\n"
"bytes or None. Returns where it stopped: the next `pos` and `index` to resume from and the\n"
"fallback line's [start, end) (-1, -1 at the end of the block); counts are of the lines it did.");

static PyObject *scan(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 14) {
        PyErr_SetString(PyExc_TypeError, "scan() takes 14 arguments");
        return NULL;
    }
    PyObject *pool = args[13];
    if (!PyList_CheckExact(pool)) {
        PyErr_SetString(PyExc_TypeError, "scan(): pool must be a list");
        return NULL;
    }
    PyObject *links = args[9], *events_filter = args[10], *suppressed_set = args[11];
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    Py_ssize_t index = PyLong_AsSsize_t(args[2]);
    int suppress_none = PyObject_IsTrue(args[12]);
    if ((pos == -1 || index == -1 || suppress_none < 0) && PyErr_Occurred()) return NULL;
    if (events_filter != Py_None && !PyFrozenSet_CheckExact(events_filter)) {
        PyErr_SetString(PyExc_TypeError, "scan(): events_filter must be a frozenset or None");
        return NULL;
    }
    if (suppressed_set != Py_None && !PyFrozenSet_CheckExact(suppressed_set)) {
        PyErr_SetString(PyExc_TypeError, "scan(): suppressed must be a frozenset or None");
        return NULL;
    }
    Py_buffer block, starts_buf, ends_buf;
    if (PyObject_GetBuffer(args[0], &block, PyBUF_SIMPLE) < 0) return NULL;
    if (PyObject_GetBuffer(args[3], &starts_buf, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&block);
        return NULL;
    }
    if (PyObject_GetBuffer(args[4], &ends_buf, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&block);
        PyBuffer_Release(&starts_buf);
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t n_windows = starts_buf.len / 8;
    const int64_t *starts = starts_buf.buf, *ends = ends_buf.buf;
    long long lines = 0, outside = 0, suppressed = 0;
    Py_ssize_t fb_start = -1, fb_end = -1;
    if (n_windows < 1 || starts_buf.len != n_windows * 8 || ends_buf.len != starts_buf.len ||
        pos < 0 || pos > block.len) {
        PyErr_SetString(PyExc_ValueError, "scan(): bad window bounds or position");
        goto done;
    }
    if (check_list(args[5], n_windows, "buffers", 2) || check_list(args[6], n_windows, "hashes", 1) ||
        check_list(args[7], n_windows, "procs", 1) || check_list(args[8], n_windows, "no_dedup", 1) ||
        (links != Py_None && check_list(links, n_windows, "links", 0)))
        goto done;
    const u8 *data = block.buf, *block_end = data + block.len;
    while (pos < block.len) {
        const u8 *start = data + pos;
        const u8 *nl = memchr(start, '\n', (size_t)(block_end - start));
        const u8 *line_end = nl ? nl : block_end;
        Py_ssize_t next = nl ? (nl - data) + 1 : block.len;
        if (line_end == start) { /* an empty line: skipped, not counted */
            pos = next;
            index++;
            continue;
        }
        line_t ln;
        if (!parse_line(start, line_end, &ln)) {
            fb_start = start - data;
            fb_end = line_end - data;
            pos = next;
            break;
        }
        pos = next;
        index++;
        lines++;
        if (events_filter != Py_None) {
            int in = token_in(events_filter, ln.name);
            if (in < 0) goto done;
            if (!in) {
                outside++;
                continue;
            }
        }
        /* bisect_right(starts, time) - 1, then time < ends[w] */
        Py_ssize_t lo = 0, hi = n_windows;
        while (lo < hi) {
            Py_ssize_t mid = (lo + hi) / 2;
            if (ln.time < starts[mid]) hi = mid;
            else lo = mid + 1;
        }
        Py_ssize_t w = lo - 1;
        if (w < 0 || ln.time >= ends[w]) {
            outside++;
            continue;
        }
        if (suppressed_set != Py_None) {
            int in = ln.ids[K_DISTINCT].ptr ? token_in(suppressed_set, ln.ids[K_DISTINCT]) : suppress_none;
            if (in < 0) goto done;
            if (in) {
                suppressed++;
                continue;
            }
        }
        PyObject *hashes = PyList_GET_ITEM(args[6], w);
        if (!ln.ids[K_INSERT].ptr) {
            uint32_t row = (uint32_t)(PyByteArray_GET_SIZE(hashes) / 16);
            if (append(PyList_GET_ITEM(args[8], w), &row, 4) < 0) goto done;
        }
        RowBuffer *rows = window_buffer(args[5], w, pool);
        if (rows == NULL || append_row(rows, &ln) < 0 || append_digest(hashes, &ln) < 0 ||
            append(PyList_GET_ITEM(args[7], w), &ln.proc, 8) < 0)
            goto done;
        if (links != Py_None && add_links(PyList_GET_ITEM(links, w), &ln) < 0) goto done;
    }
    result = Py_BuildValue("nnnnLLL", pos, index, fb_start, fb_end, lines, outside, suppressed);
done:
    PyBuffer_Release(&block);
    PyBuffer_Release(&starts_buf);
    PyBuffer_Release(&ends_buf);
    return result;
}

PyDoc_STRVAR(accepts_doc,
"accepts(line) -> bool\n\nWhether scan() would take this line (without its newline) itself; for tests.");

static PyObject *accepts(PyObject *module, PyObject *arg) {
    Py_buffer line;
    if (PyObject_GetBuffer(arg, &line, PyBUF_SIMPLE) < 0) return NULL;
    line_t ln;
    const u8 *p = line.buf;
    int ok = memchr(p, '\n', (size_t)line.len) == NULL && line.len > 0 && parse_line(p, p + line.len, &ln);
    PyBuffer_Release(&line);
    return PyBool_FromLong(ok);
}

PyDoc_STRVAR(filter_lines_doc,
"filter_lines(data, drop) -> (bytes, rows)\n\n"
"`data` (bytes-like) minus its newline-terminated lines whose indexes are in `drop` (native uint32, sorted\n"
"ascending, or None; indexes past the last line are ignored), and the number of lines kept.\n"
"What block_worker.filtered_lines does with bytes.count and bytes.find, at memchr speed.");

static PyObject *filter_lines(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "filter_lines(data, drop)");
        return NULL;
    }
    PyObject *data_obj = args[0];
    Py_buffer data_buf;
    if (PyObject_GetBuffer(data_obj, &data_buf, PyBUF_SIMPLE) < 0) return NULL;
    const char *data = data_buf.buf, *end = data + data_buf.len;
    Py_ssize_t total = 0;
    for (const char *p = data; (p = memchr(p, '\n', (size_t)(end - p))) != NULL; p++) total++;
    Py_buffer drop = {0};
    Py_ssize_t n_drop = 0;
    if (args[1] != Py_None) {
        if (PyObject_GetBuffer(args[1], &drop, PyBUF_SIMPLE) < 0) {
            PyBuffer_Release(&data_buf);
            return NULL;
        }
        if (drop.len % 4) {
            PyBuffer_Release(&data_buf);
            PyBuffer_Release(&drop);
            PyErr_SetString(PyExc_ValueError, "filter_lines(): drop must hold uint32 values");
            return NULL;
        }
        n_drop = drop.len / 4;
    }
    const uint32_t *rows = drop.buf;
    Py_ssize_t dropped = 0;
    for (Py_ssize_t i = 0; i < n_drop; i++) {
        if (i && rows[i] <= rows[i - 1]) {
            PyBuffer_Release(&data_buf);
            PyBuffer_Release(&drop);
            PyErr_SetString(PyExc_ValueError, "filter_lines(): drop must be sorted and unique");
            return NULL;
        }
        if ((Py_ssize_t)rows[i] < total) dropped++;
    }
    PyObject *out = NULL;
    if (args[1] != Py_None && dropped == total) {
        out = PyBytes_FromStringAndSize(NULL, 0); /* every line dropped: nothing left, as the reference */
    } else if (dropped == 0) {
        /* the same bytes object, or a copy of any other buffer (a RowBuffer is reused after this) */
        out = PyBytes_CheckExact(data_obj) ? Py_NewRef(data_obj) : PyBytes_FromStringAndSize(data, data_buf.len);
    } else {
        out = PyBytes_FromStringAndSize(NULL, data_buf.len);
        if (out != NULL) {
            char *w = PyBytes_AS_STRING(out);
            const char *p = data; /* start of line `row` */
            Py_ssize_t row = 0;
            for (Py_ssize_t i = 0; i < n_drop && (Py_ssize_t)rows[i] < total; i++) {
                const char *keep_from = p;
                while (row < (Py_ssize_t)rows[i]) {
                    p = (const char *)memchr(p, '\n', (size_t)(end - p)) + 1;
                    row++;
                }
                memcpy(w, keep_from, (size_t)(p - keep_from));
                w += p - keep_from;
                p = (const char *)memchr(p, '\n', (size_t)(end - p)) + 1; /* skip the dropped line */
                row++;
            }
            memcpy(w, p, (size_t)(end - p));
            w += end - p;
            if (_PyBytes_Resize(&out, w - PyBytes_AS_STRING(out)) < 0) out = NULL;
        }
    }
    if (args[1] != Py_None) PyBuffer_Release(&drop);
    PyBuffer_Release(&data_buf);
    if (out == NULL) return NULL;
    PyObject *result = Py_BuildValue("Nn", out, total - dropped);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL, scan_doc},
    {"accepts", accepts, METH_O, accepts_doc},
    {"filter_lines", (PyCFunction)(void (*)(void))filter_lines, METH_FASTCALL, filter_lines_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_fastrows",
    "Compiled line -> row path of block_worker.process_block (see _fastrows.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__fastrows(void) {
    KIND_DEVICE_USER = PyUnicode_InternFromString("device_user");
    KIND_REKEY = PyUnicode_InternFromString("rekey");
    if (KIND_DEVICE_USER == NULL || KIND_REKEY == NULL) return NULL;
    if (PyType_Ready(&RowBufferType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "RowBuffer", (PyObject *)&RowBufferType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "MAX_DEPTH", MAX_DEPTH) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
