/* PDQ (Meta's perceptual hash) without full-size float buffers.
 *
 * rgb(pixels, height, width) and luma(pixels, height, width) -> (32-byte hash, quality)
 *
 * PDQ blurs the luminance with two passes of a box filter along rows and columns (the
 * "Jarosz" tent), keeps 64x64 samples of the result, and hashes their 16x16 low-frequency DCT
 * against its median. The pdqhash package does this over whole float copies of the image
 * (~18 bytes a pixel, and its cost grew with the input: ~8 ms for 640x480). The filters are
 * linear and separable, and only 64 rows and 64 columns of their output are kept, so here
 * each kept column's weights over the input columns (the two box passes composed) and each
 * kept row's weights over the input rows are computed once, and every input row is reduced to
 * its 64 kept columns as it is read and added at once into the kept rows whose weights cover
 * it: one read of the image; memory is the weights (a float per row and column) and a row of
 * floats, whatever the shape (a tall image used to need H x 64 floats, 16 GB at 1 x 64 MP).
 * Each kept sample adds its terms in input order, as before. The same sums in another order round differently, so a
 * hash may differ from pdqhash's in a bit whose DCT coefficient lies within float noise of the
 * median (tests/worker/test_pdq.py measures it on every image in ../shared/data).
 *
 * Luminance is 0.299 R + 0.587 G + 0.114 B in double, stored as float (as pdqhash's binding
 * does); `luma` takes a ready greyscale plane (a JPEG's Y). Images under 5 pixels on a side
 * hash to zeros with quality 0, as in the reference. The hash's bit k (k = 16 * row + column of
 * the 16x16 DCT) is bit k of a 256-bit big-endian number, which is how pdqhash's hex reads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SIDE 64
#define MIN_SIDE 5

/* One kept output position: weights over input positions [first, first + count). */
struct taps {
    int first, count;
    float *weight;
};

/* The reference's box window of index i along an axis of n, for a window of w. */
static void box_window(int i, int n, int w, int *lo, int *hi) {
    int half = (w + 2) / 2;
    *lo = i - (w - half);
    *hi = i + half - 1;
    if (*lo < 0)
        *lo = 0;
    if (*hi > n - 1)
        *hi = n - 1;
}

/* Weights of the 64 kept samples of an axis of n: two box passes composed, then the sample
 * at the centre of each 1/64th (the reference's decimation). Returns 0 without memory. */
static int make_taps(int n, struct taps taps[SIDE]) {
    int w = (n + 2 * SIDE - 1) / (2 * SIDE);
    double *scratch = malloc(sizeof(double) * (size_t)(2 * w + 1)); /* a composed window spans at most 2w - 1 */
    if (scratch == NULL)
        return 0;
    for (int k = 0; k < SIDE; k++) {
        int s = (int)(((k + 0.5) * n) / SIDE), slo, shi, lo = n, hi = -1;
        box_window(s, n, w, &slo, &shi);
        for (int i = slo; i <= shi; i++) {
            int ilo, ihi;
            box_window(i, n, w, &ilo, &ihi);
            if (ilo < lo)
                lo = ilo;
            if (ihi > hi)
                hi = ihi;
        }
        /* Each box of the second pass adds its share over a run of inputs: marked at the run's
         * ends and summed once, so a side of millions costs O(n), not O(n^2 / 64) (a 16 x 4 MP
         * image took 28 s). Checked when written: as floats, equal to adding every share for every
         * n up to 20,000 and sampled n to 200,000; tests/worker/test_pdq.py holds the hashes to pdqhash. */
        memset(scratch, 0, sizeof(double) * (size_t)(hi - lo + 2));
        for (int i = slo; i <= shi; i++) {
            int ilo, ihi;
            box_window(i, n, w, &ilo, &ihi);
            double share = 1.0 / (shi - slo + 1) / (ihi - ilo + 1);
            scratch[ilo - lo] += share;
            scratch[ihi - lo + 1] -= share;
        }
        taps[k].first = lo;
        taps[k].count = hi - lo + 1;
        taps[k].weight = malloc(sizeof(float) * (size_t)taps[k].count);
        if (taps[k].weight == NULL)
            break;
        double running = 0.0;
        for (int j = 0; j < taps[k].count; j++) {
            running += scratch[j];
            taps[k].weight[j] = (float)running;
        }
    }
    free(scratch);
    return taps[SIDE - 1].weight != NULL;
}

static void free_taps(struct taps taps[SIDE]) {
    for (int k = 0; k < SIDE; k++)
        free(taps[k].weight);
}

static float dct[16][SIDE];
/* Each channel's share of the luminance, in double: (red[r] + green[g]) + blue[b] is exactly the
 * reference's r * 0.299 + g * 0.587 + b * 0.114, for a third of the work. */
static double red[256], green[256], blue[256];

static void init_tables(void) {
    for (int v = 0; v < 256; v++) {
        red[v] = v * 0.299;
        green[v] = v * 0.587;
        blue[v] = v * 0.114;
    }
    const float scale = (float)sqrt(2.0 / SIDE);
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < SIDE; j++)
            dct[i][j] = (float)(scale * cos((M_PI / 2.0 / SIDE) * (i + 1) * (2 * j + 1)));
}

