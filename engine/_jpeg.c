/* Every JPEG pixel the worker uses comes from here: libjpeg-turbo with strict integrity rules.
 *
 * decode(data, scale_denom, top, left, height, width, max_scans, check_tail) -> (bytes, height, width, channels)
 *
 * - Whole image (height == 0): RGB, or raw CMYK for 4-component files (the caller converts
 *   those as Pillow does), DCT-scaled by 1/scale_denom (1, 2, 4, 8) in the IDCT itself.
 * - Region (height > 0, scale 1, YCbCr or greyscale): only the rectangle is colour-converted
 *   (jpeg_skip_scanlines skips the IDCT of the rows above, jpeg_crop_scanline the columns
 *   outside); the rows below are still entropy-decoded, so that a file cut short or corrupt
 *   after the crop is refused exactly as a full decode refuses it, unless check_tail is false
 *   (the caller decodes the whole file in another pass anyway: PDQ's). The caller asks for one MCU
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
 * Errors raise engine._jpeg.Error(kind, message), kind one of "truncated", "corrupt",
 * "too_complex", "unsupported", or "no_region" when a region was asked of a file that needs a
 * full decode (progressive, multi-scan, CMYK).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <jpeglib.h>
#include <jerror.h>

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

static PyObject *decode(PyObject *self, PyObject *args) {
    Py_buffer data;
    int scale, top, left, height, width, max_scans, check_tail;
    if (!PyArg_ParseTuple(args, "y*iiiiiip", &data, &scale, &top, &left, &height, &width, &max_scans, &check_tail))
        return NULL;

    struct jpeg_decompress_struct cinfo;
    struct strict_error err;
    struct scan_limit limit;
    /* volatile: both change after setjmp and are freed on the error path */
    JSAMPLE *volatile row = NULL;
    PyObject *volatile out = NULL;
    const char *refusal = NULL;

    memset(&err, 0, sizeof(err));
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error;
    err.pub.emit_message = on_message;
    if (setjmp(err.escape)) {
        jpeg_destroy_decompress(&cinfo);
        free((void *)row);
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
    if (region && !check_tail) { /* the caller checks the rest of the file in another pass */
        jpeg_destroy_decompress(&cinfo);
        free((void *)row);
        PyBuffer_Release(&data);
        return Py_BuildValue("(Niii)", (PyObject *)out, height, width, channels);
    }
    /* The rows below a region: skipping to the very end would only mark the input finished, so
     * skip all but the last row (entropy decoding, no IDCT) and read that one. */
    if (cinfo.output_scanline + 1 < cinfo.output_height)
        jpeg_skip_scanlines(&cinfo, cinfo.output_height - cinfo.output_scanline - 1);
    if (cinfo.output_scanline < cinfo.output_height && jpeg_read_scanlines(&cinfo, rows, 1) != 1)
        escape((j_common_ptr)&cinfo, "truncated");
    jpeg_finish_decompress(&cinfo); /* reads up to the end marker: a missing one is a warning, fatal here */
    jpeg_destroy_decompress(&cinfo);
    free((void *)row);
    PyBuffer_Release(&data);
    return Py_BuildValue("(Niii)", (PyObject *)out, height, width, channels);
}

static PyMethodDef methods[] = {
    {"decode", decode, METH_VARARGS, "Decode a JPEG (whole, DCT-scaled, or one region) with strict integrity rules."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_jpeg", NULL, -1, methods};

PyMODINIT_FUNC PyInit__jpeg(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    JpegError = PyErr_NewException("worker._jpeg.Error", PyExc_ValueError, NULL);
    if (JpegError == NULL || PyModule_AddObjectRef(m, "Error", JpegError) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
