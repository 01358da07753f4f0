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

enum { T = 8, FI = 3, FO = 2, N = 12 };

static int rank;

static int fail(const char *what, const char *detail)
{
    printf("rank %d: %s: %s\n", rank, what, detail);
    return 1;
}

/* The trainer every file here is made with (or loaded into). */
static insitra_trainer *create(void)
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
        fail("setup", insitra_last_error());
    insitra_config_free(cfg);
    return t;
}

/* A checkpoint written by an earlier version (format 1, from before the
 * metadata checksum) loads at its step, and training goes on from it. */
static int load(const char *file, int64_t step)
{
    insitra_trainer *t = create();
    if (!t) return 1;
    char path[4096];
    int64_t held = 0;
    insitra_metrics m = {0};
    int rc = 0;
    if (insitra_checkpoint_load(t, file, path, sizeof path) != INSITRA_STATUS_OK)
        rc = fail("load", insitra_last_error());
    else if (insitra_samples_stored(t, &held) != INSITRA_STATUS_OK || held == 0)
        rc = fail("load", "no samples restored");
    else if (insitra_train_step(t, &m) != INSITRA_STATUS_OK)
        rc = fail("train after the load", insitra_last_error());
    else if (m.step != step + 1)
        rc = fail("load", "the step after the load is not the checkpoint's");
    if (rc == 0 && rank == 0)
        printf("loaded %s at step %lld (%lld samples here), trained step %lld\n", path, (long long)step,
               (long long)held, (long long)m.step);
    insitra_trainer_free(t);
    return rc;
}

static int make(const char *dir)
{
    insitra_trainer *t = create();
    if (!t) return 1;
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

/* DST = a copy of SRC, damaged by one of ckpt_damage.h's functions. */
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
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    int rc = 2;
    const char *mode = argc > 1 ? argv[1] : "";
    if (!strcmp(mode, "make") && argc == 3)
        rc = make(argv[2]);
    else if (!strcmp(mode, "load") && argc == 4)
        rc = load(argv[2], atoll(argv[3]));
    else if (argc >= 4)
        rc = damaged_copy(argc, argv);
    if (rc == 2)
        fprintf(stderr, "usage: test_ckpt_cli_make make DIR | corrupt SRC DST DATASET |\n"
                        "       truncate SRC DST | attr SRC DST NAME VALUE | config SRC DST FROM TO |\n"
                        "       downgrade SRC DST\n");
    MPI_Finalize();
    return rc;
}
