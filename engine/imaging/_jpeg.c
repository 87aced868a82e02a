/* Every JPEG pixel the worker uses comes from here: libjpeg-turbo with strict integrity rules.
 *
 * decode(data, scale_denom, top, left, height, width, max_scans, luma_per_block)
 *     -> (bytes, height, width, channels, luma)
 *
 * - Whole image (height == 0): RGB, or raw CMYK for 4-component files (the caller converts
 *   those as Pillow does), DCT-scaled by 1/scale_denom (1, 2, 4, 8) in the IDCT itself.
 * - Region (height > 0, scale 1, YCbCr or greyscale): only the rectangle is colour-converted
 *   (jpeg_skip_scanlines skips the IDCT of the rows above, jpeg_crop_scanline the columns
 *   outside); the rows below are still entropy-decoded, so that a file cut short or corrupt
 *   after the crop is refused exactly as a full decode refuses it. The caller asks for one MCU
 *   of margin so that upsampling at the edges sees the same neighbours as a full decode.
 *
 * Pillow's JPEG decoder ignores libjpeg's warnings, so a file cut short with an end marker
 * appended, or one with no scan data at all, comes back as a grey image. Here the warnings
 * that mean missing or corrupt data stop the decode at once (a grey 8000x8000 image costs
 * memory and time for nothing); warnings about harmless oddities (extraneous bytes between
 * markers, unusual JFIF versions) are let through, as every browser does. A progress monitor
 * refuses files with more than max_scans scans: a progressive file can repeat scans to make
 * the decoder re-read its whole coefficient buffer thousands of times.
 *
 * - luma_per_block (region decodes: 1 or 2; else 0): the same single pass
 *   also yields the image's luminance at 1/8 or 1/4 scale, read from the Y coefficients as the
 *   entropy decoder produces them (libjpeg-turbo hands every MCU of the skipped rows to
 *   decode_mcu too): each 8x8 Y block gives its mean (DC) or the means of its four 4x4
 *   quadrants (the exact quadrant means of its IDCT, from the coefficients with odd or zero
 *   frequencies). That is PDQ's input: the hash needs no second decode of the file. luma is
 *   (bytes, height, width), or None when not asked for or when the tap saw an MCU count other
 *   than the scan's (the caller then decodes a scaled copy instead).
 *
 * Errors raise engine.imaging._jpeg.Error(kind, message), kind one of "truncated", "corrupt",
 * "too_complex", "unsupported", or "no_region" when a region was asked of a file that needs a
 * full decode (progressive, multi-scan, CMYK).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <math.h>
#include <stdlib.h>
#include <jpeglib.h>
#include <jerror.h>
#include <jpegint.h>

static PyObject *JpegError;

struct strict_error {
    struct jpeg_error_mgr pub;
    jmp_buf escape;
    const char *kind;
    char message[JMSG_LENGTH_MAX];
};

struct scan_limit {
    struct jpeg_progress_mgr pub;
    int max_scans;
};

static void escape(j_common_ptr cinfo, const char *kind) {
    struct strict_error *err = (struct strict_error *)cinfo->err;
    err->kind = kind;
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->escape, 1);
}

static void on_error(j_common_ptr cinfo) { escape(cinfo, "corrupt"); }

static void on_message(j_common_ptr cinfo, int level) {
    if (level >= 0)
        return; /* trace messages */
    switch (cinfo->err->msg_code) {
    case JWRN_JPEG_EOF:    /* the data ran out */
    case JWRN_HIT_MARKER:  /* a scan ended before its last MCU */
        escape(cinfo, "truncated");
        break;
    case JWRN_HUFF_BAD_CODE:
#ifdef D_ARITH_CODING_SUPPORTED
    case JWRN_ARITH_BAD_CODE:
#endif
    case JWRN_MUST_RESYNC:
        escape(cinfo, "corrupt");
        break;
    default:
        cinfo->err->num_warnings++;
    }
}

static void on_progress(j_common_ptr cinfo) {
    struct scan_limit *limit = (struct scan_limit *)cinfo->progress;
    j_decompress_ptr dinfo = (j_decompress_ptr)cinfo;
    if (dinfo->input_scan_number > limit->max_scans) {
        struct strict_error *err = (struct strict_error *)cinfo->err;
        err->kind = "too_complex";
        snprintf(err->message, JMSG_LENGTH_MAX, "more than %d scans", limit->max_scans);
        longjmp(err->escape, 1);
    }
}

