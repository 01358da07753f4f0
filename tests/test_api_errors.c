/*
 * Bad input to the trainer API gets a clear error and loses nothing: NULL
 * handles, wrong sizes, n above capacity, NaN/Inf in samples (the message
 * names the first bad index and the store keeps its contents), an empty
 * store, a configuration that fails validation, an unwritable log file, and
 * counts whose byte sizes do not fit 64 bits.
 */
#include <errno.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "insitra.h"
#include "test_util.h"

static void expect_error(insitra_test *test, insitra_status got, insitra_status want, const char *w1,
                         const char *w2)
{
    const char *msg = insitra_last_error();
    EXPECT(test, got == want, "status %s, expected %s (%s)", insitra_status_name(got),
           insitra_status_name(want), msg);
    const char *words[] = {w1, w2};
    for (int i = 0; i < 2; i++)
        if (words[i]) EXPECT(test, strstr(msg, words[i]), "message '%s' lacks '%s'", msg, words[i]);
    printf("  error as expected: %s\n", msg);
}

enum { T = 4, FI = 3, FO = 2, CAP = 8 };

static insitra_config *small_config(insitra_test *test)
{
    insitra_config *cfg = NULL;
    if (!EXPECT_OK(test, insitra_config_create(&cfg), "config_create")) return NULL;
    const char *kv[][2] = {{"model.seq_len", "4"},      {"model.in_features", "3"},
                           {"model.out_features", "2"}, {"model.d_model", "8"},
                           {"model.n_layers", "1"},     {"model.n_heads", "2"},
                           {"training.batch_size", "2"}, {"data.capacity", "8"}};
    for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++)
        insitra_test_set(test, cfg, kv[i][0], "%s", kv[i][1]);
    return cfg;
}

