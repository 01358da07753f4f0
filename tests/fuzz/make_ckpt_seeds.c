/*
 * Writes the checkpoint seeds of tests/fuzz/corpus/ckpt: small, valid
 * checkpoints of the FUZZ_CKPT_MODEL_YAML model, made by the library itself
 * (never edited by hand), one per layout a load must handle:
 *
 *   mpiexec -n 1 fuzz_make_ckpt_seeds OUTDIR
 *   mpiexec -n 2 fuzz_make_ckpt_seeds OUTDIR
 *
 * each write OUTDIR/np<ranks>-zero<stage>[-samples].h5 for ZeRO stages 0 and
 * 3, the second with the sample stores included. Run both after a change of
 * the checkpoint format and commit the files (tests/fuzz/README.md).
 */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ckpt_seed.h"
#include "insitra.h"

enum { T = 2, FI = 1, FO = 1, N = 3 };

static int rank, ranks;

static int fail(const char *what)
{
    fprintf(stderr, "make_ckpt_seeds: rank %d: %s: %s\n", rank, what, insitra_last_error());
    return 1;
}

/* Trains two steps with the given extra keys and saves to a scratch
 * directory; rank 0 then moves the file to OUTDIR/name and clears up. */
static int make_seed(const char *outdir, const char *name, const char *extra)
{
    char yaml[1024], scratch[4096], path[4096], dest[4096];
    snprintf(yaml, sizeof yaml, "%s%s", FUZZ_CKPT_MODEL_YAML, extra);
    snprintf(scratch, sizeof scratch, "%s/.scratch-%s", outdir, name);
    snprintf(dest, sizeof dest, "%s/%s", outdir, name);

    insitra_config *cfg = NULL;
    insitra_trainer *t = NULL;
    if (insitra_config_create(&cfg) != INSITRA_STATUS_OK ||
        insitra_config_load_yaml_string(cfg, yaml) != INSITRA_STATUS_OK ||
        insitra_trainer_create(&t, cfg, MPI_COMM_WORLD) != INSITRA_STATUS_OK)
        return fail("setup");
    insitra_config_free(cfg);
    float x[N * T * FI], y[N * T * FO];
    for (int i = 0; i < N * T * FI; i++) x[i] = (float)sin(0.7 * i + rank);
    for (int i = 0; i < N * T * FO; i++) y[i] = (float)cos(0.4 * i - rank);
    /* Rank 1 holds one sample fewer: per-rank counts differ in the file. */
    if (insitra_push_samples(t, N - rank, x, y) != INSITRA_STATUS_OK) return fail("push");
    for (int s = 0; s < 2; s++)
        if (insitra_train_step(t, NULL) != INSITRA_STATUS_OK) return fail("train");
    if (insitra_checkpoint_save(t, scratch, path, sizeof path) != INSITRA_STATUS_OK)
        return fail("save");
    insitra_trainer_free(t);
    if (rank == 0) {
        char latest[4200];
        snprintf(latest, sizeof latest, "%s/latest", scratch);
        if (rename(path, dest) != 0 || unlink(latest) != 0 || rmdir(scratch) != 0) {
            perror(dest);
            return 1;
        }
        printf("wrote %s\n", dest);
    }
    return 0;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &ranks);
    int rc = 2;
    if (argc == 2) {
        char name[64];
        snprintf(name, sizeof name, "np%d-zero0.h5", ranks);
        rc = make_seed(argv[1], name, "parallel: {zero_stage: 0}\n");
        snprintf(name, sizeof name, "np%d-zero3-samples.h5", ranks);
        rc = rc ? rc
                : make_seed(argv[1], name,
                            "parallel: {zero_stage: 3}\ncheckpoint: {include_samples: true}\n");
    } else if (rank == 0) {
        fprintf(stderr, "usage: [mpiexec -n RANKS] fuzz_make_ckpt_seeds OUTDIR\n");
    }
    MPI_Finalize();
    return rc;
}
