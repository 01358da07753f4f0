/*
 * The surrogate and the export file (issue #19): a surrogate made from a
 * live trainer, from an export and from a checkpoint predicts exactly what
 * insitra_predict does (the same forward, the same micro-batches); on one
 * rank alone (no collective); in chunks of max_batch; with data.normalize
 * and model.residual on the same, the statistics from /normalize of the
 * export or checkpoint; the export's attributes are int64 and
 * carry the format version; every kind of bad file or argument fails with a
 * message naming it.
 *
 *   test_surrogate <scratch dir> [zero_stage]
 */
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "insitra.h"
#include "test_util.h"

enum { T = 8, FI = 3, FO = 2, MB = 4, N = 11 };

static void fill_samples(float *x, float *y, int64_t n, int rank)
{
    for (int64_t i = 0; i < n * T * FI; i++) x[i] = (float)sin(0.37 * (double)i + rank);
    for (int64_t i = 0; i < n * T * FO; i++) y[i] = (float)cos(0.21 * (double)i - rank);
}

static bool same_bits(const float *a, const float *b, int64_t n)
{
    return memcmp(a, b, (size_t)n * sizeof(float)) == 0;
}

/* Deletes a link (a dataset or group) of a file (one process). */
static void unlink_h5(const char *path, const char *name)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    H5Ldelete(f, name, H5P_DEFAULT);
    H5Fclose(f);
}

/* Overwrites one value of a dataset (its crc32c left as it was). */
static void damage(const char *path, const char *dataset)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t d = H5Dopen2(f, dataset, H5P_DEFAULT);
    hid_t fs = H5Dget_space(d);
    const hsize_t start[2] = {0, 0}, one[2] = {1, 1};
    H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, one, NULL);
    hid_t ms = H5Screate_simple(1, one, NULL);
    const float v = 12345.0f;
    H5Dwrite(d, H5T_NATIVE_FLOAT, ms, fs, H5P_DEFAULT, &v);
    H5Sclose(ms);
    H5Sclose(fs);
    H5Dclose(d);
    H5Fclose(f);
}

/* Overwrites the first value of a float64 dataset (its crc32c left as it was). */
static void damage_f64(const char *path, const char *dataset)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t d = H5Dopen2(f, dataset, H5P_DEFAULT);
    double v[FO];
    H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
    v[0] += 0.5;
    H5Dwrite(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
    H5Dclose(d);
    H5Fclose(f);
}

static herr_t check_int_attr(hid_t obj, const char *name, const H5A_info_t *info, void *ctx)
{
    (void)info;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    hid_t type = H5Aget_type(a);
    if (H5Tget_class(type) == H5T_INTEGER && H5Tget_size(type) != 8) {
        fprintf(stderr, "export attribute '%s' is a %zu-byte integer\n", name, H5Tget_size(type));
        ++*(int *)ctx;
    }
    H5Tclose(type);
    H5Aclose(a);
    return 0;
}

static void copy_file(const char *from, const char *to)
{
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    char buf[65536];
    for (size_t n; a && b && (n = fread(buf, 1, sizeof buf, a)) > 0;) fwrite(buf, 1, n, b);
    if (a) fclose(a);
    if (b) fclose(b);
}

/* A file that must not load: the status and a message holding `names`. */
static void expect_refused(insitra_test *t, const char *path, const char *names)
{
    insitra_surrogate *s = NULL;
    const insitra_status st = insitra_surrogate_create(&s, path, NULL, MB, MPI_COMM_WORLD);
    EXPECT(t, st != INSITRA_STATUS_OK && s == NULL, "%s loaded", path);
    EXPECT(t, strstr(insitra_last_error(), names) != NULL, "message for %s lacks '%s': %s", path, names,
           insitra_last_error());
    insitra_surrogate_free(s);
}

