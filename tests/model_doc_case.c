/*
 * The C half of the model_doc test: a small surrogate with normalisation and
 * residual targets (out 0 an increment of input 2, out 1 of input 0) trains a
 * few steps and writes, into DIR,
 *   step-00000006.h5   its checkpoint;
 *   case.bin           int32 N, T, F_in, F_out, then float32 x (N, T, F_in)
 *                      and insitra_predict's y (N, T, F_out).
 * tests/test_model_doc.py rebuilds the model from docs/model.md alone and
 * must predict the same y from the checkpoint.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>

#include "test_util.h"

enum { S = 32, N = 4, T = 8, FI = 3, FO = 2 };

int main(int argc, char **argv)
{
    insitra_test tc = insitra_test_begin(&argc, &argv, "model_doc_case");
    if (argc < 2) {
        EXPECT(&tc, false, "usage: model_doc_case DIR");
        return insitra_test_end(&tc);
    }
    const char *dir = argv[1];
    mkdir(dir, 0777);
    static float x[S][T][FI], y[S][T][FO], pred[N][T][FO];
    insitra_test_fill_wave(&x[0][0][0], S * T * FI, sin, 0.37, 0.3, 4.0);
    for (int s = 0; s < S; s++)
        for (int t = 0; t < T; t++) {
            x[s][t][0] += 300.0f; /* physical offsets: normalisation must matter */
            y[s][t][0] = x[s][t][2] + 0.05f * x[s][t][1];
            y[s][t][1] = x[s][t][0] - 0.01f * x[s][t][2];
        }
    insitra_config *cfg = insitra_test_config(
        &tc, "model: {seq_len: 8, in_features: 3, out_features: 2, d_model: 16, n_layers: 2, n_heads: 2,\n"
             "        residual: true, residual_inputs: '2, 0'}\n"
             "training: {batch_size: 8, seed: 9}\n"
             "optimizer: {lr: 1.0e-2, warmup_steps: 2, decay_steps: 20}\n"
             "data: {capacity: 64, normalize: frozen, normalize_samples: 16}\n");
    insitra_trainer *t = NULL;
    if (!cfg || !EXPECT_OK(&tc, insitra_trainer_create(&t, cfg, MPI_COMM_WORLD), "create")) goto done;
    EXPECT_OK(&tc, insitra_push_samples(t, S, &x[0][0][0], &y[0][0][0]), "push");
    for (int k = 0; k < 6; k++) EXPECT_OK(&tc, insitra_train_step(t, NULL), "train_step");
    char path[4200];
    EXPECT_OK(&tc, insitra_checkpoint_save(t, dir, path, sizeof path), "checkpoint_save");
    EXPECT_OK(&tc, insitra_predict(t, N, &x[0][0][0], &pred[0][0][0]), "predict");
    snprintf(path, sizeof path, "%s/case.bin", dir);
    FILE *f = tc.rank == 0 ? fopen(path, "wb") : NULL;
    if (tc.rank == 0 && EXPECT(&tc, f != NULL, "cannot write %s", path)) {
        const int32_t dims[4] = {N, T, FI, FO};
        fwrite(dims, sizeof dims, 1, f);
        fwrite(x, sizeof(float), N * T * FI, f);
        fwrite(pred, sizeof pred, 1, f);
        EXPECT(&tc, fclose(f) == 0, "cannot close %s", path);
    }
done:
    insitra_trainer_free(t);
    insitra_config_free(cfg);
    return insitra_test_end(&tc);
}
