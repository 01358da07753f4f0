/*
 * Checkpoints for the insitra-ckpt tests (tests/ckpt_cli.cmake), and damaged
 * copies of them:
 *   make DIR                  a tiny trainer (run it on 2 ranks, ZeRO stage 1,
 *                             samples included) trains 3 steps and saves to
 *                             DIR, then 3 more and saves again: step-3, step-6
 *   corrupt SRC DST DATASET   DST = SRC with one byte flipped in the middle of
 *                             DATASET's raw data (its place from H5Dget_offset)
 *   truncate SRC DST          DST = the first half of SRC
 *   version SRC DST N         DST = SRC with insitra_format set to N
 */
#include <errno.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hdf5.h>

#include "insitra.h"

enum { T = 8, FI = 3, FO = 2, N = 12 };

static int rank;

static int fail(const char *what, const char *detail)
{
    printf("rank %d: %s: %s\n", rank, what, detail);
    return 1;
}

static int make(const char *dir)
{
    insitra_config *cfg = NULL;
    insitra_config_create(&cfg);
    const char *yaml = "model: {seq_len: 8, in_features: 3, out_features: 2, d_model: 16,\n"
                       "        n_layers: 2, n_heads: 2}\n"
                       "training: {batch_size: 4, seed: 5}\n"
                       "data: {capacity: 16}\n"
                       "parallel: {zero_stage: 1}\n"
                       "checkpoint: {include_samples: true, keep_last: 3}\n";
    insitra_trainer *t = NULL;
    if (insitra_config_load_yaml_string(cfg, yaml) != INSITRA_STATUS_OK ||
        insitra_trainer_create(&t, cfg, MPI_COMM_WORLD) != INSITRA_STATUS_OK)
        return fail("setup", insitra_last_error());
    insitra_config_free(cfg);

    static float x[N][T][FI], y[N][T][FO];
    for (int i = 0; i < N * T * FI; i++) (&x[0][0][0])[i] = (float)sin(0.3 * i + rank);
    for (int i = 0; i < N * T * FO; i++) (&y[0][0][0])[i] = (float)cos(0.2 * i - rank);
    /* Rank 1 holds fewer samples: the stored counts differ per rank. */
    if (insitra_push_samples(t, N - 2 * rank, &x[0][0][0], &y[0][0][0]) != INSITRA_STATUS_OK)
        return fail("push", insitra_last_error());
    char path[4096];
    for (int save = 0; save < 2; save++) {
        for (int s = 0; s < 3; s++)
            if (insitra_train_step(t, NULL) != INSITRA_STATUS_OK)
                return fail("train", insitra_last_error());
        if (insitra_checkpoint_save(t, dir, path, sizeof path) != INSITRA_STATUS_OK)
            return fail("save", insitra_last_error());
        if (rank == 0) printf("saved %s\n", path);
    }
    insitra_trainer_free(t);
    return 0;
}

static int copy_file(const char *src, const char *dst, double fraction)
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

static int corrupt(const char *src, const char *dst, const char *dataset)
{
    if (copy_file(src, dst, 1.0)) return 1;
    hid_t file = H5Fopen(dst, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t dset = file < 0 ? -1 : H5Dopen2(file, dataset, H5P_DEFAULT);
    const haddr_t offset = dset < 0 ? HADDR_UNDEF : H5Dget_offset(dset);
    const hsize_t bytes = dset < 0 ? 0 : H5Dget_storage_size(dset);
    if (dset >= 0) H5Dclose(dset);
    if (file >= 0) H5Fclose(file);
    if (offset == HADDR_UNDEF || bytes == 0)
        return fail(dataset, "no contiguous raw data in the file");
    FILE *f = fopen(dst, "r+b");
    if (!f) return fail(dst, strerror(errno));
    const long at = (long)(offset + bytes / 2);
    fseek(f, at, SEEK_SET);
    const int byte = fgetc(f);
    fseek(f, at, SEEK_SET);
    fputc(byte ^ 0x5A, f);
    fclose(f);
    printf("flipped bits of the byte at %ld (inside %s, %llu bytes at %llu)\n", at, dataset,
           (unsigned long long)bytes, (unsigned long long)offset);
    return 0;
}

static int set_version(const char *src, const char *dst, int version)
{
    if (copy_file(src, dst, 1.0)) return 1;
    hid_t file = H5Fopen(dst, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t attr = file < 0 ? -1 : H5Aopen(file, "insitra_format", H5P_DEFAULT);
    const int ok = attr >= 0 && H5Awrite(attr, H5T_NATIVE_INT, &version) >= 0;
    if (attr >= 0) H5Aclose(attr);
    if (file >= 0) H5Fclose(file);
    return ok ? 0 : fail(dst, "cannot rewrite insitra_format");
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    int rc = 2;
    const char *mode = argc > 1 ? argv[1] : "";
    if (!strcmp(mode, "make") && argc == 3)
        rc = make(argv[2]);
    else if (!strcmp(mode, "corrupt") && argc == 5)
        rc = corrupt(argv[2], argv[3], argv[4]);
    else if (!strcmp(mode, "truncate") && argc == 4)
        rc = copy_file(argv[2], argv[3], 0.5);
    else if (!strcmp(mode, "version") && argc == 5)
        rc = set_version(argv[2], argv[3], atoi(argv[4]));
    else
        fprintf(stderr, "usage: test_ckpt_cli_make make DIR | corrupt SRC DST DATASET |\n"
                        "       truncate SRC DST | version SRC DST N\n");
    MPI_Finalize();
    return rc;
}
