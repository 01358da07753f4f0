/*
 * The simulation's own state in the checkpoint (issue #19 item 3): a toy
 * simulation keeps a 2-D field decomposed by rows over the ranks (held with
 * halo cells), a per-rank generator (a global array with one element per
 * rank) and its step (a scalar) in the trainer's checkpoints through
 * insitra_checkpoint_add_array/_scalar, which insitra_train_step writes every
 * 5 steps. A run stopped after step 12 and resumed from the step-10
 * checkpoint by a new process ends with the uninterrupted run's field and
 * losses bit for bit; the checkpoint loads on another decomposition (3
 * ranks), where only the right pieces give the stored CRC32C; and every
 * mismatch fails on every rank with a message naming it.
 *
 *   test_user_state straight|first|resume|reload|errors <dir>
 */
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "insitra.h"
#include "test_util.h"

enum { NY = 12, NX = 10, STEPS = 20, STOP_AT = 12, T = 8 };

typedef struct sim {
    int64_t y0, ly;           /* this rank's rows */
    double f[NY + 2][NX + 2]; /* (ly + 2, NX + 2) used: one halo cell on every side */
    int64_t rng;              /* this rank's generator state */
    int64_t step;             /* the last step done */
} sim;

static uint64_t next_random(int64_t *state)
{
    uint64_t x = (uint64_t)*state;
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    *state = (int64_t)x;
    return x;
}

static void sim_init(sim *s, int rank, int size)
{
    memset(s, 0, sizeof *s);
    s->y0 = (int64_t)NY * rank / size;
    s->ly = (int64_t)NY * (rank + 1) / size - s->y0;
    s->rng = 0x9e3779b97f4a7c15ll ^ (int64_t)(rank + 1);
    for (int64_t i = 0; i < s->ly; i++)
        for (int j = 0; j < NX; j++) s->f[i + 1][j + 1] = sin(0.3 * (double)(s->y0 + i) + 0.2 * j);
}

/* One step of the field, then two samples of it pushed and one training step. */
static double sim_step(insitra_test *t, sim *s, insitra_trainer *tr, int64_t step)
{
    for (int64_t i = 0; i < s->ly; i++)
        for (int j = 0; j < NX; j++)
            s->f[i + 1][j + 1] = 0.9 * s->f[i + 1][j + 1] + 0.1 * sin(0.3 * (double)step + 0.7 * (double)(s->y0 + i) +
                                 0.2 * j) + 1e-3 * (double)(next_random(&s->rng) % 1000);
    float x[2][T][2], y[2][T][1];
    for (int n = 0; n < 2; n++) {
        const int64_t i = (int64_t)(next_random(&s->rng) % (uint64_t)s->ly);
        for (int k = 0; k < T; k++) {
            x[n][k][0] = (float)s->f[i + 1][k + 1];
            x[n][k][1] = (float)s->f[i + 1][k + 2];
            y[n][k][0] = (float)(0.5 * (s->f[i + 1][k + 1] + s->f[i + 1][k + 2]));
        }
    }
    EXPECT_OK(t, insitra_push_samples(tr, 2, &x[0][0][0], &y[0][0][0]), "push");
    s->step = step; /* what the checkpoint train_step may write says which step the field is after */
    insitra_metrics m = {0};
    EXPECT_OK(t, insitra_train_step(tr, &m), "train_step");
    return m.loss;
}

/* The field (rows y0.. of NY x NX, inside the halo), the generators (one per rank), the step. */
static bool add_state(insitra_test *t, insitra_trainer *tr, sim *s, int rank, int size)
{
    const int64_t global[2] = {NY, NX}, offset[2] = {s->y0, 0}, count[2] = {s->ly, NX};
    const int64_t mem_shape[2] = {NY + 2, NX + 2}, mem_offset[2] = {1, 1};
    const int64_t rg = size, ro = rank, rc = 1;
    return EXPECT_OK(t, insitra_checkpoint_add_array(tr, "field", INSITRA_TYPE_FLOAT64, 2, global, offset, count,
                                                     mem_shape, mem_offset, s->f), "add field") &
           EXPECT_OK(t, insitra_checkpoint_add_array(tr, "rng", INSITRA_TYPE_INT64, 1, &rg, &ro, &rc, NULL, NULL,
                                                     &s->rng), "add rng") &
           EXPECT_OK(t, insitra_checkpoint_add_scalar(tr, "step", INSITRA_TYPE_INT64, &s->step), "add step");
}

