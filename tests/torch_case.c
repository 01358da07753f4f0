/*
 * The C half of the insitra_torch test (tests/test_insitra_torch.py): trains
 * a small model a few steps, writes its export, a copy with a
 * /normalization group, a checkpoint, and the inputs with the C surrogate's
 * predictions from each file into <dir>/case.h5, which the Python half
 * compares with tools/insitra_torch.py's.
 *
 *   torch_case <dir>
 */
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "insitra.h"
#include "test_util.h"

enum { T = 16, FI = 3, FO = 2, N = 6 };

static void write_array(hid_t f, const char *name, hid_t type, hid_t mem, int ndim, const hsize_t *dims,
                        const void *data)
{
    hid_t sp = H5Screate_simple(ndim, dims, NULL);
    hid_t d = H5Dcreate2(f, name, type, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(d, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
    H5Dclose(d);
    H5Sclose(sp);
}

static void add_normalization(const char *path)
{
    const double x_mean[FI] = {0.25, -0.5, 1.5}, x_std[FI] = {1.5, 0.75, 3.0};
    const double y_mean[FO] = {2.0, -1.0}, y_std[FO] = {0.5, 4.0};
    const int64_t residual[FO] = {-1, 0};
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t g = H5Gcreate2(f, "normalization", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    const hsize_t fi = FI, fo = FO;
    write_array(g, "x_mean", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 1, &fi, x_mean);
    write_array(g, "x_std", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 1, &fi, x_std);
    write_array(g, "y_mean", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 1, &fo, y_mean);
    write_array(g, "y_std", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 1, &fo, y_std);
    write_array(g, "residual", H5T_STD_I64LE, H5T_NATIVE_INT64, 1, &fo, residual);
    H5Gclose(g);
    H5Fclose(f);
}

int main(int argc, char **argv)
{
    insitra_test t = insitra_test_begin(&argc, &argv, "torch_case");
    const char *dir = argc > 1 ? argv[1] : ".";
    char exported[4096], normed[4096], ckdir[4096], ckpt[4096], casefile[4096];
    snprintf(exported, sizeof exported, "%s/export.h5", dir);
    snprintf(normed, sizeof normed, "%s/export-norm.h5", dir);
    snprintf(ckdir, sizeof ckdir, "%s/ckpt", dir);
    snprintf(casefile, sizeof casefile, "%s/case.h5", dir);
    insitra_config *cfg = insitra_test_config(
        &t, "model: {seq_len: 16, in_features: 3, out_features: 2, d_model: 32, n_layers: 2, n_heads: 4, causal: true}\n"
            "training: {batch_size: 6}\ndata: {capacity: 16}\noptimizer: {lr: 0.01, warmup_steps: 0}\n");
    insitra_trainer *tr = NULL;
    if (!EXPECT_OK(&t, insitra_trainer_create(&tr, cfg, MPI_COMM_WORLD), "trainer_create")) return insitra_test_end(&t);
    static float x[N * T * FI], y[N * T * FO], pred[3][N * T * FO];
    for (int i = 0; i < N * T * FI; i++) x[i] = (float)(2.0 * sin(0.11 * i) + 0.3 * cos(0.7 * i));
    for (int i = 0; i < N * T * FO; i++) y[i] = (float)cos(0.05 * i);
    EXPECT_OK(&t, insitra_push_samples(tr, N, x, y), "push");
    for (int k = 0; k < 5; k++) EXPECT_OK(&t, insitra_train_step(tr, NULL), "train_step");
    EXPECT_OK(&t, insitra_export_save(tr, exported), "export_save");
    EXPECT_OK(&t, insitra_checkpoint_save(tr, ckdir, ckpt, sizeof ckpt), "checkpoint_save");
    if (t.rank == 0) {
        /* a byte copy of the export, then the statistics */
        FILE *a = fopen(exported, "rb"), *b = fopen(normed, "wb");
        char buf[65536];
        for (size_t n; a && b && (n = fread(buf, 1, sizeof buf, a)) > 0;) fwrite(buf, 1, n, b);
        if (a) fclose(a);
        if (b) fclose(b);
        add_normalization(normed);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    const char *files[3] = {exported, normed, ckpt};
    for (int k = 0; k < 3; k++) {
        insitra_surrogate *s = NULL;
        if (EXPECT_OK(&t, insitra_surrogate_create(&s, files[k], NULL, 4, MPI_COMM_WORLD), files[k]))
            EXPECT_OK(&t, insitra_surrogate_predict(s, N, x, pred[k]), "predict");
        insitra_surrogate_free(s);
    }
    if (t.rank == 0) {
        hid_t f = H5Fcreate(casefile, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
        const hsize_t xd[3] = {N, T, FI}, yd[3] = {N, T, FO};
        write_array(f, "x", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 3, xd, x);
        const char *names[3] = {"y_export", "y_export_norm", "y_checkpoint"};
        for (int k = 0; k < 3; k++) write_array(f, names[k], H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 3, yd, pred[k]);
        hid_t sp = H5Screate(H5S_SCALAR), type = H5Tcopy(H5T_C_S1);
        H5Tset_size(type, strlen(ckpt) + 1);
        hid_t a = H5Acreate2(f, "checkpoint", type, sp, H5P_DEFAULT, H5P_DEFAULT);
        H5Awrite(a, type, ckpt);
        H5Aclose(a);
        H5Tclose(type);
        H5Sclose(sp);
        H5Fclose(f);
    }
    insitra_trainer_free(tr);
    insitra_config_free(cfg);
    return insitra_test_end(&t);
}
