/* Exact CPU kernels for rfpipe: Pillow's fixed-point BILINEAR passes and the uint8 -> float32
 * normalisation lookup, writing NCHW directly.
 *
 * The tables (first tap, tap count, 22-bit weights) come from pillow_tables.py, built exactly as
 * Pillow's Resample.c builds them; these loops only apply them. Each pass accumulates
 * sum(weight * pixel) + ROUNDING_BIAS in int32, shifts right by PRECISION_BITS and clamps to
 * 0..255, as Pillow's passes do, so the bytes match Pillow's for the same pass order.
 *
 * Every function works on a band of output rows [row_begin, row_end) and releases the GIL, so the
 * Python side splits an image into bands across threads. Sources are HWC uint8 with pixels
 * contiguous inside a row and any (even negative) row stride; outputs are either a contiguous
 * uint8 HWC buffer or float32 planes (C, H, W) written through a [3, 256] lookup table.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PRECISION_BITS 22                          /* Pillow: 32 - 8 - 2 */
#define ROUNDING_BIAS (1 << (PRECISION_BITS - 1))  /* added before the shift */
#define LUT_LEVELS 256
#define OUT_PLANES 3

static inline uint8_t clip8(int32_t acc) {
    int32_t v = acc >> PRECISION_BITS; /* arithmetic shift, as in Pillow */
    return (uint8_t)(v < 0 ? 0 : (v > 255 ? 255 : v));
}

/* Where a pass writes: a uint8 HWC buffer, or float planes through the lookup table. */
typedef struct {
    uint8_t *u8;           /* contiguous [rows, width, channels] when not NULL */
    float *planes[OUT_PLANES];
    const float *lut;      /* [3, 256], row = network channel */
    int plane_of[OUT_PLANES]; /* network channel fed by source channel c (1-channel: all three) */
    Py_ssize_t plane_stride;  /* floats per output row */
} Sink;

static inline void sink_row(const Sink *s, Py_ssize_t y, const uint8_t *vals, Py_ssize_t width, int channels) {
    if (s->u8) {
        memcpy(s->u8 + y * width * channels, vals, (size_t)(width * channels));
        return;
    }
    if (channels == 1) {
        for (int n = 0; n < OUT_PLANES; n++) {
            float *dst = s->planes[n] + y * s->plane_stride;
            const float *lut = s->lut + n * LUT_LEVELS;
            for (Py_ssize_t x = 0; x < width; x++) dst[x] = lut[vals[x]];
        }
        return;
    }
    float *d0 = s->planes[s->plane_of[0]] + y * s->plane_stride;
    float *d1 = s->planes[s->plane_of[1]] + y * s->plane_stride;
    float *d2 = s->planes[s->plane_of[2]] + y * s->plane_stride;
    const float *l0 = s->lut + s->plane_of[0] * LUT_LEVELS;
    const float *l1 = s->lut + s->plane_of[1] * LUT_LEVELS;
    const float *l2 = s->lut + s->plane_of[2] * LUT_LEVELS;
    for (Py_ssize_t x = 0; x < width; x++) {
        d0[x] = l0[vals[3 * x]];
        d1[x] = l1[vals[3 * x + 1]];
        d2[x] = l2[vals[3 * x + 2]];
    }
}

/* Wider vector units where the CPU has them (integer results are identical on every path). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define MULTIVERSION
#endif

/* Horizontal pass over output rows [row_begin, row_end): out[y] reads source row y + src_row0. */
MULTIVERSION static void horizontal(const uint8_t *src, Py_ssize_t src_stride, Py_ssize_t src_row0, int channels,
                       const int32_t *first, const int32_t *count, const int32_t *weights, int ksize,
                       Py_ssize_t out_width, const Sink *sink, Py_ssize_t row_begin, Py_ssize_t row_end,
                       uint8_t *rowbuf) {
    for (Py_ssize_t y = row_begin; y < row_end; y++) {
        const uint8_t *line = src + (y + src_row0) * src_stride;
        if (channels == 3) {
            for (Py_ssize_t x = 0; x < out_width; x++) {
                const uint8_t *p = line + (Py_ssize_t)first[x] * 3;
                const int32_t *w = weights + x * ksize;
                int32_t a0 = ROUNDING_BIAS, a1 = ROUNDING_BIAS, a2 = ROUNDING_BIAS;
                for (int k = 0; k < count[x]; k++, p += 3) {
                    a0 += p[0] * w[k];
                    a1 += p[1] * w[k];
                    a2 += p[2] * w[k];
                }
                rowbuf[3 * x] = clip8(a0);
                rowbuf[3 * x + 1] = clip8(a1);
                rowbuf[3 * x + 2] = clip8(a2);
            }
        } else {
            for (Py_ssize_t x = 0; x < out_width; x++) {
                const uint8_t *p = line + first[x];
                const int32_t *w = weights + x * ksize;
                int32_t a = ROUNDING_BIAS;
                for (int k = 0; k < count[x]; k++) a += p[k] * w[k];
                rowbuf[x] = clip8(a);
            }
        }
        sink_row(sink, y, rowbuf, out_width, channels);
    }
}

