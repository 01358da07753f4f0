/*
 * Fixture reader; see fixture.h and tests/reference/make_parity_fixture.py.
 */
#include "fixture.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const unsigned char FIXTURE_MAGIC[8] = {'I', 'N', 'S', 'F', 'I', 'X', 'T', '\0'};
enum {
    FIXTURE_VERSION = 1,
    FIXTURE_HEADER_BYTES = 16,  /* magic, u32 version, u32 record count */
    FIXTURE_NAME_BYTES = 64,
    /* name, u32 dtype, u32 ndim, i64 shape[4], i64 nbytes */
    FIXTURE_RECORD_HEADER_BYTES = FIXTURE_NAME_BYTES + 4 + 4 + 8 * FIXTURE_MAX_NDIM + 8
};

static int fail(fixture *f, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->error, sizeof(f->error), fmt, ap);
    va_end(ap);
    return -1;
}

/* The file is little-endian; fields are read with memcpy, which is only
 * correct on a little-endian host. Every machine we target is, but a wrong
 * answer would be silent, so say so instead. */
static int host_is_little_endian(void) {
    const uint32_t one = 1;
    unsigned char first;
    memcpy(&first, &one, 1);
    return first == 1;
}

static uint32_t read_u32(const unsigned char *p) {
    uint32_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

static int64_t read_i64(const unsigned char *p) {
    int64_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

static int64_t dtype_size(uint32_t dtype) {
    switch (dtype) {
    case FIXTURE_DTYPE_FLOAT32: return 4;
    case FIXTURE_DTYPE_FLOAT64: return 8;
    case FIXTURE_DTYPE_INT64: return 8;
    default: return 0;
    }
}

const char *fixture_dtype_name(fixture_dtype dtype) {
    switch (dtype) {
    case FIXTURE_DTYPE_FLOAT32: return "float32";
    case FIXTURE_DTYPE_FLOAT64: return "float64";
    case FIXTURE_DTYPE_INT64: return "int64";
    default: return "unknown";
    }
}

void fixture_format_shape(char *buf, size_t buf_size, int32_t ndim, const int64_t *shape) {
    /* snprintf returns the length it wanted; stop once the buffer is full. */
    size_t used = (size_t)snprintf(buf, buf_size, "(");
    for (int32_t i = 0; i < ndim && used < buf_size; i++) {
        used += (size_t)snprintf(buf + used, buf_size - used, "%s%lld", i ? ", " : "",
                                 (long long)shape[i]);
    }
    if (used < buf_size) {
        snprintf(buf + used, buf_size - used, ")");
    }
}

static int read_file(fixture *f, const char *path) {
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        return fail(f, "%s: cannot open: %s", path, strerror(errno));
    }
    long size = -1;
    if (fseek(fp, 0, SEEK_END) == 0) {
        size = ftell(fp);
    }
    if (size < 0 || fseek(fp, 0, SEEK_SET) != 0) {
        fclose(fp);
        return fail(f, "%s: cannot determine the file size", path);
    }
    /* malloc's alignment (at least 8) plus the format's 8-byte record
     * alignment is what lets records be used in place. */
    f->bytes = malloc(size > 0 ? (size_t)size : 1);
    if (!f->bytes) {
        fclose(fp);
        return fail(f, "%s: out of memory reading %ld bytes", path, size);
    }
    f->size = (size_t)size;
    size_t got = fread(f->bytes, 1, f->size, fp);
    fclose(fp);
    if (got != f->size) {
        return fail(f, "%s: read %zu of %zu bytes", path, got, f->size);
    }
    return 0;
}

/* Parses record i's header at byte offset *pos and advances *pos past its
 * padded data. */
static int parse_record(fixture *f, const char *path, int64_t i, size_t *pos) {
    fixture_record *r = &f->records[i];
    const unsigned char *h = f->bytes + *pos;
    if (f->size - *pos < FIXTURE_RECORD_HEADER_BYTES) {
        return fail(f, "%s: record %lld: header truncated at byte %zu of %zu", path,
                    (long long)i, *pos, f->size);
    }
    if (!memchr(h, '\0', FIXTURE_NAME_BYTES) || h[0] == '\0') {
        return fail(f, "%s: record %lld at byte %zu: name empty or not NUL-terminated", path,
                    (long long)i, *pos);
    }
    r->name = (const char *)h;
    uint32_t dtype = read_u32(h + FIXTURE_NAME_BYTES);
    uint32_t ndim = read_u32(h + FIXTURE_NAME_BYTES + 4);
    int64_t nbytes = read_i64(h + FIXTURE_NAME_BYTES + 8 + 8 * FIXTURE_MAX_NDIM);
    int64_t size = dtype_size(dtype);
    if (size == 0) {
        return fail(f, "%s: record '%s': unknown dtype %u", path, r->name, dtype);
    }
    if (ndim > FIXTURE_MAX_NDIM) {
        return fail(f, "%s: record '%s': ndim %u, at most %d", path, r->name, ndim,
                    FIXTURE_MAX_NDIM);
    }
    r->dtype = (fixture_dtype)dtype;
    r->ndim = (int32_t)ndim;
    r->numel = 1;
    for (int d = 0; d < FIXTURE_MAX_NDIM; d++) {
        r->shape[d] = read_i64(h + FIXTURE_NAME_BYTES + 8 + 8 * d);
        if (d >= r->ndim) {
            continue;
        }
        /* the bound keeps numel * size far from overflow */
        if (r->shape[d] < 0 || (r->numel > 0 && r->shape[d] > ((int64_t)1 << 40) / r->numel)) {
            return fail(f, "%s: record '%s': bad extent %lld in dimension %d", path, r->name,
                        (long long)r->shape[d], d);
        }
        r->numel *= r->shape[d];
    }
    if (nbytes != r->numel * size) {
        return fail(f, "%s: record '%s': %lld data bytes, but %s x %lld elements need %lld",
                    path, r->name, (long long)nbytes, fixture_dtype_name(r->dtype),
                    (long long)r->numel, (long long)(r->numel * size));
    }
    *pos += FIXTURE_RECORD_HEADER_BYTES;
    size_t padded = ((size_t)nbytes + 7) & ~(size_t)7;
    if (f->size - *pos < padded) {
        return fail(f, "%s: record '%s': data truncated (%zu bytes needed at byte %zu of %zu)",
                    path, r->name, padded, *pos, f->size);
    }
    r->data = f->bytes + *pos;
    *pos += padded;
    return 0;
}

int fixture_load(fixture *f, const char *path) {
    memset(f, 0, sizeof(*f));
    if (!host_is_little_endian()) {
        return fail(f, "%s: the fixture reader supports little-endian hosts only", path);
    }
    if (read_file(f, path) != 0) {
        goto error;
    }
    if (f->size < FIXTURE_HEADER_BYTES || memcmp(f->bytes, FIXTURE_MAGIC, 8) != 0) {
        fail(f, "%s: not a fixture file (bad magic)", path);
        goto error;
    }
    uint32_t version = read_u32(f->bytes + 8);
    if (version != FIXTURE_VERSION) {
        fail(f, "%s: fixture version %u, this reader knows %d", path, version, FIXTURE_VERSION);
        goto error;
    }
    f->num_records = read_u32(f->bytes + 12);
    f->records = calloc(f->num_records > 0 ? (size_t)f->num_records : 1, sizeof(fixture_record));
    if (!f->records) {
        fail(f, "%s: out of memory for %lld records", path, (long long)f->num_records);
        goto error;
    }
    size_t pos = FIXTURE_HEADER_BYTES;
    for (int64_t i = 0; i < f->num_records; i++) {
        if (parse_record(f, path, i, &pos) != 0) {
            goto error;
        }
        for (int64_t j = 0; j < i; j++) {
            if (strcmp(f->records[j].name, f->records[i].name) == 0) {
                fail(f, "%s: record '%s' appears twice", path, f->records[i].name);
                goto error;
            }
        }
    }
    /* Trailing bytes mean the writer and the reader disagree on the format. */
    if (pos != f->size) {
        fail(f, "%s: %zu unexpected bytes after the last of %lld records", path, f->size - pos,
             (long long)f->num_records);
        goto error;
    }
    return 0;

error:
    fixture_free(f); /* f holds no memory on failure; the message stays */
    return -1;
}

void fixture_free(fixture *f) {
    if (!f) {
        return;
    }
    free(f->records);
    free(f->bytes);
    f->records = NULL;
    f->bytes = NULL;
    f->size = 0;
    f->num_records = 0;
}

const fixture_record *fixture_find(const fixture *f, const char *name) {
    for (int64_t i = 0; i < f->num_records; i++) {
        if (strcmp(f->records[i].name, name) == 0) {
            return &f->records[i];
        }
    }
    return NULL;
}

static const fixture_record *find_typed(fixture *f, const char *name, fixture_dtype dtype) {
    const fixture_record *r = fixture_find(f, name);
    if (!r) {
        fail(f, "record '%s' not in the fixture", name);
        return NULL;
    }
    if (r->dtype != dtype) {
        fail(f, "record '%s' is %s, expected %s", name, fixture_dtype_name(r->dtype),
             fixture_dtype_name(dtype));
        return NULL;
    }
    return r;
}

int fixture_get_f32(fixture *f, const char *name, int32_t ndim, const int64_t *shape,
                    const float **data) {
    const fixture_record *r = find_typed(f, name, FIXTURE_DTYPE_FLOAT32);
    if (!r) {
        return -1;
    }
    int same = r->ndim == ndim;
    for (int32_t d = 0; same && d < ndim; d++) {
        same = r->shape[d] == shape[d];
    }
    if (!same) {
        char have[96], want[96];
        fixture_format_shape(have, sizeof(have), r->ndim, r->shape);
        fixture_format_shape(want, sizeof(want), ndim, shape);
        return fail(f, "record '%s' has shape %s, expected %s", name, have, want);
    }
    *data = r->data;
    return 0;
}

int fixture_get_f64(fixture *f, const char *name, const double **data, int64_t *numel) {
    const fixture_record *r = find_typed(f, name, FIXTURE_DTYPE_FLOAT64);
    if (!r) {
        return -1;
    }
    *data = r->data;
    *numel = r->numel;
    return 0;
}

/* The 8-byte value of a scalar record of this dtype (float64 and int64 both
 * hold 8 bytes), into value. */
static int read_scalar(fixture *f, const char *name, fixture_dtype dtype, void *value) {
    const fixture_record *r = find_typed(f, name, dtype);
    if (!r) {
        return -1;
    }
    if (r->ndim != 0) {
        return fail(f, "record '%s' has %d dimensions, expected a scalar", name, r->ndim);
    }
    memcpy(value, r->data, 8);
    return 0;
}

int fixture_scalar_f64(fixture *f, const char *name, double *value) {
    return read_scalar(f, name, FIXTURE_DTYPE_FLOAT64, value);
}

int fixture_scalar_i64(fixture *f, const char *name, int64_t *value) {
    return read_scalar(f, name, FIXTURE_DTYPE_INT64, value);
}