/* The luminance tap: wraps the entropy decoder's decode_mcu and keeps each Y block's mean (or
 * quadrant means) as the block goes by. Found from cinfo->client_data. */
struct luma_tap {
    boolean (*decode_mcu)(j_decompress_ptr, JBLOCKROW *);
    JBLOCK scratch[D_MAX_BLOCKS_IN_MCU];
    JBLOCKROW scratch_rows[D_MAX_BLOCKS_IN_MCU];
    JDIMENSION mcus, mcus_per_row;
    int per;                 /* samples per block side: 1 (DC) or 2 (quadrants) */
    int y_blocks;            /* Y blocks in an MCU (its first h_samp x v_samp blocks) */
    int h_samp, v_samp;
    JDIMENSION blocks_wide, blocks_high;
    const UINT16 *quant;     /* Y's quantisation table, natural order */
    unsigned char *plane;    /* blocks_high * per rows of blocks_wide * per */
};

/* quadrant[q][k]: the mean over pixels 4q..4q+3 of IDCT basis function k along one axis. */
static float quadrant[2][DCTSIZE];

static void init_quadrant(void) {
    for (int q = 0; q < 2; q++)
        for (int k = 0; k < DCTSIZE; k++) {
            double sum = 0.0, norm = k == 0 ? 1.0 / sqrt(2.0) : 1.0;
            for (int x = 4 * q; x < 4 * q + 4; x++)
                sum += 0.5 * norm * cos((2 * x + 1) * k * M_PI / 16.0);
            quadrant[q][k] = (float)(sum / 4.0);
        }
}

static unsigned char level(double value) {
    value += 128.0;
    return value <= 0.0 ? 0 : value >= 255.0 ? 255 : (unsigned char)(value + 0.5);
}

static void tap_block(struct luma_tap *tap, const JCOEF *coef, JDIMENSION by, JDIMENSION bx) {
    size_t width = (size_t)tap->blocks_wide * tap->per;
    unsigned char *out = tap->plane + (size_t)by * tap->per * width + (size_t)bx * tap->per;
    if (tap->per == 1) {
        /* libjpeg's own 1/8-scale IDCT of a block: the dequantised DC, descaled by 8 with rounding */
        int dc = coef[0] * tap->quant[0];
        int value = ((dc + 4) >> 3) + 128;
        out[0] = (unsigned char)(value < 0 ? 0 : value > 255 ? 255 : value);
        return;
    }
    float rows[DCTSIZE][2];  /* per vertical frequency v: the row's horizontal quadrant sums */
    for (int v = 0; v < DCTSIZE; v++) {
        rows[v][0] = rows[v][1] = 0.0f;
        for (int u = 0; u < DCTSIZE; u++) {
            JCOEF c = coef[v * DCTSIZE + u];
            if (c) {
                float f = (float)(c * tap->quant[v * DCTSIZE + u]);
                rows[v][0] += f * quadrant[0][u];
                rows[v][1] += f * quadrant[1][u];
            }
        }
    }
    for (int qy = 0; qy < 2; qy++)
        for (int qx = 0; qx < 2; qx++) {
            double sum = 0.0;
            for (int v = 0; v < DCTSIZE; v++)
                sum += rows[v][qx] * quadrant[qy][v];
            out[(size_t)qy * width + qx] = level(sum);
        }
}

static boolean tapped_decode_mcu(j_decompress_ptr cinfo, JBLOCKROW *MCU_data) {
    struct luma_tap *tap = (struct luma_tap *)cinfo->client_data;
    JBLOCKROW *blocks = MCU_data;
    if (blocks == NULL) { /* a skipped row: libjpeg discards the coefficients; keep them here */
        memset(tap->scratch, 0, sizeof(JBLOCK) * (size_t)cinfo->blocks_in_MCU);
        blocks = tap->scratch_rows;
    }
    if (!tap->decode_mcu(cinfo, blocks))
        return FALSE; /* suspended: this MCU comes again */
    JDIMENSION row = tap->mcus / tap->mcus_per_row, col = tap->mcus % tap->mcus_per_row;
    tap->mcus++;
    for (int b = 0; b < tap->y_blocks; b++) {
        JDIMENSION by = row * (JDIMENSION)tap->v_samp + (JDIMENSION)(b / tap->h_samp);
        JDIMENSION bx = col * (JDIMENSION)tap->h_samp + (JDIMENSION)(b % tap->h_samp);
        if (by < tap->blocks_high && bx < tap->blocks_wide)
            tap_block(tap, blocks[b][0], by, bx);
    }
    return TRUE;
}

