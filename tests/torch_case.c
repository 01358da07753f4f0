/*
 * The C half of the insitra_torch test (tests/test_insitra_torch.py): trains
 * a small model a few steps, writes its export and a checkpoint, trains a
 * second one with data.normalize and model.residual on and writes its export
 * (with /normalize), and the inputs with the C surrogate's
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
    /* the normalising model: inputs far from mean 0 and std 1, outputs near
     * input features 2 and 0 (model.residual_inputs '2, 0') */
    insitra_config *ncfg = insitra_test_config(
        &t, "model: {seq_len: 16, in_features: 3, out_features: 2, d_model: 32, n_layers: 2, n_heads: 4, causal: true,\n"
            "        residual: true, residual_inputs: '2, 0'}\n"
            "training: {batch_size: 6}\ndata: {capacity: 16, normalize: frozen}\n"
            "optimizer: {lr: 0.01, warmup_steps: 0}\n");
    static float xn[N * T * FI], yn[N * T * FO];
    for (int i = 0; i < N * T * FI; i++) xn[i] = 250.0f + 40.0f * x[i] + 10.0f * (float)(i % FI);
    for (int r = 0; r < N * T; r++) {
        yn[r * FO + 0] = xn[r * FI + 2] + 0.5f * y[r * FO + 0];
        yn[r * FO + 1] = xn[r * FI + 0] - 0.25f * y[r * FO + 1];
    }
    insitra_trainer *tn = NULL;
    if (EXPECT_OK(&t, insitra_trainer_create(&tn, ncfg, MPI_COMM_WORLD), "trainer_create (normalising)")) {
        EXPECT_OK(&t, insitra_push_samples(tn, N, xn, yn), "push (normalising)");
        for (int k = 0; k < 5; k++) EXPECT_OK(&t, insitra_train_step(tn, NULL), "train_step (normalising)");
        EXPECT_OK(&t, insitra_export_save(tn, normed), "export_save (normalising)");
    }
    insitra_trainer_free(tn);
    insitra_config_free(ncfg);
    MPI_Barrier(MPI_COMM_WORLD);
    const char *files[3] = {exported, normed, ckpt};
    for (int k = 0; k < 3; k++) {
        insitra_surrogate *s = NULL;
        if (EXPECT_OK(&t, insitra_surrogate_create(&s, files[k], NULL, 4, MPI_COMM_WORLD), files[k]))
            EXPECT_OK(&t, insitra_surrogate_predict(s, N, k == 1 ? xn : x, pred[k]), "predict");
        insitra_surrogate_free(s);
    }
    if (t.rank == 0) {
        hid_t f = H5Fcreate(casefile, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
        const hsize_t xd[3] = {N, T, FI}, yd[3] = {N, T, FO};
        write_array(f, "x", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 3, xd, x);
        write_array(f, "x_norm", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 3, xd, xn);
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