int main(int argc, char **argv)
{
    insitra_test test = insitra_test_begin(&argc, &argv, "api_errors");
    insitra_config *cfg = small_config(&test);
    if (!cfg) return insitra_test_end(&test);
    insitra_trainer *t = NULL;
    float x[CAP + 1][T][FI], y[CAP + 1][T][FO], out[CAP][T][FO];
    insitra_test_fill_wave(&x[0][0][0], (CAP + 1) * T * FI, sin, 0.1, 0, 1);
    insitra_test_fill_wave(&y[0][0][0], (CAP + 1) * T * FO, cos, 0.1, 0, 1);
    double loss = 0;

    /* creation */
    expect_error(&test, insitra_trainer_create(NULL, cfg, MPI_COMM_WORLD), INSITRA_STATUS_INVALID_ARGUMENT,
                 "trainer", NULL);
    expect_error(&test, insitra_trainer_create(&t, NULL, MPI_COMM_WORLD), INSITRA_STATUS_INVALID_ARGUMENT,
                 "cfg", NULL);
    expect_error(&test, insitra_trainer_create(&t, cfg, MPI_COMM_NULL), INSITRA_STATUS_INVALID_ARGUMENT,
                 "MPI_COMM_NULL", NULL);
    insitra_test_set(&test, cfg, "model.n_heads", "3");
    expect_error(&test, insitra_trainer_create(&t, cfg, MPI_COMM_WORLD), INSITRA_STATUS_CONFIG_ERROR,
                 "model.n_heads", "does not divide model.d_model = 8");
    EXPECT(&test, t == NULL, "a failed create leaves *trainer NULL");
    insitra_test_set(&test, cfg, "model.n_heads", "2");
    insitra_test_set(&test, cfg, "log.jsonl", "/nonexistent-dir/metrics.jsonl");
    expect_error(&test, insitra_trainer_create(&t, cfg, MPI_COMM_WORLD), INSITRA_STATUS_IO_ERROR, "log.jsonl",
                 "/nonexistent-dir/metrics.jsonl");
    EXPECT_OK(&test, insitra_config_set(cfg, "log.jsonl", ""), "log.jsonl = ''");
    /* device = cuda without a usable GPU, or in a build without the backend,
     * says so (on a machine with a GPU the trainer is simply made) */
    insitra_test_set(&test, cfg, "device", "cuda");
    insitra_status gpu = insitra_trainer_create(&t, cfg, MPI_COMM_WORLD);
    if (gpu == INSITRA_STATUS_OK) {
        insitra_trainer_free(t);
        t = NULL;
    } else {
        expect_error(&test, gpu, INSITRA_STATUS_DEVICE_ERROR, "'device'", "cuda");
        EXPECT(&test, t == NULL, "a failed GPU create leaves *trainer NULL");
    }
    insitra_test_set(&test, cfg, "device", "cpu");
    /* data.capacity inside its range whose store needs more bytes than 64 bits
     * count: it once wrapped to a zero-byte store that the first push overran. */
    insitra_test_set(&test, cfg, "data.capacity", "4503599627370496");
    insitra_test_set(&test, cfg, "model.in_features", "1024"); /* 2^52 x 4 x 1024 x 4 bytes = 2^66 */
    insitra_test_set(&test, cfg, "model.out_features", "1024");
    expect_error(&test, insitra_trainer_create(&t, cfg, MPI_COMM_WORLD), INSITRA_STATUS_CONFIG_ERROR,
                 "'data.capacity'", "bytes");
    if (t) insitra_trainer_free(t);
    t = NULL;
    insitra_test_set(&test, cfg, "data.capacity", "8");
    insitra_test_set(&test, cfg, "model.in_features", "3");
    insitra_test_set(&test, cfg, "model.out_features", "2");
    EXPECT_OK(&test, insitra_trainer_create(&t, cfg, MPI_COMM_WORLD), "create");
    expect_error(&test, insitra_push_samples_device(t, 1, &x[0][0][0], &y[0][0][0]),
                 INSITRA_STATUS_INVALID_ARGUMENT, "'device' is 'cpu'", "insitra_push_samples");

    /* NULL handles everywhere */
    expect_error(&test, insitra_push_samples(NULL, 1, &x[0][0][0], &y[0][0][0]),
                 INSITRA_STATUS_INVALID_ARGUMENT, "trainer is NULL", NULL);
    expect_error(&test, insitra_train_step(NULL, NULL), INSITRA_STATUS_INVALID_ARGUMENT, "trainer is NULL",
                 NULL);
    expect_error(&test, insitra_predict(NULL, 1, &x[0][0][0], &out[0][0][0]), INSITRA_STATUS_INVALID_ARGUMENT,
                 "trainer is NULL", NULL);
    expect_error(&test, insitra_evaluate(NULL, 1, &x[0][0][0], &y[0][0][0], &loss),
                 INSITRA_STATUS_INVALID_ARGUMENT, "trainer is NULL", NULL);
    EXPECT_OK(&test, insitra_trainer_free(NULL), "free(NULL) is a no-op");

    /* training before any sample */
    expect_error(&test, insitra_train_step(t, NULL), INSITRA_STATUS_NOT_READY, "empty", "rank 0");

    /* push: sizes and pointers */
    expect_error(&test, insitra_push_samples(t, CAP + 1, &x[0][0][0], &y[0][0][0]),
                 INSITRA_STATUS_INVALID_ARGUMENT, "n = 9", "data.capacity");
    expect_error(&test, insitra_push_samples(t, -1, &x[0][0][0], &y[0][0][0]),
                 INSITRA_STATUS_INVALID_ARGUMENT, "n = -1", NULL);
    expect_error(&test, insitra_push_samples(t, 2, NULL, &y[0][0][0]), INSITRA_STATUS_INVALID_ARGUMENT,
                 "x is NULL", NULL);

    /* a good push, and its loss as the witness of the store's contents */
    EXPECT_OK(&test, insitra_push_samples(t, 3, &x[0][0][0], &y[0][0][0]), "push");
    int64_t count = 0;
    insitra_samples_stored(t, &count);
    EXPECT(&test, count == 3, "3 samples stored, got %lld", (long long)count);

    /* NaN and Inf: rejected whole, first bad index named, store unchanged */
    float bad_x[2][T][FI], bad_y[2][T][FO];
    memcpy(bad_x, x, sizeof bad_x);
    memcpy(bad_y, y, sizeof bad_y);
    bad_x[1][2][1] = NAN;
    expect_error(&test, insitra_push_samples(t, 2, &bad_x[0][0][0], &bad_y[0][0][0]),
                 INSITRA_STATUS_INVALID_ARGUMENT, "input x of sample 1", "element 7");
    bad_x[1][2][1] = 0.0f;
    bad_y[0][3][0] = INFINITY;
    expect_error(&test, insitra_push_samples(t, 2, &bad_x[0][0][0], &bad_y[0][0][0]),
                 INSITRA_STATUS_INVALID_ARGUMENT, "target y of sample 0", "inf");
    insitra_samples_stored(t, &count);
    EXPECT(&test, count == 3, "store unchanged after rejected pushes: %lld", (long long)count);

    /* eviction: 8 more samples into capacity 8 keeps the newest 8 */
    EXPECT_OK(&test, insitra_push_samples(t, CAP, &x[1][0][0], &y[1][0][0]), "push 8");
    insitra_samples_stored(t, &count);
    EXPECT(&test, count == CAP, "capacity caps the count: %lld", (long long)count);

    /* training, predict and evaluate work after the rejected input */
    insitra_metrics m;
    EXPECT_OK(&test, insitra_train_step(t, &m), "train_step");
    EXPECT(&test, m.step == 1 && isfinite(m.loss) && m.tokens == 2 * T, "metrics step %lld loss %g",
           (long long)m.step, m.loss);
    expect_error(&test, insitra_predict(t, -2, &x[0][0][0], &out[0][0][0]), INSITRA_STATUS_INVALID_ARGUMENT,
                 "n = -2", NULL);
    expect_error(&test, insitra_predict(t, 2, &x[0][0][0], NULL), INSITRA_STATUS_INVALID_ARGUMENT,
                 "y_out is NULL", NULL);
    EXPECT_OK(&test, insitra_predict(t, 0, NULL, NULL), "predict n = 0");
    expect_error(&test, insitra_evaluate(t, 0, NULL, NULL, &loss), INSITRA_STATUS_INVALID_ARGUMENT,
                 "no rank passed any sample", NULL);
    expect_error(&test, insitra_evaluate(t, 1, &x[0][0][0], &y[0][0][0], NULL),
                 INSITRA_STATUS_INVALID_ARGUMENT, "loss is NULL", NULL);

    /* predict's outputs agree with evaluate's loss */
    EXPECT_OK(&test, insitra_predict(t, CAP, &x[0][0][0], &out[0][0][0]), "predict");
    EXPECT_OK(&test, insitra_evaluate(t, CAP, &x[0][0][0], &y[0][0][0], &loss), "evaluate");
    double sse = 0;
    for (int i = 0; i < CAP * T * FO; i++) {
        const double d = (&out[0][0][0])[i] - (&y[0][0][0])[i];
        sse += d * d;
    }
    EXPECT(&test, fabs(sse / (CAP * T * FO) - loss) <= 1e-6 * loss, "evaluate %g vs predict's MSE %g", loss,
           sse / (CAP * T * FO));

    /* n whose byte count overflows: an error, not OK with nothing computed */
    const int64_t huge[] = {INT64_MAX, INT64_MAX / (T * FO), (int64_t)1 << 61};
    for (int i = 0; i < 3; i++) {
        char want[64];
        snprintf(want, sizeof want, "n = %lld", (long long)huge[i]);
        expect_error(&test, insitra_predict(t, huge[i], &x[0][0][0], &out[0][0][0]),
                     INSITRA_STATUS_INVALID_ARGUMENT, want, "bytes");
        expect_error(&test, insitra_evaluate(t, huge[i], &x[0][0][0], &y[0][0][0], &loss),
                     INSITRA_STATUS_INVALID_ARGUMENT, want, "bytes");
        expect_error(&test, insitra_push_samples(t, huge[i], &x[0][0][0], &y[0][0][0]),
                     INSITRA_STATUS_INVALID_ARGUMENT, want, "data.capacity");
    }
    EXPECT(&test, insitra_evaluate(t, CAP, &x[0][0][0], &y[0][0][0], &loss) == INSITRA_STATUS_OK,
           "evaluate after the rejected calls: %s", insitra_last_error());

    /* A directory the checkpoint cannot be created in: the error says why
     * (on a read-only file system, or without write permission). Root may
     * write anywhere, so there the check is skipped. */
    char ro_dir[] = "/tmp/insitra-readonly-XXXXXX";
    if (geteuid() != 0 && mkdtemp(ro_dir) && chmod(ro_dir, 0555) == 0) {
        expect_error(&test, insitra_checkpoint_save(t, ro_dir, NULL, 0), INSITRA_STATUS_IO_ERROR,
                     "cannot create", strerror(EACCES));
        rmdir(ro_dir);
    } else {
        printf("  (running as root: the unwritable-directory check is skipped)\n");
    }
    /* One that root meets too: the .tmp file's path is taken by a directory. */
    char busy_dir[] = "/tmp/insitra-tmpbusy-XXXXXX", busy[128], inner[160];
    if (EXPECT(&test, mkdtemp(busy_dir) != NULL, "mkdtemp: %s", strerror(errno))) {
        snprintf(busy, sizeof busy, "%s/step-%08lld.h5.tmp", busy_dir, (long long)m.step);
        snprintf(inner, sizeof inner, "%s/kept", busy);
        if (EXPECT(&test, mkdir(busy, 0777) == 0 && mkdir(inner, 0777) == 0, "mkdir %s: %s", inner,
                   strerror(errno)))
            expect_error(&test, insitra_checkpoint_save(t, busy_dir, NULL, 0), INSITRA_STATUS_IO_ERROR,
                         "cannot create '", strerror(EISDIR));
        rmdir(inner);
        rmdir(busy);
        rmdir(busy_dir);
    }

    int64_t st = 0, fi = 0, fo = 0, np = 0;
    insitra_trainer_sample_shape(t, &st, &fi, &fo);
    insitra_trainer_num_parameters(t, &np);
    EXPECT(&test, st == T && fi == FI && fo == FO, "sample shape %lld %lld %lld", (long long)st,
           (long long)fi, (long long)fo);
    /* embed 8*3+8, pos 4*8, block 2*8+3*8*8+3*8+8*8+8+2*8+4*8*8+4*8+8*4*8+8, ln_f 16, head 2*8+2 */
    EXPECT(&test, np == 32 + 32 + 872 + 16 + 18, "parameter count %lld", (long long)np);

    insitra_trainer_free(t);
    insitra_config_free(cfg);
    return insitra_test_end(&test);
}
