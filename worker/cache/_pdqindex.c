/* Radius search over 256-bit PDQ hashes by multi-index hashing (worker/cache/pdq_index.py drives it).
 *
 * A hash is cut into 8 words of 32 bits. Two hashes within distance 23 have a word within
 * distance 2 (if all 8 differed by 3 or more, the total would be 24 or more); pairs further
 * apart but within 31 are still found whenever one of their words is (measured, not promised:
 * benchmarks/near_duplicate_scale.py). Each word has a table keyed by the word's top `k` bits;
 * a query visits, per table, the buckets within 2 bits of its own top bits (1 + k + k(k-1)/2
 * of them) and compares the full hash only when the word's other bits allow it. So the cost
 * follows the number of buckets, not of hashes.
 *
 * Memory is what decides the layout (about 62.5 bytes a hash, 32 of them the hash itself):
 * - A segment stores its hashes sorted by word 0's top bits, so table 0 is a directory over the
 *   hashes themselves: uint32 dir0[2^k + 1], bucket b = hashes dir0[b] .. dir0[b + 1].
 * - Tables 1-7 hold 4-byte entries: the hash's place in the segment in the high bits and, in
 *   the bits the place leaves free, the top bits of the word below the directory's k (a filter:
 *   exact while the segment is small, a few bits at 10^8). Their directories are two-level: a
 *   uint32 base per 64 buckets and a uint16 offset from it per bucket; to keep the offsets in
 *   16 bits, a bucket keeps at most BUCKET_CAP entries a table (a flood's excess is then found
 *   through its other words only).
 * - One byte a hash names its expiry class; a 256-byte mask says which classes are dead.
 *
 *   build(sources, dead, k, codes, ages, dir0, groups, offs, entries)
 *                                                            one segment from the live hashes of
 *                                                            sources ((codes, ages, n), ...)
 *   search(segment, dead, tag, queries, max_distance, per_bucket, budget, best_distance, best_id, capped)
 *                                                            segment = (codes, ages, k, dir0, groups, offs, entries)
 *   scan(codes, ages, n, dead, tag, queries, max_distance, best_distance, best_id)   brute force, for the tail
 *
 * Hashes are 32 bytes (big-endian, as the hex reads). Arrays are numpy buffers the caller
 * allocates for n live hashes: codes uint8[32n], ages uint8[n], dir0 uint32[2^k + 1], groups
 * uint32[7 (2^k / 64 + 1)], offs uint16[7 (2^k + 1)], entries uint32[7n]; best_distance
 * int32[q], best_id int64[q] (tag << 32 | place), capped int32[q]. A query keeps its best
 * (smallest distance, then smallest id) over every call, so segments chain.
 *
 * Bounds against a flood of hashes into one region: at most `per_bucket` full comparisons in one
 * bucket and `budget` scanned entries a query; a query cut short by either is counted in
 * `capped` (its other buckets and tables are still searched). Heavy loops release the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define WORDS 8
#define CODE 32
#define RADIUS 2
#define MIN_K 16
#define MAX_K 24
#define GROUP_BITS 6      /* 64 buckets share a uint32 base */
#define BUCKET_CAP 1024   /* (64 - 1) * 1024 < 2^16: a bucket's offset from its base fits 16 bits */
#define MAX_PROBES 301    /* 1 + k + k(k-1)/2 for k <= 24 */
#define CANDIDATES 256    /* places gathered (and their hashes prefetched) before they are compared */
#define AHEAD 8           /* probes between a prefetch and its use */
#define MAX_VIEWS 16

