/*
 * insitra's collectives against raw NCCL, in the same run (issue #6): the
 * communication one training step issues at a ZeRO stage, alone (per-unit
 * reductions with their packing, the parameter gathers), timed against the
 * same bytes moved by one whole-buffer reduce-scatter and all-gather.
 *
 *   mpiexec -n G bench_gpu_comm S|M|L [reps] [key=value ...]
 *
 * Prints on rank 0: "comm config=M gpus=2 stage=0 bytes=... insitra_ms=...
 * raw_ms=... ratio=..." with ratio = raw / insitra (1 = as fast as raw NCCL).
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_bench.h"
#include "insitra.h"
#include "trainer.h"

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    gpu_bench_init("bench_gpu_comm");
    int size;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    const gpu_bench_config *gc = argc > 1 ? gpu_bench_find(argv[1]) : NULL;
    if (!gc) {
        if (gpu_bench_rank() == 0) fprintf(stderr, "usage: bench_gpu_comm S|M|L [reps] [key=value ...]\n");
        MPI_Finalize();
        return 2;
    }
    int first = 2, reps = 20;
    if (argc > first && !strchr(argv[first], '=')) reps = atoi(argv[first++]);
    /* No training here: the smallest batch and store, then the caller's keys. */
    char *overrides[64] = {"training.batch_size=1", "data.capacity=1"};
    int n = 2;
    for (int a = first; a < argc && n < 64; a++) overrides[n++] = argv[a];
    insitra_config *cfg = NULL;
    insitra_trainer *t = NULL;
    double sec = 0, raw = 0;
    int64_t bytes = 0;
    int ok = gpu_bench_build_config(gc, n, overrides, &cfg);
    if (gpu_bench_any_rank(!ok)) {
        insitra_config_free(cfg);
        MPI_Finalize();
        return 1;
    }
    ok = gpu_bench_ok(insitra_trainer_create(&t, cfg, MPI_COMM_WORLD), "insitra_trainer_create");
    insitra_config_free(cfg);
    if (!ok) { /* collective: every rank failed */
        MPI_Finalize();
        return 1;
    }
    /* collective over the ranks; a failure on one leaves the others in NCCL */
    if (!gpu_bench_ok(insitra_zero_time_collectives(&t->engine.zero, reps, &sec, &raw, &bytes),
                      "insitra_zero_time_collectives"))
        MPI_Abort(MPI_COMM_WORLD, 1);
    /* the slowest rank's figures */
    double both[2] = {sec, raw};
    MPI_Allreduce(MPI_IN_PLACE, both, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (gpu_bench_rank() == 0)
        printf("comm config=%s gpus=%d stage=%lld bytes=%lld insitra_ms=%.3f raw_ms=%.3f ratio=%.3f "
               "insitra_busbw_gbs=%.1f\n",
               gc->name, size, (long long)t->cfg.parallel.zero_stage, (long long)bytes,
               both[0] * 1e3, both[1] * 1e3, both[1] / both[0],
               (double)bytes * 2.0 * (size - 1) / size / both[0] / 1e9);
    insitra_trainer_free(t);
    MPI_Finalize();
    return 0;
}
