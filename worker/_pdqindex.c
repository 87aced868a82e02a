/* Radius search over 256-bit PDQ hashes by multi-index hashing (worker/pdq_index.py drives it).
 *
 * A hash is cut into 8 words of 32 bits. Two hashes within distance 23 have a word within
 * distance 2 (if all 8 differed by 3 or more, the total would be 24 or more); pairs further
 * apart but within 31 are still found whenever one of their words is (measured, not promised:
 * benchmarks/near_duplicate_scale.py). Each word has a table: the hashes' ids sorted by the
 * word's top `k` bits, a directory of where each top value starts, and beside each id the
 * word's other 32 - k bits (k >= 16, so they fit 16 bits). A query visits, per table, the
 * directory entries within 2 bits of its own top bits (1 + k + k(k-1)/2 of them), scans their
 * ids and low bits, and compares the full hash only when the word is within 2 bits; so the cost
 * follows the number of buckets, not of hashes, and memory is 32 bytes of hash plus 6 bytes an
 * id a table.
 *
 *   build(codes, start, end, k, directory, ids, lows)     fill one segment's tables (GIL released)
 *   search(codes, end, directory, ids, lows, k, live_from, queries, max_distance, per_bucket, budget,
 *          best_distance, best_id, capped)                improve each query's best match
 *   scan(codes, start, end, queries, max_distance, best_distance, best_id)   brute force, for the unindexed tail
 *
 * `codes` holds hashes of 32 bytes each (big-endian, as the hex reads); ids are positions in it.
 * Arrays are numpy buffers the caller allocates: directory uint32[8 * (2^k + 1)], ids uint32[8 * n],
 * lows uint16[8 * n], best_distance int32[q], best_id int64[q], capped int32[q]. A query keeps
 * its best (smallest distance, then smallest id) over every call, so segments chain.
 *
 * Bounds against a flood of hashes into one region: at most `per_bucket` full comparisons in one
 * bucket and `budget` scanned entries a query; a query cut short by either is counted in
 * `capped` (its other buckets and tables are still searched).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define WORDS 8
#define CODE 32
#define RADIUS 2

static uint32_t word_of(const uint8_t *code, int t) {
    const uint8_t *p = code + 4 * t;
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static int distance(const uint8_t *a, const uint8_t *b) {
    int d = 0;
    for (int i = 0; i < CODE; i += 8) {
        uint64_t x, y;
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        d += __builtin_popcountll(x ^ y);
    }
    return d;
}

/* A writable (or read-only) contiguous view of at least `need` bytes, or -1 with an exception. */
static int view(PyObject *obj, Py_buffer *buf, int writable, Py_ssize_t need, const char *name) {
    if (PyObject_GetBuffer(obj, buf, (writable ? PyBUF_WRITABLE : 0) | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (buf->len < need) {
        PyErr_Format(PyExc_ValueError, "%s holds %zd bytes, %zd needed", name, buf->len, need);
        PyBuffer_Release(buf);
        return -1;
    }
    return 0;
}

static PyObject *build(PyObject *self, PyObject *args) {
    PyObject *codes_obj, *dir_obj, *ids_obj, *lows_obj;
    Py_ssize_t start, end;
    int k;
    if (!PyArg_ParseTuple(args, "OnniOOO", &codes_obj, &start, &end, &k, &dir_obj, &ids_obj, &lows_obj))
        return NULL;
    if (k < 16 || k > 30 || start < 0 || end < start || end > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "need 16 <= k <= 30 and 0 <= start <= end < 2^32");
        return NULL;
    }
    Py_ssize_t n = end - start, buckets = (Py_ssize_t)1 << k;
    Py_buffer codes, dir, ids, lows;
    if (view(codes_obj, &codes, 0, end * CODE, "codes") < 0)
        return NULL;
    if (view(dir_obj, &dir, 1, WORDS * (buckets + 1) * 4, "directory") < 0) {
        PyBuffer_Release(&codes);
        return NULL;
    }
    if (view(ids_obj, &ids, 1, WORDS * n * 4, "ids") < 0) {
        PyBuffer_Release(&codes);
        PyBuffer_Release(&dir);
        return NULL;
    }
    if (view(lows_obj, &lows, 1, WORDS * n * 2, "lows") < 0) {
        PyBuffer_Release(&codes);
        PyBuffer_Release(&dir);
        PyBuffer_Release(&ids);
        return NULL;
    }
    const uint8_t *c = codes.buf;
    int shift = 32 - k;
    uint32_t low_mask = (1u << shift) - 1;
    Py_BEGIN_ALLOW_THREADS
    for (int t = 0; t < WORDS; t++) {
        uint32_t *d = (uint32_t *)dir.buf + (size_t)t * (buckets + 1);
        uint32_t *id = (uint32_t *)ids.buf + (size_t)t * n;
        uint16_t *lo = (uint16_t *)lows.buf + (size_t)t * n;
        memset(d, 0, sizeof(uint32_t) * (buckets + 1));
        for (Py_ssize_t i = start; i < end; i++)
            d[(word_of(c + i * CODE, t) >> shift) + 1]++;
        for (Py_ssize_t b = 0; b < buckets; b++)
            d[b + 1] += d[b];
        /* Scatter with d[b] as the next free place of bucket b, then shift back: d[b] = start of b. */
        for (Py_ssize_t i = start; i < end; i++) {
            uint32_t w = word_of(c + i * CODE, t), at = d[w >> shift]++;
            id[at] = (uint32_t)i;
            lo[at] = (uint16_t)(w & low_mask);
        }
        memmove(d + 1, d, sizeof(uint32_t) * buckets);
        d[0] = 0;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&codes);
    PyBuffer_Release(&dir);
    PyBuffer_Release(&ids);
    PyBuffer_Release(&lows);
    Py_RETURN_NONE;
}

struct best {
    int32_t *distance;
    int64_t *id;
};

static void offer(struct best *best, Py_ssize_t q, int d, int64_t id) {
    if (d < best->distance[q] || (d == best->distance[q] && id < best->id[q])) {
        best->distance[q] = d;
        best->id[q] = id;
    }
}

/* Scan one bucket of table t for query q; returns the entries scanned. */
static Py_ssize_t visit(const uint8_t *codes, const uint32_t *id, const uint16_t *lo, uint32_t from, uint32_t to,
                        const uint8_t *query, uint32_t qlow, int flips, int64_t live_from, int max_distance,
                        int per_bucket, struct best *best, Py_ssize_t q, int *cut) {
    int compared = 0;
    for (uint32_t e = from; e < to; e++) {
        if (flips + __builtin_popcount((uint32_t)(lo[e] ^ qlow)) > RADIUS || id[e] < live_from)
            continue;
        if (compared++ == per_bucket) {
            *cut = 1;
            return (Py_ssize_t)(e - from);
        }
        int d = distance(codes + (size_t)id[e] * CODE, query);
        if (d <= max_distance)
            offer(best, q, d, id[e]);
    }
    return (Py_ssize_t)(to - from);
}

#define MAX_PROBES 512 /* 1 + k + k(k-1)/2 for k <= 30 */

/* Visit the buckets of top value `top` with 0, 1 and 2 of its k bits flipped, while the budget
 * lasts. The buckets are scattered over a large directory, so their places are prefetched all
 * at once, then their entries, before any is read: the misses overlap instead of queueing. */
static void visit_near(const uint8_t *codes, const uint32_t *d, const uint32_t *id, const uint16_t *lo, int k, uint32_t top,
                       uint32_t qlow, const uint8_t *query, int64_t live_from, int max_distance, int per_bucket,
                       struct best *best, Py_ssize_t q, Py_ssize_t *left, int *cut) {
    uint32_t bucket[MAX_PROBES], from[MAX_PROBES], to[MAX_PROBES];
    int flips[MAX_PROBES], n = 0;
    bucket[n] = top;
    flips[n++] = 0;
    for (int i = 0; i < k; i++) {
        bucket[n] = top ^ (1u << i);
        flips[n++] = 1;
    }
    for (int i = 0; i < k; i++)
        for (int j = i + 1; j < k; j++) {
            bucket[n] = top ^ (1u << i) ^ (1u << j);
            flips[n++] = 2;
        }
    for (int p = 0; p < n; p++)
        __builtin_prefetch(d + bucket[p]);
    for (int p = 0; p < n; p++) {
        from[p] = d[bucket[p]];
        to[p] = d[bucket[p] + 1];
        __builtin_prefetch(lo + from[p]);
        __builtin_prefetch(id + from[p]);
    }
    for (int p = 0; p < n && *left > 0; p++)
        *left -= visit(codes, id, lo, from[p], to[p], query, qlow, flips[p], live_from, max_distance, per_bucket, best, q, cut);
}

static PyObject *search(PyObject *self, PyObject *args) {
    PyObject *codes_obj, *dir_obj, *ids_obj, *lows_obj, *q_obj, *bd_obj, *bi_obj, *cap_obj;
    int k, max_distance, per_bucket;
    long long live_from;
    Py_ssize_t end, budget;
    if (!PyArg_ParseTuple(args, "OnOOOiLOiinOOO", &codes_obj, &end, &dir_obj, &ids_obj, &lows_obj, &k, &live_from, &q_obj,
                          &max_distance, &per_bucket, &budget, &bd_obj, &bi_obj, &cap_obj))
        return NULL;
    if (k < 16 || k > 30 || end < 0) {
        PyErr_SetString(PyExc_ValueError, "need 16 <= k <= 30 and end >= 0");
        return NULL;
    }
    Py_ssize_t buckets = (Py_ssize_t)1 << k;
    Py_buffer codes, dir, ids, lows, queries, bd, bi, cap;
    if (view(codes_obj, &codes, 0, end * CODE, "codes") < 0)
        return NULL;
    if (view(dir_obj, &dir, 0, WORDS * (buckets + 1) * 4, "directory") < 0)
        goto fail_codes;
    Py_ssize_t n = ((const uint32_t *)dir.buf)[buckets]; /* table 0's end: the segment's size */
    if (view(ids_obj, &ids, 0, WORDS * n * 4, "ids") < 0)
        goto fail_dir;
    if (view(lows_obj, &lows, 0, WORDS * n * 2, "lows") < 0)
        goto fail_ids;
    if (view(q_obj, &queries, 0, 0, "queries") < 0)
        goto fail_lows;
    Py_ssize_t nq = queries.len / CODE;
    if (view(bd_obj, &bd, 1, nq * 4, "best_distance") < 0)
        goto fail_queries;
    if (view(bi_obj, &bi, 1, nq * 8, "best_id") < 0)
        goto fail_bd;
    if (view(cap_obj, &cap, 1, nq * 4, "capped") < 0)
        goto fail_bi;
    struct best best = {bd.buf, bi.buf};
    int shift = 32 - k;
    uint32_t low_mask = (1u << shift) - 1;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t q = 0; q < nq; q++) {
        const uint8_t *query = (const uint8_t *)queries.buf + q * CODE;
        Py_ssize_t left = budget;
        int cut = 0;
        for (int t = 0; t < WORDS; t++) {
            uint32_t w = word_of(query, t);
            visit_near(codes.buf, (const uint32_t *)dir.buf + (size_t)t * (buckets + 1), (const uint32_t *)ids.buf + (size_t)t * n,
                       (const uint16_t *)lows.buf + (size_t)t * n, k, w >> shift, w & low_mask, query, live_from, max_distance,
                       per_bucket, &best, q, &left, &cut);
        }
        if (cut || left <= 0)
            ((int32_t *)cap.buf)[q]++;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&cap);
fail_bi:
    PyBuffer_Release(&bi);
fail_bd:
    PyBuffer_Release(&bd);
fail_queries:
    PyBuffer_Release(&queries);
fail_lows:
    PyBuffer_Release(&lows);
fail_ids:
    PyBuffer_Release(&ids);
fail_dir:
    PyBuffer_Release(&dir);
fail_codes:
    PyBuffer_Release(&codes);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *scan(PyObject *self, PyObject *args) {
    PyObject *codes_obj, *q_obj, *bd_obj, *bi_obj;
    Py_ssize_t start, end;
    int max_distance;
    if (!PyArg_ParseTuple(args, "OnnOiOO", &codes_obj, &start, &end, &q_obj, &max_distance, &bd_obj, &bi_obj))
        return NULL;
    Py_buffer codes, queries, bd, bi;
    if (start < 0 || end < start) {
        PyErr_SetString(PyExc_ValueError, "need 0 <= start <= end");
        return NULL;
    }
    if (view(codes_obj, &codes, 0, end * CODE, "codes") < 0)
        return NULL;
    if (view(q_obj, &queries, 0, 0, "queries") < 0) {
        PyBuffer_Release(&codes);
        return NULL;
    }
    Py_ssize_t nq = queries.len / CODE;
    if (view(bd_obj, &bd, 1, nq * 4, "best_distance") < 0) {
        PyBuffer_Release(&codes);
        PyBuffer_Release(&queries);
        return NULL;
    }
    if (view(bi_obj, &bi, 1, nq * 8, "best_id") < 0) {
        PyBuffer_Release(&codes);
        PyBuffer_Release(&queries);
        PyBuffer_Release(&bd);
        return NULL;
    }
    struct best best = {bd.buf, bi.buf};
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = start; i < end; i++)
        for (Py_ssize_t q = 0; q < nq; q++) {
            int d = distance((const uint8_t *)codes.buf + i * CODE, (const uint8_t *)queries.buf + q * CODE);
            if (d <= max_distance)
                offer(&best, q, d, i);
        }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&codes);
    PyBuffer_Release(&queries);
    PyBuffer_Release(&bd);
    PyBuffer_Release(&bi);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"build", build, METH_VARARGS, "Fill one segment's 8 tables from codes[start:end]."},
    {"search", search, METH_VARARGS, "Improve each query's best match from one segment."},
    {"scan", scan, METH_VARARGS, "Improve each query's best match from codes[start:end], brute force."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_pdqindex", "Multi-index hashing over PDQ hashes.", -1, methods};

PyMODINIT_FUNC PyInit__pdqindex(void) { return PyModule_Create(&module); }
