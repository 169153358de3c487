/* Strict base64 decoding without the GIL, for the server's request images (rfpipe.server.payloads).
 *
 * binascii.a2b_base64 holds the GIL for the whole decode (~250 us for 130 KB of base64 on the
 * 2-core CI machine), so the decode threads serialise with the event loop on it. This loop does the
 * same work with the GIL released, for canonical input only: a length that is a multiple of 4, only
 * the standard alphabet, and '=' padding only as the last one or two characters. Anything else
 * answers None, and the caller decodes with binascii (strict mode), which either accepts it the same
 * way or names the problem; so every answer equals binascii.a2b_base64(data, strict_mode=True).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define INVALID 0xFF /* not in the alphabet (padding included) */

static uint8_t VALUE[256];

static void build_table(void) {
    const char *alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int i = 0; i < 256; i++) VALUE[i] = INVALID;
    for (int i = 0; i < 64; i++) VALUE[(uint8_t)alphabet[i]] = (uint8_t)i;
}

/* Decodes `quads` full groups of 4 characters to 3 bytes each; 0 when a character is not in the alphabet. */
static int decode_quads(const uint8_t *in, Py_ssize_t quads, uint8_t *out) {
    uint8_t bad = 0;
    for (Py_ssize_t q = 0; q < quads; q++, in += 4, out += 3) {
        uint8_t a = VALUE[in[0]], b = VALUE[in[1]], c = VALUE[in[2]], d = VALUE[in[3]];
        bad |= (uint8_t)((a | b | c | d) & 0x80); /* INVALID has the top bit; values are < 64 */
        uint32_t v = ((uint32_t)a << 18) | ((uint32_t)b << 12) | ((uint32_t)c << 6) | d;
        out[0] = (uint8_t)(v >> 16);
        out[1] = (uint8_t)(v >> 8);
        out[2] = (uint8_t)v;
    }
    return !bad;
}

static PyObject *decode(PyObject *self, PyObject *arg) {
    (void)self;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    const uint8_t *in = (const uint8_t *)view.buf;
    Py_ssize_t n = view.len;
    if (n == 0 || n % 4 != 0) goto fallback;
    Py_ssize_t pad = in[n - 1] == '=' ? (in[n - 2] == '=' ? 2 : 1) : 0;
    if (pad && in[n - pad - 1] == '=') goto fallback; /* '=' before the last two characters */
    Py_ssize_t quads = n / 4 - (pad ? 1 : 0);
    /* The last group with padding: "xy==" gives 1 byte, "xyz=" 2; its characters must be in the alphabet. */
    uint8_t tail[4] = {'A', 'A', 'A', 'A'};
    if (pad) {
        for (int i = 0; i < 4 - pad; i++) tail[i] = in[n - 4 + i];
        if (VALUE[tail[0]] == INVALID || VALUE[tail[1]] == INVALID || VALUE[tail[2]] == INVALID) goto fallback;
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, quads * 3 + (pad ? 3 - pad : 0));
    if (result == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    uint8_t *out = (uint8_t *)PyBytes_AS_STRING(result);
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = decode_quads(in, quads, out);
    Py_END_ALLOW_THREADS
    if (ok && pad) {
        uint8_t last[3];
        decode_quads(tail, 1, last);
        for (int i = 0; i < 3 - pad; i++) out[quads * 3 + i] = last[i];
    }
    PyBuffer_Release(&view);
    if (!ok) {
        Py_DECREF(result);
        Py_RETURN_NONE;
    }
    return result;

fallback:
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

static PyMethodDef METHODS[] = {
    {"decode", decode, METH_O,
     "decode(data) -> bytes | None: canonical strict base64 decoded with the GIL released; None for any "
     "other input (binascii decides it)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_base64", NULL, -1, METHODS};

PyMODINIT_FUNC PyInit__base64(void) {
    build_table();
    return PyModule_Create(&MODULE);
}
