/* Damage to a checkpoint file (ckpt_damage.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hdf5.h>

#include "ckpt_damage.h"

static int fail(const char *what, const char *detail)
{
    printf("damage: %s: %s\n", what, detail);
    return 1;
}

int damage_copy(const char *src, const char *dst, double fraction)
{
    FILE *in = fopen(src, "rb"), *out = in ? fopen(dst, "wb") : NULL;
    if (!in || !out) {
        if (in) fclose(in);
        return fail(in ? dst : src, strerror(errno));
    }
    fseek(in, 0, SEEK_END);
    const long keep = (long)((double)ftell(in) * fraction);
    fseek(in, 0, SEEK_SET);
    char buf[65536];
    long done = 0;
    while (done < keep) {
        const size_t want = keep - done < (long)sizeof buf ? (size_t)(keep - done) : sizeof buf;
        const size_t got = fread(buf, 1, want, in);
        if (got == 0 || fwrite(buf, 1, got, out) != got) break;
        done += (long)got;
    }
    fclose(in);
    const int ok = fclose(out) == 0 && done == keep;
    return ok ? 0 : fail(dst, "copy failed");
}

int damage_flip_data(const char *file, const char *dataset)
{
    hid_t f = H5Fopen(file, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t d = f < 0 ? -1 : H5Dopen2(f, dataset, H5P_DEFAULT);
    const haddr_t offset = d < 0 ? HADDR_UNDEF : H5Dget_offset(d);
    const hsize_t bytes = d < 0 ? 0 : H5Dget_storage_size(d);
    if (d >= 0) H5Dclose(d);
    if (f >= 0) H5Fclose(f);
    if (offset == HADDR_UNDEF || bytes == 0) return fail(dataset, "no contiguous raw data in the file");
    FILE *fp = fopen(file, "r+b");
    if (!fp) return fail(file, strerror(errno));
    const long at = (long)(offset + bytes / 2);
    fseek(fp, at, SEEK_SET);
    const int byte = fgetc(fp);
    fseek(fp, at, SEEK_SET);
    fputc(byte ^ 0x5A, fp);
    fclose(fp);
    printf("flipped bits of the byte at %ld (inside %s, %llu bytes at %llu)\n", at, dataset,
           (unsigned long long)bytes, (unsigned long long)offset);
    return 0;
}

int damage_set_int(const char *file, const char *name, int64_t value)
{
    hid_t f = H5Fopen(file, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t a = f < 0 ? -1 : H5Aopen(f, name, H5P_DEFAULT);
    const int ok = a >= 0 && H5Awrite(a, H5T_NATIVE_INT64, &value) >= 0;
    if (a >= 0) H5Aclose(a);
    if (f >= 0) H5Fclose(f);
    return ok ? 0 : fail(file, "cannot rewrite an integer attribute");
}

int damage_config(const char *file, const char *from, const char *to)
{
    hid_t f = H5Fopen(file, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t a = f < 0 ? -1 : H5Aopen(f, "config", H5P_DEFAULT);
    hid_t type = a < 0 ? -1 : H5Aget_type(a);
    const size_t size = type < 0 ? 0 : H5Tget_size(type);
    char *text = size ? calloc(size + 1, 1) : NULL;
    char *at = text && H5Aread(a, type, text) >= 0 ? strstr(text, from) : NULL;
    int ok = at && strlen(from) == strlen(to);
    if (ok) {
        memcpy(at, to, strlen(to));
        ok = H5Awrite(a, type, text) >= 0;
    }
    free(text);
    if (type >= 0) H5Tclose(type);
    if (a >= 0) H5Aclose(a);
    if (f >= 0) H5Fclose(f);
    return ok ? 0 : fail(file, "cannot rewrite the stored configuration");
}

int damage_downgrade(const char *file)
{
    static const char *tables[] = {"ranks/sampler_state", "ranks/sample_cursor", "ranks/samples_pushed",
                                   "samples/count"};
    hid_t f = H5Fopen(file, H5F_ACC_RDWR, H5P_DEFAULT);
    int ok = f >= 0 && H5Adelete(f, "meta_crc32c") >= 0;
    for (size_t k = 0; ok && k < sizeof tables / sizeof tables[0]; k++)
        if (H5Lexists(f, "samples", H5P_DEFAULT) > 0 || k < 3)
            ok = H5Adelete_by_name(f, tables[k], "crc32c", H5P_DEFAULT) >= 0;
    if (f >= 0) H5Fclose(f);
    return ok ? damage_set_int(file, "insitra_format", 1) : fail(file, "cannot make it format 1");
}