static int by_value(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* The 64x64 samples to hash and quality: PDQ's quality metric, DCT, median threshold. */
static int finish(float blurred[SIDE][SIDE], unsigned char hash[32]) {
    int gradients = 0;
    for (int i = 0; i < SIDE - 1; i++)
        for (int j = 0; j < SIDE; j++)
            gradients += abs((int)(((blurred[i][j] - blurred[i + 1][j]) * 100) / 255));
    for (int i = 0; i < SIDE; i++)
        for (int j = 0; j < SIDE - 1; j++)
            gradients += abs((int)(((blurred[i][j] - blurred[i][j + 1]) * 100) / 255));
    int quality = gradients / 90;
    if (quality > 100)
        quality = 100;

    float t[16][SIDE], b[16][16], sorted[256];
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < SIDE; j++) {
            float sum = 0.0f;
            for (int k = 0; k < SIDE; k++)
                sum += dct[i][k] * blurred[k][j];
            t[i][j] = sum;
        }
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) {
            float sum = 0.0f;
            for (int k = 0; k < SIDE; k++)
                sum += t[i][k] * dct[j][k];
            b[i][j] = sum;
        }
    memcpy(sorted, b, sizeof(sorted));
    qsort(sorted, 256, sizeof(float), by_value);
    float median = sorted[127]; /* the 128th smallest, as Torben's selection gives */
    memset(hash, 0, 32);
    for (int k = 0; k < 256; k++)
        if (b[k / 16][k % 16] > median)
            hash[31 - k / 8] |= (unsigned char)(1u << (k % 8));
    return quality;
}

/* Rows of `pixels` (channels 1: luma, 3: RGB) reduced to the hash; 0 when out of memory. */
static int pdq(const uint8_t *pixels, int height, int width, int channels, unsigned char hash[32], int *quality) {
    if (height < MIN_SIDE || width < MIN_SIDE) {
        memset(hash, 0, 32);
        *quality = 0;
        return 1;
    }
    struct taps across[SIDE] = {{0}}, down[SIDE] = {{0}};
    float *row = malloc(sizeof(float) * (size_t)width);
    int ok = row && make_taps(width, across) && make_taps(height, down);
    if (ok) {
        float blurred[SIDE][SIDE] = {{0.0f}};
        int open = 0; /* the first kept row whose window does not end above this input row */
        for (int r = 0; r < height; r++) {
            const uint8_t *p = pixels + (size_t)r * width * channels;
            if (channels == 3)
                for (int c = 0; c < width; c++, p += 3)
                    row[c] = (float)(red[p[0]] + green[p[1]] + blue[p[2]]);
            else
                for (int c = 0; c < width; c++)
                    row[c] = (float)p[c];
            float reduced[SIDE];
            for (int k = 0; k < SIDE; k++) {
                const float *x = row + across[k].first, *w = across[k].weight;
                float sum = 0.0f;
                for (int j = 0; j < across[k].count; j++)
                    sum += w[j] * x[j];
                reduced[k] = sum;
            }
            while (open < SIDE && down[open].first + down[open].count <= r)
                open++;
            for (int i = open; i < SIDE && down[i].first <= r; i++) { /* windows' ends and starts both rise with i */
                float w = down[i].weight[r - down[i].first];
                for (int k = 0; k < SIDE; k++)
                    blurred[i][k] += w * reduced[k];
            }
        }
        *quality = finish(blurred, hash);
    }
    free_taps(across);
    free_taps(down);
    free(row);
    return ok;
}

static PyObject *hash_of(PyObject *args, int channels) {
    Py_buffer view;
    int height, width, quality = 0, ok;
    unsigned char hash[32];
    if (!PyArg_ParseTuple(args, "y*ii", &view, &height, &width))
        return NULL;
    if (height < 0 || width < 0 || view.len != (Py_ssize_t)height * width * channels) {
        PyBuffer_Release(&view);
        PyErr_Format(PyExc_ValueError, "expected %d x %d x %d bytes, got %zd", height, width, channels, view.len);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    ok = pdq((const uint8_t *)view.buf, height, width, channels, hash, &quality);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    if (!ok)
        return PyErr_NoMemory();
    return Py_BuildValue("y#i", (const char *)hash, (Py_ssize_t)32, quality);
}

static PyObject *py_rgb(PyObject *self, PyObject *args) { return hash_of(args, 3); }
static PyObject *py_luma(PyObject *self, PyObject *args) { return hash_of(args, 1); }

static PyMethodDef methods[] = {
    {"rgb", py_rgb, METH_VARARGS, "rgb(pixels, height, width) -> (hash bytes, quality): PDQ of HxWx3 uint8"},
    {"luma", py_luma, METH_VARARGS, "luma(pixels, height, width) -> (hash bytes, quality): PDQ of an HxW uint8 plane"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_pdq", "PDQ hashes in one pass over the pixels", -1, methods};

PyMODINIT_FUNC PyInit__pdq(void) {
    init_tables();
    return PyModule_Create(&module);
}