static uint32_t word_of(const uint8_t *code, int t) {
    const uint8_t *p = code + 4 * t;
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

/* Bits set, without the popcnt instruction a portable build may not assume (the builtin then
 * becomes a library call). */
static int ones(uint64_t x) {
    x -= (x >> 1) & 0x5555555555555555ULL;
    x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
    x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
    return (int)((x * 0x0101010101010101ULL) >> 56);
}

static int distance(const uint8_t *a, const uint8_t *b) {
    int d = 0;
    for (int i = 0; i < CODE; i += 8) {
        uint64_t x, y;
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        d += ones(x ^ y);
    }
    return d;
}

/* Whether x has at most `r` bits set (r <= RADIUS): each step clears the lowest. */
static int within(uint32_t x, int r) {
    for (int i = 0; i < r; i++)
        x &= x - 1;
    return x == 0;
}

/* The buffers a call holds, released together. */
struct views {
    Py_buffer b[MAX_VIEWS];
    int n;
};

static void release(struct views *v) {
    while (v->n > 0)
        PyBuffer_Release(&v->b[--v->n]);
}

/* A contiguous view of at least `need` bytes (writable if asked), or NULL with an exception. */
static void *take(struct views *v, PyObject *obj, int writable, Py_ssize_t need, const char *name) {
    if (v->n == MAX_VIEWS) {
        PyErr_SetString(PyExc_ValueError, "too many buffers");
        return NULL;
    }
    Py_buffer *buf = &v->b[v->n];
    if (PyObject_GetBuffer(obj, buf, (writable ? PyBUF_WRITABLE : 0) | PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    v->n++;
    if (buf->len < need) {
        PyErr_Format(PyExc_ValueError, "%s holds %zd bytes, %zd needed", name, buf->len, need);
        return NULL;
    }
    return buf->buf;
}

/* A call's end: its buffers released, then None, or NULL if it raised. */
static PyObject *finish(struct views *v) {
    release(v);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static int check_k(int k) {
    if (k < MIN_K || k > MAX_K) {
        PyErr_Format(PyExc_ValueError, "need %d <= k <= %d", MIN_K, MAX_K);
        return -1;
    }
    return 0;
}

/* Bits of a place in a segment of n hashes; the entry's other bits hold the filter. */
static int place_bits(Py_ssize_t n) {
    int bits = 1;
    while (bits < 31 && ((Py_ssize_t)1 << bits) < n)
        bits++;
    return bits;
}

static Py_ssize_t groups_of(int k) { return ((Py_ssize_t)1 << (k - GROUP_BITS)) + 1; }

struct source {
    const uint8_t *codes, *ages;
    Py_ssize_t n;
};

/* Tables 1-7 over the segment's sorted codes: count each bucket (capped), lay out the two-level
 * directory, then scatter the entries in place order. `start` is scratch of 2^k + 1 words. */
static void build_tables(const uint8_t *codes, Py_ssize_t n, int k, uint32_t *start, uint32_t *groups, uint16_t *offs,
                         uint32_t *entries) {
    Py_ssize_t buckets = (Py_ssize_t)1 << k;
    int shift = 32 - k, low_bits = 32 - k, fbits = 32 - place_bits(n);
    int width = fbits < low_bits ? fbits : low_bits, fshift = low_bits - width;
    uint32_t low_mask = (1u << low_bits) - 1;
    for (int t = 1; t < WORDS; t++) {
        uint32_t *g = groups + (size_t)(t - 1) * groups_of(k);
        uint16_t *o = offs + (size_t)(t - 1) * (buckets + 1);
        uint32_t *e = entries + (size_t)(t - 1) * n;
        memset(start, 0, sizeof(uint32_t) * (buckets + 1));
        for (Py_ssize_t i = 0; i < n; i++) {
            uint32_t *c = start + (word_of(codes + i * CODE, t) >> shift) + 1;
            if (*c < BUCKET_CAP)
                (*c)++;
        }
        for (Py_ssize_t b = 0; b < buckets; b++)
            start[b + 1] += start[b];
        for (Py_ssize_t b = 0; b <= buckets; b++) {
            if ((b & ((1 << GROUP_BITS) - 1)) == 0)
                g[b >> GROUP_BITS] = start[b];
            o[b] = (uint16_t)(start[b] - g[b >> GROUP_BITS]);
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            uint32_t w = word_of(codes + i * CODE, t), b = w >> shift;
            uint32_t end = g[(b + 1) >> GROUP_BITS] + o[b + 1];
            if (start[b] < end)
                e[start[b]++] = ((uint32_t)i << fbits) | ((w & low_mask) >> fshift);
        }
    }
}

static PyObject *build(PyObject *self, PyObject *args) {
    PyObject *sources_obj, *dead_obj, *codes_obj, *ages_obj, *dir0_obj, *groups_obj, *offs_obj, *entries_obj;
    int k;
    if (!PyArg_ParseTuple(args, "OOiOOOOOO", &sources_obj, &dead_obj, &k, &codes_obj, &ages_obj, &dir0_obj, &groups_obj,
                          &offs_obj, &entries_obj))
        return NULL;
    if (check_k(k) < 0)
        return NULL;
    PyObject *seq = PySequence_Fast(sources_obj, "sources: a sequence of (codes, ages, n)");
    if (!seq)
        return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq), buckets = (Py_ssize_t)1 << k, n = 0;
    struct views v = {.n = 0};
    struct source src[4];
    uint32_t *scratch = NULL;
    if (count > 4) {
        PyErr_SetString(PyExc_ValueError, "at most 4 sources");
        goto done;
    }
    const uint8_t *dead = take(&v, dead_obj, 0, 256, "dead");
    if (!dead)
        goto done;
    for (Py_ssize_t s = 0; s < count; s++) {
        PyObject *c, *a;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, s), "OOn", &c, &a, &src[s].n))
            goto done;
        if (src[s].n < 0 || !(src[s].codes = take(&v, c, 0, src[s].n * CODE, "codes")) || !(src[s].ages = take(&v, a, 0, src[s].n, "ages")))
            goto done;
        for (Py_ssize_t i = 0; i < src[s].n; i++)
            n += !dead[src[s].ages[i]];
    }
    if (n >= ((Py_ssize_t)1 << 31)) {
        PyErr_SetString(PyExc_ValueError, "a segment holds fewer than 2^31 hashes");
        goto done;
    }
    uint8_t *codes = take(&v, codes_obj, 1, n * CODE, "codes out");
    uint8_t *ages = codes ? take(&v, ages_obj, 1, n, "ages out") : NULL;
    if (ages && v.b[v.n - 1].len != n) {  /* the caller sized the segment from its counts: they must agree */
        PyErr_Format(PyExc_ValueError, "ages out holds %zd hashes, the sources %zd live ones", v.b[v.n - 1].len, n);
        goto done;
    }
    uint32_t *dir0 = ages ? take(&v, dir0_obj, 1, (buckets + 1) * 4, "dir0") : NULL;
    uint32_t *groups = dir0 ? take(&v, groups_obj, 1, (WORDS - 1) * groups_of(k) * 4, "groups") : NULL;
    uint16_t *offs = groups ? take(&v, offs_obj, 1, (WORDS - 1) * (buckets + 1) * 2, "offs") : NULL;
    uint32_t *entries = offs ? take(&v, entries_obj, 1, (WORDS - 1) * n * 4, "entries") : NULL;
    if (!entries)
        goto done;
    scratch = malloc(sizeof(uint32_t) * (buckets + 1));
    if (!scratch) {
        PyErr_NoMemory();
        goto done;
    }
    int shift = 32 - k;
    Py_BEGIN_ALLOW_THREADS
    /* Table 0: count into dir0[b + 1], sum so dir0[b] starts b, scatter with dir0[b] as b's next
     * free place (it ends as b + 1's start), then shift back by one. */
    memset(dir0, 0, sizeof(uint32_t) * (buckets + 1));
    for (Py_ssize_t s = 0; s < count; s++)
        for (Py_ssize_t i = 0; i < src[s].n; i++)
            if (!dead[src[s].ages[i]])
                dir0[(word_of(src[s].codes + i * CODE, 0) >> shift) + 1]++;
    for (Py_ssize_t b = 0; b < buckets; b++)
        dir0[b + 1] += dir0[b];
    for (Py_ssize_t s = 0; s < count; s++)
        for (Py_ssize_t i = 0; i < src[s].n; i++) {
            if (dead[src[s].ages[i]])
                continue;
            uint32_t at = dir0[word_of(src[s].codes + i * CODE, 0) >> shift]++;
            memcpy(codes + (size_t)at * CODE, src[s].codes + i * CODE, CODE);
            ages[at] = src[s].ages[i];
        }
    memmove(dir0 + 1, dir0, sizeof(uint32_t) * buckets);
    dir0[0] = 0;
    build_tables(codes, n, k, scratch, groups, offs, entries);
    Py_END_ALLOW_THREADS
done:
    free(scratch);
    Py_DECREF(seq);
    return finish(&v);
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

struct segment {
    const uint8_t *codes, *ages, *dead;
    const uint32_t *dir0, *groups, *entries;
    const uint16_t *offs;
    Py_ssize_t n;
    int k, fbits, fshift;
    int64_t tag;
};

/* What one query's search of one segment carries along. */
struct query {
    const uint8_t *code;
    Py_ssize_t index, left; /* the query's row; entries it may still scan */
    int max_distance, per_bucket, cut;
    struct best *best;
};

static void consider(const struct segment *s, struct query *q, uint32_t place) {
    int d = distance(s->codes + (size_t)place * CODE, q->code);
    if (d <= q->max_distance && !s->dead[s->ages[place]])
        offer(q->best, q->index, d, (s->tag << 32) | place);
}

/* The buckets within 2 bits of `top` (k bits), with how many bits each flips. */
static int probes(uint32_t top, int k, uint32_t *bucket, int *flips) {
    int n = 0;
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
    return n;
}

/* A bucket's place in table t: table 0's directory points into the hashes themselves, tables
 * 1-7's two-level directory into their entries. */
static void locate(const struct segment *s, int t, uint32_t b, uint32_t *from, uint32_t *to) {
    if (t == 0) {
        *from = s->dir0[b];
        *to = s->dir0[b + 1];
        return;
    }
    const uint32_t *g = s->groups + (size_t)(t - 1) * groups_of(s->k);
    const uint16_t *o = s->offs + (size_t)(t - 1) * (((size_t)1 << s->k) + 1);
    *from = g[b >> GROUP_BITS] + o[b];
    *to = g[(b + 1) >> GROUP_BITS] + o[b + 1];
}

static void prefetch_directory(const struct segment *s, int t, uint32_t b) {
    if (t == 0) {
        __builtin_prefetch(s->dir0 + b);
        return;
    }
    __builtin_prefetch(s->groups + (size_t)(t - 1) * groups_of(s->k) + (b >> GROUP_BITS));
    __builtin_prefetch(s->offs + (size_t)(t - 1) * (((size_t)1 << s->k) + 1) + b);
}

static void prefetch_bucket(const struct segment *s, int t, uint32_t from) {
    if (t == 0)
        __builtin_prefetch(s->codes + (size_t)from * CODE);
    else
        __builtin_prefetch(s->entries + (size_t)(t - 1) * s->n + from);
}

struct gathered {
    uint32_t place[CANDIDATES];
    int n;
};

static void compare_gathered(const struct segment *s, struct query *q, struct gathered *g) {
    for (int c = 0; c < g->n; c++)
        consider(s, q, g->place[c]);
    g->n = 0;
}

/* Scan one bucket of table t whose word may be within `r` more bits of the query's: table 0
 * compares its hashes at once; tables 1-7 gather the places whose filter passes and prefetch
 * their hashes, compared in batches so that those random reads overlap too. */
static void scan_bucket(const struct segment *s, struct query *q, int t, uint32_t from, uint32_t to, int r, uint32_t qbits,
                        struct gathered *g) {
    int compared = 0, shift = 32 - s->k;
    uint32_t e = from;
    if (t == 0) {
        uint32_t low_mask = (1u << shift) - 1;
        for (; e < to; e++) {
            if (!within((word_of(s->codes + (size_t)e * CODE, 0) ^ qbits) & low_mask, r))
                continue;
            if (compared++ == q->per_bucket) {
                q->cut = 1;
                break;
            }
            consider(s, q, e);
        }
    } else {
        const uint32_t *entries = s->entries + (size_t)(t - 1) * s->n, fmask = (1u << s->fbits) - 1;
        for (; e < to; e++) {
            if (!within((entries[e] & fmask) ^ qbits, r))
                continue;
            if (compared++ == q->per_bucket) {
                q->cut = 1;
                break;
            }
            uint32_t place = entries[e] >> s->fbits;
            __builtin_prefetch(s->codes + (size_t)place * CODE);
            g->place[g->n++] = place;
            if (g->n == CANDIDATES)
                compare_gathered(s, q, g);
        }
    }
    q->left -= e - from;
}

/* Table t's buckets within 2 bits of the query's word, while the budget lasts. They are
 * scattered over large arrays, so the search runs a pipeline: a probe's directory entry is
 * prefetched AHEAD probes before its bounds are read, and its bucket AHEAD probes before it is
 * scanned; the misses overlap instead of queueing. */
static void visit(const struct segment *s, struct query *q, int t) {
    uint32_t bucket[MAX_PROBES], from[MAX_PROBES], to[MAX_PROBES];
    int flips[MAX_PROBES], shift = 32 - s->k;
    struct gathered g = {.n = 0};
    uint32_t w = word_of(q->code, t);
    /* what a bucket's scan compares: table 0 the word itself, tables 1-7 the entries' filter */
    uint32_t qbits = t == 0 ? w : (w & ((1u << shift) - 1)) >> s->fshift;
    int n = probes(w >> shift, s->k, bucket, flips);
    for (int p = 0; p < n + 2 * AHEAD && q->left > 0; p++) {
        if (p < n)
            prefetch_directory(s, t, bucket[p]);
        int located = p - AHEAD, scanned = p - 2 * AHEAD;
        if (located >= 0 && located < n) {
            locate(s, t, bucket[located], &from[located], &to[located]);
            prefetch_bucket(s, t, from[located]);
        }
        if (scanned >= 0)
            scan_bucket(s, q, t, from[scanned], to[scanned], RADIUS - flips[scanned], qbits, &g);
    }
    compare_gathered(s, q, &g);
}

/* The queries (32 bytes each) and the arrays their best matches improve in: how many queries,
 * or -1 with an exception. */
static Py_ssize_t take_queries(struct views *v, PyObject *q_obj, PyObject *bd_obj, PyObject *bi_obj, const uint8_t **queries,
                               struct best *best) {
    if (!(*queries = take(v, q_obj, 0, 0, "queries")))
        return -1;
    Py_ssize_t nq = v->b[v->n - 1].len / CODE;
    best->distance = take(v, bd_obj, 1, nq * 4, "best_distance");
    best->id = best->distance ? take(v, bi_obj, 1, nq * 8, "best_id") : NULL;
    return best->id ? nq : -1;
}

static PyObject *search(PyObject *self, PyObject *args) {
    PyObject *codes_obj, *ages_obj, *dir0_obj, *groups_obj, *offs_obj, *entries_obj, *dead_obj, *q_obj, *bd_obj, *bi_obj, *cap_obj;
    struct segment s;
    long long tag;
    int max_distance, per_bucket;
    Py_ssize_t budget;
    if (!PyArg_ParseTuple(args, "(OOiOOOO)OLOiinOOO", &codes_obj, &ages_obj, &s.k, &dir0_obj, &groups_obj, &offs_obj, &entries_obj,
                          &dead_obj, &tag, &q_obj, &max_distance, &per_bucket, &budget, &bd_obj, &bi_obj, &cap_obj))
        return NULL;
    if (check_k(s.k) < 0)
        return NULL;
    s.tag = tag;
    Py_ssize_t buckets = (Py_ssize_t)1 << s.k;
    struct views v = {.n = 0};
    const uint32_t *dir0 = take(&v, dir0_obj, 0, (buckets + 1) * 4, "dir0");
    if (!dir0)
        goto done;
    s.dir0 = dir0;
    s.n = dir0[buckets];
    int low_bits = 32 - s.k, width;
    s.fbits = 32 - place_bits(s.n);
    width = s.fbits < low_bits ? s.fbits : low_bits;
    s.fshift = low_bits - width;
    if (!(s.codes = take(&v, codes_obj, 0, s.n * CODE, "codes")) || !(s.ages = take(&v, ages_obj, 0, s.n, "ages")) ||
        !(s.groups = take(&v, groups_obj, 0, (WORDS - 1) * groups_of(s.k) * 4, "groups")) ||
        !(s.offs = take(&v, offs_obj, 0, (WORDS - 1) * (buckets + 1) * 2, "offs")) ||
        !(s.entries = take(&v, entries_obj, 0, (WORDS - 1) * s.n * 4, "entries")) || !(s.dead = take(&v, dead_obj, 0, 256, "dead")))
        goto done;
    const uint8_t *queries;
    struct best best;
    Py_ssize_t nq = take_queries(&v, q_obj, bd_obj, bi_obj, &queries, &best);
    int32_t *capped = nq >= 0 ? take(&v, cap_obj, 1, nq * 4, "capped") : NULL;
    if (!capped)
        goto done;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < nq; i++) {
        struct query q = {queries + i * CODE, i, budget, max_distance, per_bucket, 0, &best};
        for (int t = 0; t < WORDS; t++)
            visit(&s, &q, t);
        if (q.cut || q.left <= 0)
            capped[i]++;
    }
    Py_END_ALLOW_THREADS
done:
    return finish(&v);
}