/* Vertical pass over output rows [row_begin, row_end): whole rows at a time, so the inner loop runs
 * over contiguous values and vectorises. */
MULTIVERSION static void vertical(const uint8_t *src, Py_ssize_t src_stride, int channels, Py_ssize_t width,
                     const int32_t *first, const int32_t *count, const int32_t *weights, int ksize,
                     const Sink *sink, Py_ssize_t row_begin, Py_ssize_t row_end, int32_t *restrict acc,
                     uint8_t *restrict rowbuf) {
    Py_ssize_t n = width * channels;
    for (Py_ssize_t y = row_begin; y < row_end; y++) {
        const int32_t *w = weights + y * ksize;
        for (Py_ssize_t i = 0; i < n; i++) acc[i] = ROUNDING_BIAS;
        for (int k = 0; k < count[y]; k++) {
            const uint8_t *restrict line = src + ((Py_ssize_t)first[y] + k) * src_stride;
            const int32_t wk = w[k];
            for (Py_ssize_t i = 0; i < n; i++) acc[i] += line[i] * wk;
        }
        for (Py_ssize_t i = 0; i < n; i++) rowbuf[i] = clip8(acc[i]);
        sink_row(sink, y, rowbuf, width, channels);
    }
}

/* ---- argument handling -------------------------------------------------------------------- */

typedef struct {
    Py_buffer view;
    int held;
} Buf;

static void release(Buf *b) {
    if (b->held) PyBuffer_Release(&b->view);
    b->held = 0;
}

static int get_buf(PyObject *obj, Buf *b, int flags, const char *name) {
    if (obj == Py_None) {
        b->held = 0;
        return 0;
    }
    if (PyObject_GetBuffer(obj, &b->view, flags) < 0) {
        PyErr_Format(PyExc_TypeError, "%s: expected a buffer", name);
        return -1;
    }
    b->held = 1;
    return 0;
}

/* Source image: 3-D uint8 (rows, width, channels) with contiguous pixels inside a row. */
static int check_source(Buf *b, int *channels, Py_ssize_t *rows, Py_ssize_t *width, Py_ssize_t *stride) {
    Py_buffer *v = &b->view;
    if (v->ndim != 3 || v->itemsize != 1 || (v->shape[2] != 1 && v->shape[2] != 3)) {
        PyErr_SetString(PyExc_ValueError, "source must be uint8 (rows, width, 1 or 3)");
        return -1;
    }
    if (v->strides[2] != 1 || v->strides[1] != v->shape[2]) {
        PyErr_SetString(PyExc_ValueError, "source pixels must be contiguous within a row");
        return -1;
    }
    *channels = (int)v->shape[2];
    *rows = v->shape[0];
    *width = v->shape[1];
    *stride = v->strides[0];
    return 0;
}

/* Output: uint8 contiguous (rows, width, channels) or float32 contiguous (3, rows, width) + lut. */
static int make_sink(Buf *out, Buf *lut, PyObject *plane_of, int channels, Py_ssize_t rows, Py_ssize_t width,
                     Sink *sink) {
    memset(sink, 0, sizeof(*sink));
    Py_buffer *o = &out->view;
    if (!lut->held) {
        if (o->ndim != 3 || o->itemsize != 1 || o->shape[0] != rows || o->shape[1] != width ||
            o->shape[2] != channels || !PyBuffer_IsContiguous(o, 'C')) {
            PyErr_SetString(PyExc_ValueError, "uint8 output must be contiguous (rows, width, channels)");
            return -1;
        }
        sink->u8 = (uint8_t *)o->buf;
        return 0;
    }
    if (o->ndim != 3 || o->itemsize != 4 || o->shape[0] != OUT_PLANES || o->shape[1] != rows ||
        o->shape[2] != width || !PyBuffer_IsContiguous(o, 'C')) {
        PyErr_SetString(PyExc_ValueError, "float output must be contiguous float32 (3, rows, width)");
        return -1;
    }
    if (lut->view.len != OUT_PLANES * LUT_LEVELS * 4) {
        PyErr_SetString(PyExc_ValueError, "lut must be float32 [3, 256]");
        return -1;
    }
    float *base = (float *)o->buf;
    for (int n = 0; n < OUT_PLANES; n++) sink->planes[n] = base + n * rows * width;
    sink->lut = (const float *)lut->view.buf;
    sink->plane_stride = width;
    if (!PySequence_Check(plane_of) || PySequence_Size(plane_of) != OUT_PLANES) {
        PyErr_SetString(PyExc_ValueError, "plane_of must be a sequence of 3 channel indices");
        return -1;
    }
    for (int c = 0; c < OUT_PLANES; c++) {
        PyObject *item = PySequence_GetItem(plane_of, c);
        long value = item ? PyLong_AsLong(item) : -1;
        Py_XDECREF(item);
        if (value < 0 || value >= OUT_PLANES) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "plane_of entries must be 0, 1 or 2");
            return -1;
        }
        sink->plane_of[c] = (int)value;
    }
    return 0;
}