int main(int argc, char **argv)
{
    insitra_test t = insitra_test_begin(&argc, &argv, "surrogate");
    const char *dir = argc > 1 ? argv[1] : ".";
    const int stage = argc > 2 ? atoi(argv[2]) : 0;
    char exported[4096], ckpt[4096], ckpt_dir[4096], normed[4096], bad[4096];
    snprintf(exported, sizeof exported, "%s/surrogate-np%d-s%d.h5", dir, t.size, stage);
    snprintf(ckpt_dir, sizeof ckpt_dir, "%s/surrogate-ckpt-np%d-s%d", dir, t.size, stage);
    snprintf(normed, sizeof normed, "%s/surrogate-norm-np%d-s%d.h5", dir, t.size, stage);
    snprintf(bad, sizeof bad, "%s/surrogate-bad-np%d-s%d.h5", dir, t.size, stage);

    insitra_config *cfg = insitra_test_config(
        &t, "model: {seq_len: 8, in_features: 3, out_features: 2, d_model: 16, n_layers: 2, n_heads: 2}\n"
            "training: {batch_size: 8, micro_batch_size: 4}\ndata: {capacity: 64}\n");
    insitra_test_set(&t, cfg, "parallel.zero_stage", "%d", stage);
    insitra_trainer *tr = NULL;
    if (!EXPECT_OK(&t, insitra_trainer_create(&tr, cfg, MPI_COMM_WORLD), "trainer_create")) return insitra_test_end(&t);
    static float x[N * T * FI], y[N * T * FO], ref[N * T * FO], got[N * T * FO];
    fill_samples(x, y, N, t.rank);
    EXPECT_OK(&t, insitra_push_samples(tr, N, x, y), "push");
    for (int k = 0; k < 3; k++) EXPECT_OK(&t, insitra_train_step(tr, NULL), "train_step");
    EXPECT_OK(&t, insitra_predict(tr, N, x, ref), "predict");

    /* from the live trainer, then the trainer trains on: the surrogate keeps its parameters */
    insitra_surrogate *live = NULL;
    EXPECT_OK(&t, insitra_surrogate_create_from_trainer(&live, tr, NULL, MB), "surrogate from the trainer");
    EXPECT_OK(&t, insitra_export_save(tr, exported), "export_save");
    EXPECT_OK(&t, insitra_checkpoint_save(tr, ckpt_dir, ckpt, sizeof ckpt), "checkpoint_save");
    EXPECT_OK(&t, insitra_train_step(tr, NULL), "train_step after the surrogate");
    memset(got, 0, sizeof got);
    EXPECT_OK(&t, insitra_surrogate_predict(live, N, x, got), "predict (live)");
    EXPECT(&t, same_bits(got, ref, N * T * FO), "the live surrogate differs from insitra_predict");

    /* from the export and from the checkpoint */
    const char *files[2] = {exported, ckpt};
    for (int k = 0; k < 2; k++) {
        insitra_surrogate *s = NULL;
        if (!EXPECT_OK(&t, insitra_surrogate_create(&s, files[k], NULL, MB, MPI_COMM_WORLD), files[k])) continue;
        int64_t st_T, st_FI, st_FO;
        EXPECT_OK(&t, insitra_surrogate_sample_shape(s, &st_T, &st_FI, &st_FO), "sample_shape");
        EXPECT(&t, st_T == T && st_FI == FI && st_FO == FO, "shape %lld %lld %lld", (long long)st_T,
               (long long)st_FI, (long long)st_FO);
        memset(got, 0, sizeof got);
        EXPECT_OK(&t, insitra_surrogate_predict(s, N, x, got), "predict (file)");
        EXPECT(&t, same_bits(got, ref, N * T * FO), "the surrogate from %s differs from insitra_predict", files[k]);
        /* local: only the last rank predicts, and fewer samples */
        if (t.rank == t.size - 1) {
            EXPECT_OK(&t, insitra_surrogate_predict(s, 2, x, got), "predict on one rank");
            EXPECT_OK(&t, insitra_surrogate_predict(s, 0, NULL, NULL), "predict of 0 samples");
        }
        insitra_surrogate_free(s);
    }

    /* max_batch 1 and 64: chunking leaves the values as they are, to rounding */
    for (int mb = 1; mb <= 64; mb *= 64) {
        insitra_surrogate *s = NULL;
        if (!EXPECT_OK(&t, insitra_surrogate_create(&s, exported, NULL, mb, MPI_COMM_SELF), "create on COMM_SELF"))
            continue;
        EXPECT_OK(&t, insitra_surrogate_predict(s, N, x, got), "predict");
        char what[64];
        snprintf(what, sizeof what, "max_batch %d against %d", mb, MB);
        insitra_test_within(&t, what, insitra_test_max_error(got, ref, N * T * FO), 1e-5);
        insitra_surrogate_free(s);
    }

    /* the export's attributes: the format version, every integer int64 */
    if (t.rank == 0) {
        hid_t f = H5Fopen(exported, H5F_ACC_RDONLY, H5P_DEFAULT);
        int64_t format = -1;
        hid_t a = H5Aopen(f, "insitra_export_format", H5P_DEFAULT);
        EXPECT(&t, a >= 0 && H5Aread(a, H5T_NATIVE_INT64, &format) >= 0 && format == 1, "export format %lld",
               (long long)format);
        if (a >= 0) H5Aclose(a);
        int narrow = 0;
        H5Aiterate2(f, H5_INDEX_NAME, H5_ITER_NATIVE, NULL, check_int_attr, &narrow);
        EXPECT(&t, narrow == 0, "%d integer attributes of the export are not int64", narrow);
        H5Fclose(f);
    }

    /* data.normalize and model.residual on: the surrogate from the live
     * trainer and from its export predicts what insitra_predict does now, bit
     * for bit, with samples pushed after the last step not yet counted; the
     * checkpoint counts them (as the next step would), and its surrogate
     * predicts what insitra_predict does after the save. */
    insitra_config *ncfg = insitra_test_config(
        &t, "model: {seq_len: 8, in_features: 3, out_features: 2, d_model: 16, n_layers: 2, n_heads: 2,\n"
            "        residual: true, residual_inputs: '2, 0'}\n"
            "training: {batch_size: 8, micro_batch_size: 4}\ndata: {capacity: 64, normalize: running}\n");
    insitra_test_set(&t, ncfg, "parallel.zero_stage", "%d", stage);
    insitra_trainer *tn = NULL;
    static float xs[N * T * FI], ys[N * T * FO], nref[N * T * FO];
    if (EXPECT_OK(&t, insitra_trainer_create(&tn, ncfg, MPI_COMM_WORLD), "trainer_create (normalising)")) {
        /* physical units far from 0 and 1, so the maps matter */
        for (int64_t i = 0; i < N * T * FI; i++) xs[i] = 300.0f + 20.0f * x[i] + (float)(i % FI);
        for (int64_t i = 0; i < N * T * FO; i++) ys[i] = 0.1f * y[i];
        for (int64_t r = 0; r < N * T; r++) { /* y[0] near x[2], y[1] near x[0]: residual '2, 0' */
            ys[r * FO + 0] += xs[r * FI + 2];
            ys[r * FO + 1] += xs[r * FI + 0];
        }
        EXPECT_OK(&t, insitra_push_samples(tn, N, xs, ys), "push (normalising)");
        for (int k = 0; k < 3; k++) EXPECT_OK(&t, insitra_train_step(tn, NULL), "train_step (normalising)");
        EXPECT_OK(&t, insitra_push_samples(tn, 3, ys, xs), "push after the last step");
        EXPECT_OK(&t, insitra_predict(tn, N, xs, nref), "predict (normalising)");
        insitra_surrogate *nlive = NULL, *nexp = NULL, *nck = NULL;
        EXPECT_OK(&t, insitra_surrogate_create_from_trainer(&nlive, tn, NULL, MB), "surrogate from the normalising trainer");
        EXPECT_OK(&t, insitra_export_save(tn, normed), "export_save (normalising)");
        EXPECT_OK(&t, insitra_surrogate_create(&nexp, normed, NULL, MB, MPI_COMM_WORLD), "surrogate of the normalising export");
        insitra_surrogate *both[2] = {nlive, nexp};
        const char *what[2] = {"live trainer", "export"};
        for (int k = 0; k < 2; k++) {
            if (!both[k]) continue;
            memset(got, 0, sizeof got);
            EXPECT_OK(&t, insitra_surrogate_predict(both[k], N, xs, got), "predict (normalising)");
            EXPECT(&t, same_bits(got, nref, N * T * FO), "the normalising surrogate from the %s differs from "
                   "insitra_predict (max error %g)", what[k], insitra_test_max_error(got, nref, N * T * FO));
        }
        /* the export changed nothing: predict again, the same bits */
        EXPECT_OK(&t, insitra_predict(tn, N, xs, got), "predict after the export");
        EXPECT(&t, same_bits(got, nref, N * T * FO), "export_save changed the trainer's predictions");
        /* data.normalize on without /normalize: refused, named (identity maps
         * would predict wrong values silently) */
        if (t.rank == 0) {
            copy_file(normed, bad);
            unlink_h5(bad, "normalize");
        }
        MPI_Barrier(MPI_COMM_WORLD);
        expect_refused(&t, bad, "/normalize/x_mean");
        char nck_dir[4200], nck_path[4400];
        snprintf(nck_dir, sizeof nck_dir, "%s-norm", ckpt_dir);
        EXPECT_OK(&t, insitra_checkpoint_save(tn, nck_dir, nck_path, sizeof nck_path), "checkpoint_save (normalising)");
        EXPECT_OK(&t, insitra_predict(tn, N, xs, nref), "predict after the save");
        if (EXPECT_OK(&t, insitra_surrogate_create(&nck, nck_path, NULL, MB, MPI_COMM_WORLD), nck_path)) {
            memset(got, 0, sizeof got);
            EXPECT_OK(&t, insitra_surrogate_predict(nck, N, xs, got), "predict (normalising checkpoint)");
            EXPECT(&t, same_bits(got, nref, N * T * FO), "the normalising surrogate from the checkpoint differs "
                   "from insitra_predict (max error %g)", insitra_test_max_error(got, nref, N * T * FO));
        }
        /* a damaged statistic is refused, named */
        if (t.rank == 0) {
            copy_file(normed, bad);
            damage_f64(bad, "normalize/y_m2");
        }
        MPI_Barrier(MPI_COMM_WORLD);
        expect_refused(&t, bad, "CRC32C of '/normalize/y_m2'");
        insitra_surrogate_free(nlive);
        insitra_surrogate_free(nexp);
        insitra_surrogate_free(nck);
    }
    insitra_trainer_free(tn);
    insitra_config_free(ncfg);

    /* bad files and arguments */
    char missing[4200];
    snprintf(missing, sizeof missing, "%s/no-such-export.h5", dir);
    expect_refused(&t, missing, "no-such-export.h5");
    if (t.rank == 0) {
        copy_file(exported, bad);
        damage(bad, "model/blocks.1.mlp.fc.weight");
    }
    MPI_Barrier(MPI_COMM_WORLD);
    expect_refused(&t, bad, "CRC32C of '/model/blocks.1.mlp.fc.weight'");
    insitra_surrogate *s = NULL;
    EXPECT(&t, insitra_surrogate_create(&s, exported, NULL, 0, MPI_COMM_WORLD) != INSITRA_STATUS_OK &&
                   strstr(insitra_last_error(), "max_batch"), "max_batch 0: %s", insitra_last_error());
    insitra_config *bf16 = insitra_test_config(&t, "precision: bf16\ndevice: cpu\n");
    EXPECT(&t, insitra_surrogate_create(&s, exported, bf16, MB, MPI_COMM_WORLD) != INSITRA_STATUS_OK &&
                   strstr(insitra_last_error(), "bf16"), "bf16 on the CPU: %s", insitra_last_error());
    insitra_config_free(bf16);
    if (EXPECT_OK(&t, insitra_surrogate_create(&s, exported, NULL, MB, MPI_COMM_WORLD), "create")) {
        EXPECT(&t, insitra_surrogate_predict(s, -1, x, got) == INSITRA_STATUS_INVALID_ARGUMENT, "n = -1 accepted");
        EXPECT(&t, insitra_surrogate_predict(s, 1, NULL, got) == INSITRA_STATUS_INVALID_ARGUMENT &&
                       strstr(insitra_last_error(), "x is NULL"), "x NULL: %s", insitra_last_error());
        EXPECT(&t, insitra_surrogate_predict_device(s, 1, x, got, NULL) == INSITRA_STATUS_INVALID_ARGUMENT &&
                       strstr(insitra_last_error(), "CPU"), "device predict on the CPU: %s", insitra_last_error());
        insitra_surrogate_free(s);
    }
    EXPECT(&t, insitra_export_save(tr, "") != INSITRA_STATUS_OK && strstr(insitra_last_error(), "path is empty"),
           "export to '': %s", insitra_last_error());
    char unwritable[4200];
    snprintf(unwritable, sizeof unwritable, "%s/no-such-dir/x.h5", dir);
    EXPECT(&t, insitra_export_save(tr, unwritable) == INSITRA_STATUS_IO_ERROR || t.rank != 0,
           "export into a missing directory: %s", insitra_last_error());

    insitra_surrogate_free(live);
    insitra_trainer_free(tr);
    insitra_config_free(cfg);
    if (t.rank == 0) {
        unlink(normed);
        unlink(bad);
    }
    return insitra_test_end(&t);
}