/* Installs the tap once the scan has started; 0 when the file's layout is not one it reads. */
static int install_tap(j_decompress_ptr cinfo, struct luma_tap *tap, int per) {
    jpeg_component_info *y = cinfo->cur_comp_info[0];
    if (cinfo->comps_in_scan < 1 || y == NULL || y->component_index != 0 || y->quant_table == NULL)
        return 0;
    memset(tap, 0, sizeof(*tap));
    for (int b = 0; b < D_MAX_BLOCKS_IN_MCU; b++)
        tap->scratch_rows[b] = &tap->scratch[b];
    tap->per = per;
    tap->h_samp = cinfo->comps_in_scan == 1 ? 1 : y->h_samp_factor;
    tap->v_samp = cinfo->comps_in_scan == 1 ? 1 : y->v_samp_factor;
    tap->y_blocks = tap->h_samp * tap->v_samp;
    tap->mcus_per_row = cinfo->MCUs_per_row;
    tap->blocks_wide = y->width_in_blocks;
    tap->blocks_high = y->height_in_blocks;
    tap->quant = y->quant_table->quantval;
    tap->plane = calloc((size_t)tap->blocks_wide * per * tap->blocks_high * per, 1);
    if (tap->plane == NULL)
        return 0;
    tap->decode_mcu = cinfo->entropy->decode_mcu;
    cinfo->client_data = tap;
    cinfo->entropy->decode_mcu = tapped_decode_mcu;
    return 1;
}

/* The tap's plane as (bytes, height, width) cut to the image's own size, or None. */
static PyObject *tapped_luma(j_decompress_ptr cinfo, struct luma_tap *tap) {
    if (tap->plane == NULL || tap->mcus != cinfo->MCUs_per_row * cinfo->MCU_rows_in_scan)
        Py_RETURN_NONE;
    int per = tap->per;
    int height = (int)((cinfo->image_height * (JDIMENSION)per + 7) / 8), width = (int)((cinfo->image_width * (JDIMENSION)per + 7) / 8);
    size_t stride = (size_t)tap->blocks_wide * per;
    PyObject *plane = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)height * width);
    if (plane == NULL)
        return NULL;
    for (int r = 0; r < height; r++)
        memcpy(PyBytes_AS_STRING(plane) + (size_t)r * width, tap->plane + (size_t)r * stride, (size_t)width);
    return Py_BuildValue("(Nii)", plane, height, width);
}

