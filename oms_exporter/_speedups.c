/* C versions of two hot functions of oms_exporter/exposition.py, go_float and _render_gauges,
 * and `untrack`, which keeps the garbage collector off the encoder's big lists of lines.
 *
 * They write exactly what the Python versions in exposition.py write; tests/test_exposition.py
 * runs every encoder test with and without this module and compares the two on random values.
 * A scrape of 10,000 tasks re-renders the gauge lines of every task that moved: ~20,000 lines,
 * each a number formatted the way Go (and prometheus_client's floatToGoString) writes it.
 * In Python that was a fifth of a scrape's CPU.
 *
 * Anything off the fast paths (non-finite floats, integers beyond 2**53, other types) goes to
 * prometheus_client's floatToGoString, as the Python version does.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static PyObject *float_to_go_string; /* prometheus_client.utils.floatToGoString */

#define EXACT (1LL << 53)
#define NUM_MAX 64 /* longer than any repr of a finite float, or a 16-digit integer in Go form */

/* The Go form of digits d[0..n) with the decimal point after `point` digits (point >= 7):
 * "d.ddd" without trailing zeros (and without the point when none is left), then e+XX. */
static Py_ssize_t
go_exponent(char *out, const char *d, Py_ssize_t n, Py_ssize_t point)
{
    Py_ssize_t k = 0;
    out[k++] = d[0];
    out[k++] = '.';
    memcpy(out + k, d + 1, n - 1);
    k += n - 1;
    while (k > 0 && (out[k - 1] == '0' || out[k - 1] == '.')) /* str.rstrip("0.") */
        k--;
    return k + sprintf(out + k, "e+%02d", (int)(point - 1));
}

/* The text of v in `out` (at most NUM_MAX bytes): its length, 0 when v is off the fast
 * paths (the caller then asks floatToGoString), -1 on error. */