static PyObject *scan(PyObject *self, PyObject *args) {
    PyObject *codes_obj, *ages_obj, *dead_obj, *q_obj, *bd_obj, *bi_obj;
    Py_ssize_t n;
    long long tag;
    int max_distance;
    if (!PyArg_ParseTuple(args, "OOnOLOiOO", &codes_obj, &ages_obj, &n, &dead_obj, &tag, &q_obj, &max_distance, &bd_obj, &bi_obj))
        return NULL;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "need n >= 0");
        return NULL;
    }
    struct views v = {.n = 0};
    struct segment s = {.tag = tag};
    if (!(s.codes = take(&v, codes_obj, 0, n * CODE, "codes")) || !(s.ages = take(&v, ages_obj, 0, n, "ages")) ||
        !(s.dead = take(&v, dead_obj, 0, 256, "dead")))
        goto done;
    const uint8_t *queries;
    struct best best;
    Py_ssize_t nq = take_queries(&v, q_obj, bd_obj, bi_obj, &queries, &best);
    if (nq < 0)
        goto done;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++)
        for (Py_ssize_t j = 0; j < nq; j++) {
            struct query q = {queries + j * CODE, j, 0, max_distance, 0, 0, &best};
            consider(&s, &q, (uint32_t)i);
        }
    Py_END_ALLOW_THREADS
done:
    return finish(&v);
}

static PyMethodDef methods[] = {
    {"build", build, METH_VARARGS, "One segment (sorted hashes and 8 tables) from the live hashes of its sources."},
    {"search", search, METH_VARARGS, "Improve each query's best match from one segment."},
    {"scan", scan, METH_VARARGS, "Improve each query's best match from n hashes, brute force."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_pdqindex", "Multi-index hashing over PDQ hashes.", -1, methods};

PyMODINIT_FUNC PyInit__pdqindex(void) { return PyModule_Create(&module); }