static insitra_trainer *make_trainer(insitra_test *t, const char *dir)
{
    insitra_config *cfg = insitra_test_config(
        &t[0], "model: {seq_len: 8, in_features: 2, out_features: 1, d_model: 16, n_layers: 1, n_heads: 2}\n"
               "training: {batch_size: 4}\ndata: {capacity: 64}\noptimizer: {lr: 0.01, warmup_steps: 2}\n"
               "checkpoint: {every_steps: 5, keep_last: 3, include_samples: true}\n");
    insitra_test_set(t, cfg, "checkpoint.dir", "%s", dir);
    insitra_trainer *tr = NULL;
    EXPECT_OK(t, insitra_trainer_create(&tr, cfg, MPI_COMM_WORLD), "trainer_create");
    insitra_config_free(cfg);
    return tr;
}

static void record_path(char *out, size_t size, const char *dir, int rank)
{
    snprintf(out, size, "%s/straight-%d.bin", dir, rank);
}

static int run(insitra_test *t, const char *mode, const char *dir)
{
    char ckdir[4096], rec[4200];
    const bool straight = strcmp(mode, "straight") == 0;
    snprintf(ckdir, sizeof ckdir, "%s/%s", dir, straight ? "straight-ckpt" : "ckpt");
    record_path(rec, sizeof rec, dir, t->rank);
    insitra_trainer *tr = make_trainer(t, ckdir);
    if (!tr) return insitra_test_end(t);
    static sim s;
    sim_init(&s, t->rank, t->size);
    add_state(t, tr, &s, t->rank, t->size);
    double loss[STEPS + 1] = {0};
    int64_t first = 1;
    if (strcmp(mode, "resume") == 0) {
        char loaded[4200];
        s.step = -1;
        for (int64_t i = 0; i < s.ly; i++) s.f[i + 1][1] = NAN; /* must be overwritten */
        EXPECT_OK(t, insitra_checkpoint_load(tr, ckdir, loaded, sizeof loaded), "checkpoint_load");
        EXPECT(t, s.step == 10, "the loaded step is %lld, expected 10 (%s)", (long long)s.step, loaded);
        first = s.step + 1;
    }
    const int64_t last = strcmp(mode, "first") == 0 ? STOP_AT : STEPS;
    for (int64_t step = first; step <= last; step++) loss[step] = sim_step(t, &s, tr, step);
    if (straight) {
        FILE *f = fopen(rec, "wb");
        EXPECT(t, f && fwrite(&s, sizeof s, 1, f) == 1 && fwrite(loss, sizeof loss, 1, f) == 1, "writing %s", rec);
        if (f) fclose(f);
    } else if (strcmp(mode, "resume") == 0) {
        static sim want;
        double want_loss[STEPS + 1];
        FILE *f = fopen(rec, "rb");
        const bool read = f && fread(&want, sizeof want, 1, f) == 1 && fread(want_loss, sizeof want_loss, 1, f) == 1;
        if (f) fclose(f);
        if (EXPECT(t, read, "reading %s", rec)) {
            EXPECT(t, memcmp(want.f, s.f, sizeof s.f) == 0, "the resumed field differs from the uninterrupted one");
            EXPECT(t, want.rng == s.rng && want.step == s.step, "generator or step differs");
            EXPECT(t, memcmp(&want_loss[first], &loss[first], (size_t)(STEPS - first + 1) * sizeof(double)) == 0,
                   "the resumed losses differ from the uninterrupted ones");
        }
    }
    insitra_trainer_free(tr);
    return insitra_test_end(t);
}

/* Another decomposition: the field by 3 ranks, the 2 generators on rank 0. */
static int reload(insitra_test *t, const char *dir)
{
    char ckdir[4096], path[4200];
    snprintf(ckdir, sizeof ckdir, "%s/ckpt", dir);
    snprintf(path, sizeof path, "%s/step-00000010.h5", ckdir);
    char own[4200];
    snprintf(own, sizeof own, "%s/reload-ckpt", dir);
    insitra_trainer *tr = make_trainer(t, own);
    static sim s;
    sim_init(&s, t->rank, t->size);
    int64_t rngs[2] = {0, 0};
    const int64_t global[2] = {NY, NX}, offset[2] = {s.y0, 0}, count[2] = {s.ly, NX};
    const int64_t mem_shape[2] = {NY + 2, NX + 2}, mem_offset[2] = {1, 1};
    const int64_t rg = 2, ro = 0, rc = t->rank == 0 ? 2 : 0;
    EXPECT_OK(t, insitra_checkpoint_add_array(tr, "field", INSITRA_TYPE_FLOAT64, 2, global, offset, count, mem_shape,
                                              mem_offset, s.f), "add field");
    EXPECT_OK(t, insitra_checkpoint_add_array(tr, "rng", INSITRA_TYPE_INT64, 1, &rg, &ro, &rc, NULL, NULL, rngs),
              "add rng");
    EXPECT_OK(t, insitra_checkpoint_add_scalar(tr, "step", INSITRA_TYPE_INT64, &s.step), "add step");
    /* every element checked: the CRC32C over the global array needs each piece in its place */
    EXPECT_OK(t, insitra_checkpoint_load(tr, path, NULL, 0), "load on 3 ranks");
    EXPECT(t, s.step == 10, "step %lld", (long long)s.step);
    EXPECT(t, t->rank != 0 || (rngs[0] != 0 && rngs[1] != 0 && rngs[0] != rngs[1]), "generators not read");
    insitra_trainer_free(tr);
    return insitra_test_end(t);
}