static int check_table(Buf *first, Buf *count, Buf *weights, Py_ssize_t out_size, int *ksize) {
    if (first->view.len != out_size * 4 || count->view.len != out_size * 4 || weights->view.ndim != 2 ||
        weights->view.shape[0] != out_size || weights->view.itemsize != 4) {
        PyErr_SetString(PyExc_ValueError, "table arrays do not match the output size");
        return -1;
    }
    *ksize = (int)weights->view.shape[1];
    return 0;
}

static const char *pass_doc =
    "resample(axis, src, out, first, count, weights, src_row0, row_begin, row_end, lut=None, plane_of=(0,1,2))\n"
    "One Pillow BILINEAR pass (axis 1 = horizontal, 0 = vertical) over output rows [row_begin, row_end).";

static PyObject *resample(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"axis", "src", "out", "first", "count", "weights", "src_row0",
                             "row_begin", "row_end", "lut", "plane_of", NULL};
    int axis;
    PyObject *src_o, *out_o, *first_o, *count_o, *weights_o, *lut_o = Py_None, *plane_of = NULL;
    Py_ssize_t src_row0, row_begin, row_end;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iOOOOOnnn|OO", kwlist, &axis, &src_o, &out_o, &first_o,
                                     &count_o, &weights_o, &src_row0, &row_begin, &row_end, &lut_o, &plane_of))
        return NULL;
    Buf src = {0}, out = {0}, first = {0}, count = {0}, weights = {0}, lut = {0};
    PyObject *result = NULL;
    Sink sink;
    int channels, ksize;
    Py_ssize_t src_rows, src_width, src_stride;
    if (get_buf(src_o, &src, PyBUF_STRIDED_RO, "src") || get_buf(out_o, &out, PyBUF_STRIDES | PyBUF_WRITABLE, "out") ||
        get_buf(first_o, &first, PyBUF_C_CONTIGUOUS, "first") || get_buf(count_o, &count, PyBUF_C_CONTIGUOUS, "count") ||
        get_buf(weights_o, &weights, PyBUF_C_CONTIGUOUS | PyBUF_ND, "weights") ||
        get_buf(lut_o, &lut, PyBUF_C_CONTIGUOUS, "lut"))
        goto done;
    if (check_source(&src, &channels, &src_rows, &src_width, &src_stride)) goto done;
    Py_ssize_t out_rows = lut.held ? out.view.shape[1] : out.view.shape[0];
    Py_ssize_t out_width = lut.held ? out.view.shape[2] : out.view.shape[1];
    PyObject *default_planes = NULL;
    if (!plane_of) plane_of = default_planes = Py_BuildValue("(iii)", 0, 1, 2);
    int bad_sink = make_sink(&out, &lut, plane_of, channels, out_rows, out_width, &sink);
    Py_XDECREF(default_planes);
    if (bad_sink) goto done;
    if (row_begin < 0 || row_end > out_rows || row_begin > row_end) {
        PyErr_SetString(PyExc_ValueError, "row band outside the output");
        goto done;
    }
    if (axis == 1) {
        if (check_table(&first, &count, &weights, out_width, &ksize)) goto done;
        if (src_row0 < 0 || src_row0 + out_rows > src_rows) {
            PyErr_SetString(PyExc_ValueError, "horizontal pass reads rows outside the source");
            goto done;
        }
    } else if (axis == 0) {
        if (check_table(&first, &count, &weights, out_rows, &ksize)) goto done;
        if (out_width != src_width) {
            PyErr_SetString(PyExc_ValueError, "vertical pass keeps the width");
            goto done;
        }
    } else {
        PyErr_SetString(PyExc_ValueError, "axis must be 0 (vertical) or 1 (horizontal)");
        goto done;
    }
    const int32_t *f = (const int32_t *)first.view.buf, *c = (const int32_t *)count.view.buf;
    const int32_t *w = (const int32_t *)weights.view.buf;
    for (Py_ssize_t i = 0; i < (axis == 1 ? out_width : out_rows); i++) {
        Py_ssize_t limit = axis == 1 ? src_width : src_rows;
        if (f[i] < 0 || c[i] < 0 || c[i] > ksize || f[i] + c[i] > limit) {
            PyErr_SetString(PyExc_ValueError, "table taps outside the source");
            goto done;
        }
    }
    uint8_t *rowbuf = malloc((size_t)(out_width * channels));
    int32_t *acc = axis == 0 ? malloc(sizeof(int32_t) * (size_t)(out_width * channels)) : NULL;
    if (!rowbuf || (axis == 0 && !acc)) {
        free(rowbuf);
        free(acc);
        PyErr_NoMemory();
        goto done;
    }
    const uint8_t *s = (const uint8_t *)src.view.buf;
    Py_BEGIN_ALLOW_THREADS
    if (axis == 1)
        horizontal(s, src_stride, src_row0, channels, f, c, w, ksize, out_width, &sink, row_begin, row_end, rowbuf);
    else
        vertical(s, src_stride, channels, src_width, f, c, w, ksize, &sink, row_begin, row_end, acc, rowbuf);
    Py_END_ALLOW_THREADS
    free(rowbuf);
    free(acc);
    result = Py_NewRef(Py_None);