static PyObject *decode(PyObject *self, PyObject *args) {
    Py_buffer data;
    int scale, top, left, height, width, max_scans, luma_per_block;
    if (!PyArg_ParseTuple(args, "y*iiiiiii", &data, &scale, &top, &left, &height, &width, &max_scans, &luma_per_block))
        return NULL;

    struct jpeg_decompress_struct cinfo;
    struct strict_error err;
    struct scan_limit limit;
    /* volatile: both change after setjmp and are freed on the error path */
    JSAMPLE *volatile row = NULL;
    PyObject *volatile out = NULL;
    const char *refusal = NULL;
    struct luma_tap tap;
    unsigned char *volatile *plane = &tap.plane;
    tap.plane = NULL;

    memset(&err, 0, sizeof(err));
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error;
    err.pub.emit_message = on_message;
    if (setjmp(err.escape)) {
        jpeg_destroy_decompress(&cinfo);
        free((void *)row);
        free((void *)*plane);
        Py_XDECREF((PyObject *)out);
        PyBuffer_Release(&data);
        PyErr_SetObject(JpegError, Py_BuildValue("(ss)", err.kind, err.message));
        return NULL;
    }
    jpeg_create_decompress(&cinfo);
    memset(&limit, 0, sizeof(limit));
    limit.pub.progress_monitor = on_progress;
    limit.max_scans = max_scans;
    cinfo.progress = &limit.pub;
    jpeg_mem_src(&cinfo, (const unsigned char *)data.buf, (unsigned long)data.len);
    jpeg_read_header(&cinfo, TRUE);

    int region = height > 0;
    int channels = cinfo.num_components == 4 ? 4 : 3;
    if (scale != 1 && scale != 2 && scale != 4 && scale != 8)
        refusal = "scale must be 1, 2, 4 or 8";
    else if (cinfo.num_components != 1 && cinfo.num_components != 3 && cinfo.num_components != 4)
        refusal = "unusual number of colour components";
    else if (region && (scale != 1 || channels != 3 || cinfo.progressive_mode || jpeg_has_multiple_scans(&cinfo)))
        refusal = "region decoding needs a single-scan YCbCr or greyscale file at scale 1";
    else if (luma_per_block && (luma_per_block > 2 || !region))
        refusal = "the luminance tap needs a region decode, at 1 or 2 per block";
    else if (region && (top < 0 || left < 0 || width <= 0 || (JDIMENSION)(top + height) > cinfo.image_height ||
                        (JDIMENSION)(left + width) > cinfo.image_width))
        refusal = "region outside the image";
    if (refusal) {
        strcpy(err.message, refusal);
        err.kind = region ? "no_region" : "unsupported";
        longjmp(err.escape, 1);
    }

    cinfo.out_color_space = channels == 4 ? JCS_CMYK : JCS_RGB;
    cinfo.scale_num = 1;
    cinfo.scale_denom = (unsigned int)scale;
    jpeg_start_decompress(&cinfo);
    if (luma_per_block)
        install_tap(&cinfo, &tap, luma_per_block);
    JDIMENSION xoffset = 0, skip = 0;
    if (region) {
        JDIMENSION xwidth = (JDIMENSION)width;
        xoffset = (JDIMENSION)left;
        jpeg_crop_scanline(&cinfo, &xoffset, &xwidth); /* widens to whole MCU columns */
        skip = (JDIMENSION)left - xoffset;
        if (top > 0 && jpeg_skip_scanlines(&cinfo, (JDIMENSION)top) != (JDIMENSION)top)
            escape((j_common_ptr)&cinfo, "truncated");
    } else {
        height = (int)cinfo.output_height;
        width = (int)cinfo.output_width;
    }

    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)height * width * channels);
    row = malloc((size_t)cinfo.output_width * channels);
    if (out == NULL || row == NULL) {
        jpeg_destroy_decompress(&cinfo);
        free((void *)row);
        free(tap.plane);
        Py_XDECREF((PyObject *)out);
        PyBuffer_Release(&data);
        return PyErr_NoMemory();
    }
    unsigned char *dst = (unsigned char *)PyBytes_AS_STRING((PyObject *)out);
    JSAMPROW rows[1] = {(JSAMPROW)row};
    size_t stride = (size_t)width * channels;
    for (int y = 0; y < height; y++) {
        if (jpeg_read_scanlines(&cinfo, rows, 1) != 1)
            escape((j_common_ptr)&cinfo, "truncated");
        memcpy(dst + (size_t)y * stride, (JSAMPLE *)row + (size_t)skip * channels, stride);
    }
    /* The rows below a region: skipping to the very end would only mark the input finished, so
     * skip all but the last row (entropy decoding, no IDCT) and read that one. */
    if (cinfo.output_scanline + 1 < cinfo.output_height)
        jpeg_skip_scanlines(&cinfo, cinfo.output_height - cinfo.output_scanline - 1);
    if (cinfo.output_scanline < cinfo.output_height && jpeg_read_scanlines(&cinfo, rows, 1) != 1)
        escape((j_common_ptr)&cinfo, "truncated");
    jpeg_finish_decompress(&cinfo); /* reads up to the end marker: a missing one is a warning, fatal here */
    PyObject *luma = luma_per_block ? tapped_luma(&cinfo, &tap) : (Py_INCREF(Py_None), Py_None);
    jpeg_destroy_decompress(&cinfo);
    free((void *)row);
    free(tap.plane);
    PyBuffer_Release(&data);
    if (luma == NULL) {
        Py_DECREF((PyObject *)out);
        return NULL;
    }
    return Py_BuildValue("(NiiiN)", (PyObject *)out, height, width, channels, luma);
}

static PyMethodDef methods[] = {
    {"decode", decode, METH_VARARGS, "Decode a JPEG (whole, DCT-scaled, or one region) with strict integrity rules."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_jpeg", NULL, -1, methods};

PyMODINIT_FUNC PyInit__jpeg(void) {
    init_quadrant();
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    JpegError = PyErr_NewException("engine.imaging._jpeg.Error", PyExc_ValueError, NULL);
    if (JpegError == NULL || PyModule_AddObjectRef(m, "Error", JpegError) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