/* A save that must fail on every rank with a message holding `names`. */
static void expect_save_fails(insitra_test *t, insitra_trainer *tr, const char *dir, const char *names)
{
    const insitra_status s = insitra_checkpoint_save(tr, dir, NULL, 0);
    EXPECT(t, s != INSITRA_STATUS_OK && strstr(insitra_last_error(), names),
           "save: expected a failure naming '%s', got %s: %s", names, insitra_status_name(s), insitra_last_error());
}

static void expect_load_fails(insitra_test *t, insitra_trainer *tr, const char *path, const char *names)
{
    const insitra_status s = insitra_checkpoint_load(tr, path, NULL, 0);
    EXPECT(t, s != INSITRA_STATUS_OK && strstr(insitra_last_error(), names),
           "load: expected a failure naming '%s', got %s: %s", names, insitra_status_name(s), insitra_last_error());
}

static int errors(insitra_test *t, const char *dir)
{
    char ckdir[4096], path[4200];
    snprintf(ckdir, sizeof ckdir, "%s/errors", dir);
    insitra_trainer *tr = make_trainer(t, ckdir);
    static double a[NY * NX];
    for (int i = 0; i < NY * NX; i++) a[i] = i;
    const int64_t rows = NY / t->size, y0 = rows * t->rank;
    const int64_t g[2] = {NY, NX}, o[2] = {y0, 0}, c[2] = {rows, NX};

    /* local checks */
    EXPECT(t, insitra_checkpoint_add_array(tr, "a/b", INSITRA_TYPE_FLOAT64, 2, g, o, c, NULL, NULL, a) ==
                  INSITRA_STATUS_INVALID_ARGUMENT && strstr(insitra_last_error(), "a/b"), "bad name accepted");
    const int64_t beyond[2] = {NY - 1, 0};
    EXPECT(t, insitra_checkpoint_add_array(tr, "f", INSITRA_TYPE_FLOAT64, 2, g, beyond, c, NULL, NULL, a) ==
                  INSITRA_STATUS_INVALID_ARGUMENT && strstr(insitra_last_error(), "beyond global_shape"),
           "piece beyond the array: %s", insitra_last_error());
    EXPECT(t, insitra_checkpoint_add_array(tr, "f", (insitra_type)7, 2, g, o, c, NULL, NULL, a) ==
                  INSITRA_STATUS_INVALID_ARGUMENT, "type 7 accepted");
    EXPECT(t, insitra_checkpoint_add_array(tr, "f", INSITRA_TYPE_FLOAT64, 5, g, o, c, NULL, NULL, a) ==
                  INSITRA_STATUS_INVALID_ARGUMENT, "ndim 5 accepted");

    /* collective checks at save */
    const int64_t g_other[2] = {NY, t->rank == 0 ? NX : NX + 1};
    EXPECT_OK(t, insitra_checkpoint_add_array(tr, "f", INSITRA_TYPE_FLOAT64, 2, g_other, o, c, NULL, NULL, a), "add");
    expect_save_fails(t, tr, ckdir, "global shape");
    insitra_checkpoint_clear_arrays(tr);
    const int64_t o_overlap[2] = {t->rank == 1 ? y0 - 1 : y0, 0};
    EXPECT_OK(t, insitra_checkpoint_add_array(tr, "f", INSITRA_TYPE_FLOAT64, 2, g, o_overlap, c, NULL, NULL, a),
              "add");
    expect_save_fails(t, tr, ckdir, "overlap");
    insitra_checkpoint_clear_arrays(tr);
    const int64_t c_gap[2] = {t->rank == 1 ? rows - 1 : rows, NX};
    EXPECT_OK(t, insitra_checkpoint_add_array(tr, "f", INSITRA_TYPE_FLOAT64, 2, g, o, c_gap, NULL, NULL, a), "add");
    expect_save_fails(t, tr, ckdir, "in no rank's piece");
    insitra_checkpoint_clear_arrays(tr);
    int64_t step = 7;
    if (t->rank == 1) EXPECT_OK(t, insitra_checkpoint_add_scalar(tr, "extra", INSITRA_TYPE_INT64, &step), "add");
    expect_save_fails(t, tr, ckdir, "arrays");
    insitra_checkpoint_clear_arrays(tr);

    /* a good save, then loads that do not fit it */
    EXPECT_OK(t, insitra_checkpoint_add_array(tr, "f", INSITRA_TYPE_FLOAT64, 2, g, o, c, NULL, NULL, a), "add");
    EXPECT_OK(t, insitra_checkpoint_add_scalar(tr, "step", INSITRA_TYPE_INT64, &step), "add");
    EXPECT_OK(t, insitra_checkpoint_save(tr, ckdir, path, sizeof path), "save");
    if (t->rank == 0) {
        hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
        double v[NX];
        int64_t stored_step = -1;
        hid_t d = H5Dopen2(f, "user/f", H5P_DEFAULT), fs = H5Dget_space(d);
        const hsize_t start[2] = {3, 0}, cnt[2] = {1, NX};
        H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, cnt, NULL);
        hid_t ms = H5Screate_simple(2, cnt, NULL);
        H5Dread(d, H5T_NATIVE_DOUBLE, ms, fs, H5P_DEFAULT, v);
        EXPECT(t, v[0] == 3 * NX && v[NX - 1] == 3 * NX + NX - 1, "row 3 of /user/f is %g .. %g", v[0], v[NX - 1]);
        H5Sclose(ms), H5Sclose(fs), H5Dclose(d);
        d = H5Dopen2(f, "user/step", H5P_DEFAULT);
        H5Dread(d, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, &stored_step);
        EXPECT(t, stored_step == 7, "/user/step is %lld", (long long)stored_step);
        H5Dclose(d);
        H5Fclose(f);
    }
    int64_t other = 0;
    EXPECT_OK(t, insitra_checkpoint_add_scalar(tr, "missing", INSITRA_TYPE_INT64, &other), "add");
    expect_load_fails(t, tr, path, "'/user/missing' is missing");
    insitra_checkpoint_clear_arrays(tr);
    EXPECT_OK(t, insitra_checkpoint_add_array(tr, "f", INSITRA_TYPE_FLOAT32, 2, g, o, c, NULL, NULL, a), "add");
    expect_load_fails(t, tr, path, "type is not float32");
    insitra_checkpoint_clear_arrays(tr);
    const int64_t g_wide[2] = {NY, NX + 2};
    EXPECT_OK(t, insitra_checkpoint_add_array(tr, "f", INSITRA_TYPE_FLOAT64, 2, g_wide, o, c, NULL, NULL, a), "add");
    expect_load_fails(t, tr, path, "has shape (12, 10), expected (12, 12)");
    insitra_checkpoint_clear_arrays(tr);
    /* a changed value whose CRC32C was not updated */
    MPI_Barrier(MPI_COMM_WORLD);
    if (t->rank == 0) {
        hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
        hid_t d = H5Dopen2(f, "user/f", H5P_DEFAULT), fs = H5Dget_space(d);
        const hsize_t start[2] = {NY - 1, NX - 1}, one[2] = {1, 1};
        H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, one, NULL);
        hid_t ms = H5Screate_simple(2, one, NULL);
        const double v = -1.0;
        H5Dwrite(d, H5T_NATIVE_DOUBLE, ms, fs, H5P_DEFAULT, &v);
        H5Sclose(ms), H5Sclose(fs), H5Dclose(d), H5Fclose(f);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    EXPECT_OK(t, insitra_checkpoint_add_array(tr, "f", INSITRA_TYPE_FLOAT64, 2, g, o, c, NULL, NULL, a), "add");
    expect_load_fails(t, tr, path, "CRC32C of '/user/f'");
    insitra_trainer_free(tr);
    return insitra_test_end(t);
}

int main(int argc, char **argv)
{
    insitra_test t = insitra_test_begin(&argc, &argv, "user_state");
    if (argc < 3) {
        EXPECT(&t, false, "usage: test_user_state straight|first|resume|reload|errors <dir>");
        return insitra_test_end(&t);
    }
    if (strcmp(argv[1], "reload") == 0) return reload(&t, argv[2]);
    if (strcmp(argv[1], "errors") == 0) return errors(&t, argv[2]);
    return run(&t, argv[1], argv[2]);
}