done:
    release(&src);
    release(&out);
    release(&first);
    release(&count);
    release(&weights);
    release(&lut);
    return result;
}

static const char *lookup_doc =
    "lookup(src, out, lut, row_begin, row_end, plane_of=(0,1,2))\n"
    "uint8 HWC rows [row_begin, row_end) -> float32 planes through lut (no resize).";

static PyObject *lookup(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"src", "out", "lut", "row_begin", "row_end", "plane_of", NULL};
    PyObject *src_o, *out_o, *lut_o, *plane_of = NULL;
    Py_ssize_t row_begin, row_end;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOnn|O", kwlist, &src_o, &out_o, &lut_o, &row_begin, &row_end,
                                     &plane_of))
        return NULL;
    Buf src = {0}, out = {0}, lut = {0};
    PyObject *result = NULL;
    Sink sink;
    int channels;
    Py_ssize_t rows, width, stride;
    if (get_buf(src_o, &src, PyBUF_STRIDED_RO, "src") || get_buf(out_o, &out, PyBUF_STRIDES | PyBUF_WRITABLE, "out") ||
        get_buf(lut_o, &lut, PyBUF_C_CONTIGUOUS, "lut"))
        goto done;
    if (!lut.held) {
        PyErr_SetString(PyExc_ValueError, "lookup needs a lut");
        goto done;
    }
    if (check_source(&src, &channels, &rows, &width, &stride)) goto done;
    PyObject *default_planes = NULL;
    if (!plane_of) plane_of = default_planes = Py_BuildValue("(iii)", 0, 1, 2);
    int bad_sink = make_sink(&out, &lut, plane_of, channels, rows, width, &sink);
    Py_XDECREF(default_planes);
    if (bad_sink) goto done;
    if (row_begin < 0 || row_end > rows || row_begin > row_end) {
        PyErr_SetString(PyExc_ValueError, "row band outside the image");
        goto done;
    }
    const uint8_t *s = (const uint8_t *)src.view.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t y = row_begin; y < row_end; y++) sink_row(&sink, y, s + y * stride, width, channels);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    release(&src);
    release(&out);
    release(&lut);
    return result;
}

static PyMethodDef methods[] = {
    {"resample", (PyCFunction)(void (*)(void))resample, METH_VARARGS | METH_KEYWORDS, NULL},
    {"lookup", (PyCFunction)(void (*)(void))lookup, METH_VARARGS | METH_KEYWORDS, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_resample",
    "Exact CPU kernels: Pillow BILINEAR passes and the normalisation lookup (see _resample.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__resample(void) {
    methods[0].ml_doc = pass_doc;
    methods[1].ml_doc = lookup_doc;
    return PyModule_Create(&module);
}
