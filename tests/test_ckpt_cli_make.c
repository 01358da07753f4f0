/*
 * Checkpoints for the insitra-ckpt tests (tests/ckpt_cli.cmake), and damaged
 * copies of them:
 *   load FILE STEP            the same trainer loads FILE (it must be at STEP)
 *                             and trains a step
 *   make DIR                  a tiny trainer (run it on 2 ranks, ZeRO stage 1,
 *                             samples included) trains 3 steps and saves to
 *                             DIR, then 3 more and saves again: step-3, step-6
 *   corrupt SRC DST DATASET   DST = SRC with one byte flipped in the middle of
 *                             DATASET's raw data (its place from H5Dget_offset)
 *   truncate SRC DST          DST = the first half of SRC
 *   attr SRC DST NAME N       DST = SRC with the root attribute NAME set to N
 *   config SRC DST FROM TO    DST = SRC with FROM replaced by TO in the stored config
 *   downgrade SRC DST         DST = SRC made to look like format 1
 */
#include <errno.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hdf5.h>

#include "ckpt_damage.h"
#include "insitra.h"
#include "test_util.h"

enum { T = 8, FI = 3, FO = 2, N = 12 };

/* The trainer every file here is made with (or loaded into); NULL (a failure
 * counted) if it cannot be made. */
static insitra_trainer *create(insitra_test *test)
{
    insitra_config *cfg =
        insitra_test_config(test, "model: {seq_len: 8, in_features: 3, out_features: 2, d_model: 16,\n"
                                  "        n_layers: 2, n_heads: 2}\n"
                                  "training: {batch_size: 4, seed: 5}\n"
                                  "data: {capacity: 16}\n"
                                  "parallel: {zero_stage: 1}\n"
                                  "checkpoint: {include_samples: true, keep_last: 3}\n");
    if (!cfg) return NULL;
    insitra_trainer *t = NULL;
    EXPECT_OK(test, insitra_trainer_create(&t, cfg, MPI_COMM_WORLD), "setup");
    insitra_config_free(cfg);
    return t;
}

/* A checkpoint written by an earlier version (format 1, from before the
 * metadata checksum) loads at its step, and training goes on from it. */
static void load(insitra_test *test, const char *file, int64_t step)
{
    insitra_trainer *t = create(test);
    if (!t) return;
    char path[4096];
    int64_t held = 0;
    insitra_metrics m = {0};
    if (EXPECT_OK(test, insitra_checkpoint_load(t, file, path, sizeof path), "load") &&
        EXPECT(test, insitra_samples_stored(t, &held) == INSITRA_STATUS_OK && held > 0,
               "load: no samples restored") &&
        EXPECT_OK(test, insitra_train_step(t, &m), "train after the load") &&
        EXPECT(test, m.step == step + 1,
               "load: the step after the load (%lld) is not the checkpoint's + 1 (%lld)", (long long)m.step,
               (long long)(step + 1)) &&
        test->rank == 0)
        printf("loaded %s at step %lld (%lld samples here), trained step %lld\n", path, (long long)step,
               (long long)held, (long long)m.step);
    insitra_trainer_free(t);
}

static void make(insitra_test *test, const char *dir)
{
    insitra_trainer *t = create(test);
    if (!t) return;
    static float x[N][T][FI], y[N][T][FO];
    insitra_test_fill_wave(&x[0][0][0], N * T * FI, sin, 0.3, test->rank, 1);
    insitra_test_fill_wave(&y[0][0][0], N * T * FO, cos, 0.2, -test->rank, 1);
    /* Rank 1 holds fewer samples: the stored counts differ per rank. */
    if (!EXPECT_OK(test, insitra_push_samples(t, N - 2 * test->rank, &x[0][0][0], &y[0][0][0]), "push"))
        return;
    char path[4096];
    for (int save = 0; save < 2; save++) {
        for (int s = 0; s < 3; s++)
            if (!EXPECT_OK(test, insitra_train_step(t, NULL), "train")) return;
        if (!EXPECT_OK(test, insitra_checkpoint_save(t, dir, path, sizeof path), "save")) return;
        if (test->rank == 0) printf("saved %s\n", path);
    }
    insitra_trainer_free(t);
}

/* DST = a copy of SRC, damaged by one of ckpt_damage.h's functions (each
 * says why it failed): 0 or 1 as they return, 2 for a mode not known. */
static int damaged_copy(int argc, char **argv)
{
    const char *mode = argv[1], *src = argv[2], *dst = argv[3];
    if (!strcmp(mode, "truncate")) return damage_copy(src, dst, 0.5);
    if (damage_copy(src, dst, 1.0)) return 1;
    if (!strcmp(mode, "corrupt") && argc == 5) return damage_flip_data(dst, argv[4]);
    if (!strcmp(mode, "attr") && argc == 6) return damage_set_int(dst, argv[4], atoll(argv[5]));
    if (!strcmp(mode, "config") && argc == 6) return damage_config(dst, argv[4], argv[5]);
    if (!strcmp(mode, "downgrade")) return damage_downgrade(dst);
    return 2;
}

int main(int argc, char **argv)
{
    /* The summary line names the mode: "ckpt_cli_make corrupt on 1 rank: passed". */
    char name[128];
    snprintf(name, sizeof name, "ckpt_cli_make %s", argc > 1 ? argv[1] : "");
    insitra_test test = insitra_test_begin(&argc, &argv, name);
    const char *mode = argc > 1 ? argv[1] : "";
    bool usage = false;
    if (!strcmp(mode, "make") && argc == 3)
        make(&test, argv[2]);
    else if (!strcmp(mode, "load") && argc == 4)
        load(&test, argv[2], atoll(argv[3]));
    else if (argc >= 4) {
        const int rc = damaged_copy(argc, argv);
        usage = rc == 2;
        EXPECT(&test, rc != 1, "%s %s -> %s failed", mode, argv[2], argv[3]);
    } else
        usage = true;
    if (usage) {
        fprintf(stderr, "usage: test_ckpt_cli_make make DIR | load FILE STEP | corrupt SRC DST DATASET |\n"
                        "       truncate SRC DST | attr SRC DST NAME VALUE | config SRC DST FROM TO |\n"
                        "       downgrade SRC DST\n");
        MPI_Finalize();
        return 2;
    }
    return insitra_test_end(&test);
}
