/*
 * insitra's collectives against raw NCCL, in the same run (issue #6): the
 * communication one training step issues at a ZeRO stage, alone (per-unit
 * reductions with their packing, the parameter gathers), timed against the
 * same bytes moved by whole-buffer NCCL calls (all-reduce at stage 0,
 * reduce-scatter + all-gather at stages 1-3).
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

#include "gpu.h"
#include "insitra.h"
#include "trainer.h"

static const struct {
    const char *name;
    const char *yaml;
} configs[] = {
    {"S", "model: {seq_len: 256, in_features: 16, out_features: 16, d_model: 128, n_layers: 4, n_heads: 4}\n"},
    {"M", "model: {seq_len: 1024, in_features: 64, out_features: 64, d_model: 768, n_layers: 12, n_heads: 12}\n"},
    {"L", "model: {seq_len: 1024, in_features: 64, out_features: 64, d_model: 1024, n_layers: 24, n_heads: 16}\n"},
};

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int which = -1;
    for (int i = 0; argc > 1 && i < 3; i++)
        if (strcmp(argv[1], configs[i].name) == 0) which = i;
    if (which < 0) {
        if (rank == 0) fprintf(stderr, "usage: bench_gpu_comm S|M|L [reps] [key=value ...]\n");
        MPI_Finalize();
        return 2;
    }
    const int reps = argc > 2 && strchr(argv[2], '=') == NULL ? atoi(argv[2]) : 20;
    insitra_config *cfg;
    insitra_config_create(&cfg);
    insitra_config_load_yaml_string(cfg, configs[which].yaml);
    insitra_config_load_yaml_string(cfg, "device: cuda\nprecision: bf16\ntraining: {batch_size: 1}\n"
                                         "data: {capacity: 1}\n");
    for (int a = 2; a < argc; a++) {
        char kv[256];
        snprintf(kv, sizeof kv, "%s", argv[a]);
        char *eq = strchr(kv, '=');
        if (!eq) continue;
        *eq = '\0';
        if (insitra_config_set(cfg, kv, eq + 1) != INSITRA_STATUS_OK) {
            if (rank == 0) fprintf(stderr, "bench_gpu_comm: %s\n", insitra_last_error());
            MPI_Finalize();
            return 2;
        }
    }
    insitra_trainer *t = NULL;
    double sec = 0, raw = 0;
    int64_t bytes = 0;
    insitra_status s = insitra_trainer_create(&t, cfg, MPI_COMM_WORLD);
    if (s == INSITRA_STATUS_OK) s = insitra_gpu_time_collectives(t->gpu, reps, &sec, &raw, &bytes);
    if (s != INSITRA_STATUS_OK) {
        fprintf(stderr, "bench_gpu_comm: rank %d: %s\n", rank, insitra_last_error());
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    /* the slowest rank's figures */
    double both[2] = {sec, raw};
    MPI_Allreduce(MPI_IN_PLACE, both, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (rank == 0)
        printf("comm config=%s gpus=%d stage=%lld bytes=%lld insitra_ms=%.3f raw_ms=%.3f ratio=%.3f "
               "insitra_busbw_gbs=%.1f\n",
               configs[which].name, size, (long long)t->cfg.parallel.zero_stage, (long long)bytes,
               both[0] * 1e3, both[1] * 1e3, both[1] / both[0],
               (double)bytes * 2.0 * (size - 1) / size / both[0] / 1e9);
    insitra_trainer_free(t);
    insitra_config_free(cfg);
    MPI_Finalize();
    return 0;
}