static Py_ssize_t
fast_number(PyObject *v, char *out)
{
    if (PyLong_CheckExact(v)) {
        int overflow;
        long long i = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (i == -1 && PyErr_Occurred())
            return -1;
        if (overflow || i <= -EXACT || i >= EXACT)
            return 0;
        if (i < 1000000)
            return sprintf(out, "%lld.0", i);
        char digits[24];
        int n = sprintf(digits, "%lld", i);
        return go_exponent(out, digits, n, n);
    }
    if (PyFloat_CheckExact(v)) {
        double x = PyFloat_AS_DOUBLE(v);
        if (!isfinite(x))
            return 0;
        /* repr(x): the shortest text that reads back as x */
        char *s = PyOS_double_to_string(x, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
        if (s == NULL)
            return -1;
        Py_ssize_t n = (Py_ssize_t)strlen(s), r;
        const char *dot = strchr(s, '.');
        Py_ssize_t point = dot == NULL ? -1 : dot - s;
        if (n >= NUM_MAX) {
            r = 0;
        }
        else if (x <= 0 || point <= 6) {
            memcpy(out, s, n);
            r = n;
        }
        else {
            /* digits without the point: s[0..point) then s[point+1..n) */
            char digits[NUM_MAX];
            memcpy(digits, s, point);
            memcpy(digits + point, s + point + 1, n - point - 1);
            r = go_exponent(out, digits, n - 1, point);
        }
        PyMem_Free(s);
        return r;
    }
    return 0;
}

/* A bytes line: prefix + ids + number + "\n"; NULL on error. */
static PyObject *
line(PyObject *prefix, PyObject *ids, PyObject *v)
{
    char buf[NUM_MAX];
    const char *num = buf;
    PyObject *slow = NULL;
    Py_ssize_t n = fast_number(v, buf);
    if (n < 0)
        return NULL;
    if (n == 0) {
        slow = PyObject_CallOneArg(float_to_go_string, v);
        if (slow == NULL)
            return NULL;
        num = PyUnicode_AsUTF8AndSize(slow, &n);
        if (num == NULL) {
            Py_DECREF(slow);
            return NULL;
        }
    }
    Py_ssize_t a = PyBytes_GET_SIZE(prefix), b = PyBytes_GET_SIZE(ids);
    PyObject *res = PyBytes_FromStringAndSize(NULL, a + b + n + 1);
    if (res != NULL) {
        char *p = PyBytes_AS_STRING(res);
        memcpy(p, PyBytes_AS_STRING(prefix), a);
        memcpy(p + a, PyBytes_AS_STRING(ids), b);
        memcpy(p + a + b, num, n);
        p[a + b + n] = '\n';
    }
    Py_XDECREF(slow);
    return res;
}

/* Whether a gauge's value is written as before: not the "changed" test of _render_gauges_py,
 * `v is not pv and (v != pv or not v and repr(v) != repr(pv))`, step by step. 1, 0, or -1 on error. */
static int
same(PyObject *a, PyObject *b)
{
    if (a == b)
        return 1;
    int ne = PyObject_RichCompareBool(a, b, Py_NE);
    if (ne != 0)
        return ne < 0 ? -1 : 0;
    int truth = PyObject_IsTrue(a);
    if (truth != 0)
        return truth; /* 1, or -1 on error */
    /* equal zeros: alike when their reprs are */
    PyObject *ra = PyObject_Repr(a);
    if (ra == NULL)
        return -1;
    PyObject *rb = PyObject_Repr(b);
    if (rb == NULL) {
        Py_DECREF(ra);
        return -1;
    }
    int r = PyUnicode_Compare(ra, rb) == 0;
    Py_DECREF(ra);
    Py_DECREF(rb);
    return PyErr_Occurred() ? -1 : r;
}

static PyObject *
go_float(PyObject *module, PyObject *v)
{
    (void)module;
    char buf[NUM_MAX];
    Py_ssize_t n = fast_number(v, buf);
    if (n < 0)
        return NULL;
    if (n == 0)
        return PyObject_CallOneArg(float_to_go_string, v);
    return PyUnicode_FromStringAndSize(buf, n);
}

PyDoc_STRVAR(go_float_doc, "go_float(v) -> str: floatToGoString(v), as exposition.go_float.");

static PyObject *
render_gauges(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "render_gauges takes 7 arguments");
        return NULL;
    }
    PyObject *out = args[0], *first = args[1], *names = args[2], *ids = args[3], *values = args[4],
             *prev = args[5], *scales = args[6];
    if (!PyDict_Check(out) || !PyLong_Check(first) || !PyTuple_Check(names) || !PyBytes_Check(ids)
        || !PyTuple_Check(values) || !(prev == Py_None || PyTuple_Check(prev)) || !PyTuple_Check(scales)) {
        PyErr_SetString(PyExc_TypeError, "render_gauges: (dict, int, tuple, bytes, tuple, tuple | None, tuple)");
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(values);
    if (PyTuple_GET_SIZE(names) != n || PyTuple_GET_SIZE(scales) != n
        || (prev != Py_None && PyTuple_GET_SIZE(prev) != n)) {
        PyErr_SetString(PyExc_ValueError, "render_gauges: tuples of different lengths");
        return NULL;
    }
    long f0 = PyLong_AsLong(first);
    if (f0 == -1 && PyErr_Occurred())
        return NULL;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *v = PyTuple_GET_ITEM(values, k), *name = PyTuple_GET_ITEM(names, k);
        PyObject *text;
        if (!PyBytes_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "render_gauges: names must be bytes");
            return NULL;
        }
        if (prev != Py_None) {
            int s = same(v, PyTuple_GET_ITEM(prev, k));
            if (s < 0)
                return NULL;
            if (s)
                continue;
            if (v == Py_None) {
                text = PyBytes_FromStringAndSize("", 0);
                goto store;
            }
        }
        else if (v == Py_None) {
            continue;
        }
        PyObject *scale = PyTuple_GET_ITEM(scales, k);
        if (scale == Py_None) {
            text = line(name, ids, v);
        }
        else {
            PyObject *scaled = PyNumber_Multiply(v, scale);
            if (scaled == NULL)
                return NULL;
            text = line(name, ids, scaled);
            Py_DECREF(scaled);
        }
    store:
        if (text == NULL)
            return NULL;
        PyObject *key = PyLong_FromLong(f0 + (long)k);
        if (key == NULL) {
            Py_DECREF(text);
            return NULL;
        }
        int err = PyDict_SetItem(out, key, text);
        Py_DECREF(key);
        Py_DECREF(text);
        if (err < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(render_gauges_doc,
             "render_gauges(out, first, names, ids, values, prev, scales) -> None: "
             "exposition._render_gauges_py, in C.");

/* Untrack each list whose items are all objects the cyclic GC does not track (bytes, ints,
 * records declared gc=False): such a list cannot be part of a reference cycle. CPython does
 * the same for tuples and dicts of atomic items, but never for lists; the encoder's lists of
 * rendered lines (hundreds of thousands of items at 50,000 tasks) were walked by every
 * young-generation collection after they were built: tens of ms of stalled event loop. */
static PyObject *
untrack(PyObject *module, PyObject *lists)
{
    (void)module;
    PyObject *seq = PySequence_Fast(lists, "untrack: a sequence of lists");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), done = 0;
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *list = items[i];
        if (!PyList_CheckExact(list) || !PyObject_GC_IsTracked(list))
            continue;
        Py_ssize_t k, len = PyList_GET_SIZE(list);
        for (k = 0; k < len; k++) {
            if (PyObject_IS_GC(PyList_GET_ITEM(list, k)))
                break;
        }
        if (k == len) {
            PyObject_GC_UnTrack(list);
            done++;
        }
    }
    Py_DECREF(seq);
    return PyLong_FromSsize_t(done);
}

PyDoc_STRVAR(untrack_doc,
             "untrack(lists) -> int: stop the cyclic GC from tracking each list that holds no object it "
             "tracks; how many were untracked. Only for lists that will never hold such an object.");

static PyMethodDef methods[] = {
    {"go_float", (PyCFunction)go_float, METH_O, go_float_doc},
    {"render_gauges", (PyCFunction)(void (*)(void))render_gauges, METH_FASTCALL, render_gauges_doc},
    {"untrack", (PyCFunction)untrack, METH_O, untrack_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "oms_exporter._speedups",
    .m_doc = "C versions of exposition.go_float and exposition._render_gauges_py; untrack.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    PyObject *utils = PyImport_ImportModule("prometheus_client.utils");
    if (utils == NULL)
        return NULL;
    float_to_go_string = PyObject_GetAttrString(utils, "floatToGoString");
    Py_DECREF(utils);
    if (float_to_go_string == NULL)
        return NULL;
    return PyModule_Create(&module);
}
