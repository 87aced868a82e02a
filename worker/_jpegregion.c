/* Decode one rectangle of a baseline JPEG without decoding the rest.
 *
 * libjpeg-turbo can skip whole rows of MCUs (jpeg_skip_scanlines: entropy decoding only,
 * no IDCT, no colour conversion), restrict decoding to a band of MCU columns
 * (jpeg_crop_scanline), and stop once the last needed row is out. The caller asks for a
 * region with a margin of at least one MCU around what it keeps, so that upsampling at
 * the region's edges sees the same neighbours as a full decode.
 *
 * decode_region(data, top, left, height, width) -> bytes (height * width * 3, RGB)
 * Raises ValueError for anything it does not handle bit-identically (progressive or
 * multi-scan files, colour spaces other than YCbCr/greyscale, any libjpeg warning such as
 * premature end of data); the caller then falls back to a full decode.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <jpeglib.h>

struct region_error {
    struct jpeg_error_mgr pub;
    jmp_buf escape;
    int warned;
    char message[JMSG_LENGTH_MAX];
};

static void on_error(j_common_ptr cinfo) {
    struct region_error *err = (struct region_error *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->escape, 1);
}

static void on_message(j_common_ptr cinfo, int level) {
    struct region_error *err = (struct region_error *)cinfo->err;
    if (level < 0 && !err->warned) { /* a warning: corrupt or truncated data */
        err->warned = 1;
        (*cinfo->err->format_message)(cinfo, err->message);
    }
}

static PyObject *decode_region(PyObject *self, PyObject *args) {
    Py_buffer data;
    int top, left, height, width;
    if (!PyArg_ParseTuple(args, "y*iiii", &data, &top, &left, &height, &width))
        return NULL;

    struct jpeg_decompress_struct cinfo;
    struct region_error err;
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
        PyErr_Format(PyExc_ValueError, "libjpeg: %s", err.message);
        return NULL;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, (const unsigned char *)data.buf, (unsigned long)data.len);
    jpeg_read_header(&cinfo, TRUE);

    if (cinfo.progressive_mode || jpeg_has_multiple_scans(&cinfo))
        refusal = "progressive or multi-scan JPEG";
    else if (!((cinfo.num_components == 3 && cinfo.jpeg_color_space == JCS_YCbCr) ||
               (cinfo.num_components == 1 && cinfo.jpeg_color_space == JCS_GRAYSCALE)))
        refusal = "colour space other than YCbCr or greyscale";
    else if (top < 0 || left < 0 || height <= 0 || width <= 0 ||
             (JDIMENSION)(top + height) > cinfo.image_height || (JDIMENSION)(left + width) > cinfo.image_width)
        refusal = "region outside the image";
    if (refusal) {
        jpeg_destroy_decompress(&cinfo);
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, refusal);
        return NULL;
    }

    cinfo.out_color_space = JCS_RGB;
    jpeg_start_decompress(&cinfo);
    JDIMENSION xoffset = (JDIMENSION)left, xwidth = (JDIMENSION)width;
    jpeg_crop_scanline(&cinfo, &xoffset, &xwidth); /* widens to whole MCU columns */
    JDIMENSION skip = (JDIMENSION)left - xoffset;
    if ((JDIMENSION)top > 0 && jpeg_skip_scanlines(&cinfo, (JDIMENSION)top) != (JDIMENSION)top) {
        strcpy(err.message, "could not skip to the region");
        longjmp(err.escape, 1);
    }

    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)height * width * 3);
    row = malloc((size_t)cinfo.output_width * 3);
    if (out == NULL || row == NULL) {
        jpeg_destroy_decompress(&cinfo);
        free((void *)row);
        Py_XDECREF((PyObject *)out);
        PyBuffer_Release(&data);
        return PyErr_NoMemory();
    }
    unsigned char *dst = (unsigned char *)PyBytes_AS_STRING((PyObject *)out);
    JSAMPROW rows[1] = {(JSAMPROW)row};
    for (int y = 0; y < height; y++) {
        if (jpeg_read_scanlines(&cinfo, rows, 1) != 1) {
            strcpy(err.message, "data ended inside the region");
            longjmp(err.escape, 1);
        }
        memcpy(dst + (size_t)y * width * 3, (JSAMPLE *)row + (size_t)skip * 3, (size_t)width * 3);
    }
    jpeg_abort_decompress(&cinfo); /* the rows below are never decoded */
    jpeg_destroy_decompress(&cinfo);
    free((void *)row);
    PyBuffer_Release(&data);
    if (err.warned) {
        Py_DECREF((PyObject *)out);
        PyErr_Format(PyExc_ValueError, "libjpeg warning: %s", err.message);
        return NULL;
    }
    return (PyObject *)out;
}

static PyMethodDef methods[] = {
    {"decode_region", decode_region, METH_VARARGS, "Decode a rectangle of a baseline JPEG to RGB bytes."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_jpegregion", NULL, -1, methods};

PyMODINIT_FUNC PyInit__jpegregion(void) { return PyModule_Create(&module); }
