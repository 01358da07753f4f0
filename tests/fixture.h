/*
 * Reader for the test fixtures written by tests/reference/make_parity_fixture.py
 * (the format is documented at the top of that script): a magic and version,
 * then named records, each a dtype, a shape and little-endian row-major data.
 *
 * The whole file is read into one buffer and records point into it, so a
 * float32 record can be used in place as a const float array. Functions
 * return 0 on success and -1 on failure, with a message in fixture.error;
 * nothing here prints or exits, the caller decides.
 */
#ifndef INSITRA_TESTS_FIXTURE_H
#define INSITRA_TESTS_FIXTURE_H

#include <stddef.h>
#include <stdint.h>

#define FIXTURE_MAX_NDIM 4

typedef enum fixture_dtype {
    FIXTURE_DTYPE_FLOAT32 = 1,
    FIXTURE_DTYPE_FLOAT64 = 2,
    FIXTURE_DTYPE_INT64 = 3
} fixture_dtype;

typedef struct fixture_record {
    const char *name;                 /* NUL-terminated, points into the file buffer */
    fixture_dtype dtype;
    int32_t ndim;                     /* 0 for a scalar */
    int64_t shape[FIXTURE_MAX_NDIM];  /* the first ndim are used */
    int64_t numel;                    /* product of shape; 1 for a scalar */
    const void *data;                 /* numel elements, 8-byte aligned */
} fixture_record;

typedef struct fixture {
    unsigned char *bytes;     /* the whole file */
    size_t size;
    int64_t num_records;
    fixture_record *records;  /* in file order */
    char error[512];          /* message of the last failed call */
} fixture;

/* Reads and validates the file at path (magic, version, every record header,
 * sizes, no duplicate names, nothing after the last record). On failure f
 * holds no memory and f->error says what is wrong and where. */
int fixture_load(fixture *f, const char *path);
void fixture_free(fixture *f);

/* The record called name, or NULL. */
const fixture_record *fixture_find(const fixture *f, const char *name);

/* The data of record name, checked to be float32 with exactly this shape
 * (ndim entries of shape; ndim 0 for a scalar). */
int fixture_get_f32(fixture *f, const char *name, int32_t ndim, const int64_t *shape,
                    const float **data);
/* The data of a float64 record of any shape, and its element count. */
int fixture_get_f64(fixture *f, const char *name, const double **data, int64_t *numel);
/* The value of a scalar record, float64 or int64 respectively. */
int fixture_scalar_f64(fixture *f, const char *name, double *value);
int fixture_scalar_i64(fixture *f, const char *name, int64_t *value);

/* "float32", "float64", "int64" or "unknown", for messages. */
const char *fixture_dtype_name(fixture_dtype dtype);
/* Writes a shape as "(3, 8, 5)" into buf, for messages. */
void fixture_format_shape(char *buf, size_t buf_size, int32_t ndim, const int64_t *shape);

#endif /* INSITRA_TESTS_FIXTURE_H */
