/*
 * Training-step benchmark of insitra's GPU backend.
 *
 *   mpiexec -n G bench_gpu_step S|M|L [warmup_steps] [timed_steps] [key=value ...]
 *                                  [--memory-gib=X]
 *
 * Builds config S, M or L through the public API only (include/insitra.h),
 * with device=cuda and precision=bf16, creates the trainer on
 * MPI_COMM_WORLD, fills every rank's sample store with 64 synthetic samples
 * (a different seed per rank) and times insitra_train_step. Extra key=value
 * arguments go to insitra_config_set after the benchmark's own keys, e.g.
 * precision=fp32, parallel.zero_stage=2 or cuda.graphs=false.
 *
 * Timing: every step starts after an MPI_Barrier; MPI_Wtime is read before
 * insitra_train_step and after it plus cudaDeviceSynchronize (so that work
 * the library might leave queued is counted). A step's time is the slowest
 * rank's (MPI_Allreduce MAX); the figure is the median over the timed steps.
 * Weak scaling: each rank trains B samples per step, so a step covers
 * G x B x T tokens.
 *
 * --memory-gib=X leaves the trainer X GiB of the device: after the CUDA
 * context exists, a ballast of (free memory - X GiB) is allocated and held
 * until the end, so a run that needs more fails as it would on a smaller
 * card (bench/run_long_seq.sh searches the largest T that trains so).
 * Only min(64, data.capacity) samples are pushed.
 *
 * Memory: each rank selects its GPU as its rank within the node (the
 * library is expected to choose the same one), creates the CUDA context and
 * reads cudaMemGetInfo before insitra_trainer_create and again after the
 * last step. The drop in free memory is what the trainer holds on the
 * device: its buffers, cuBLAS/NCCL workspaces, captured CUDA graphs, and
 * whatever its allocator keeps. The device-wide free figure also moves with
 * other processes on the same GPU, so run one rank per GPU and nothing else.
 * peak_mem_gib is rank 0's figure; insitra_memory_report's total (the
 * library's own accounting) is printed next to it.
 *
 * FLOPs per token = 6 x params + 12 x L x C x T (bench/README.md);
 * MFU = tokens/s x FLOPs per token / (989e12 x G), 989 TFLOP/s being the
 * dense BF16 peak of one H100/H200 SXM.
 *
 * The last line, on rank 0, is key=value pairs starting
 *   insitra config=S gpus=1 step_ms=... tok_s=... mfu=... peak_mem_gib=... params=...
 * Any failed call prints insitra_last_error() (or the CUDA error) and the
 * program exits non-zero.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>
#include <mpi.h>

#include "gpu_bench.h"
#include "insitra.h"

#define PEAK_FLOPS_PER_GPU 989e12 /* dense BF16, H100/H200 SXM */
#define GIB (1024.0 * 1024.0 * 1024.0)

enum { DEFAULT_WARMUP = 10 };

static int my_rank = 0;
static void *ballast = NULL; /* --memory-gib: held from before the trainer to the end */

/* The sizes a run actually used, read back from the configuration after the
 * overrides, so that token and FLOP counts follow e.g. a model.seq_len=...
 * override. */
typedef struct run_shape {
    int64_t seq_len, in_features, out_features, d_model, n_layers, n_heads, batch_size, capacity;
    char device[32], precision[32];
} run_shape;

static int cuda_ok(cudaError_t st, const char *what)
{
    if (st == cudaSuccess)
        return 1;
    fprintf(stderr, "bench_gpu_step: rank %d: %s: %s (%s)\n", my_rank, what,
            cudaGetErrorString(st), cudaGetErrorName(st));
    return 0;
}

/* The benchmark's configuration, then the overrides; on success the sizes
 * in effect are in *shape. Local; returns 1 on success. */
static int build_config(const gpu_bench_config *gc, int n_overrides, char **overrides,
                        insitra_config **cfg_out, run_shape *shape)
{
    insitra_config *cfg = NULL;
    if (!gpu_bench_build_config(gc, n_overrides, overrides, &cfg)) return 0;
    int ok = gpu_bench_get_int(cfg, "model.seq_len", &shape->seq_len) &&
             gpu_bench_get_int(cfg, "model.in_features", &shape->in_features) &&
             gpu_bench_get_int(cfg, "model.out_features", &shape->out_features) &&
             gpu_bench_get_int(cfg, "model.d_model", &shape->d_model) &&
             gpu_bench_get_int(cfg, "model.n_layers", &shape->n_layers) &&
             gpu_bench_get_int(cfg, "model.n_heads", &shape->n_heads) &&
             gpu_bench_get_int(cfg, "training.batch_size", &shape->batch_size) &&
             gpu_bench_get_int(cfg, "data.capacity", &shape->capacity) &&
             gpu_bench_get_text(cfg, "device", shape->device, sizeof shape->device) &&
             gpu_bench_get_text(cfg, "precision", shape->precision, sizeof shape->precision);
    if (!ok) {
        insitra_config_free(cfg);
        return 0;
    }
    *cfg_out = cfg;
    return 1;
}

static int compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of v[0..n); sorts v. */
static double median_sorted(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, compare_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Makes this rank's GPU current: its rank within the node, modulo the
 * visible devices. Local; returns 1 on success. */
static int select_device(int *device)
{
    MPI_Comm node;
    int local_rank = 0, ndevices = 0;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, my_rank, MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, &local_rank);
    MPI_Comm_free(&node);
    if (!cuda_ok(cudaGetDeviceCount(&ndevices), "cudaGetDeviceCount"))
        return 0;
    if (ndevices < 1) {
        fprintf(stderr, "bench_gpu_step: rank %d: no CUDA device visible\n", my_rank);
        return 0;
    }
    *device = local_rank % ndevices;
    /* cudaFree(0) makes sure the context exists before the first reading. */
    return cuda_ok(cudaSetDevice(*device), "cudaSetDevice") && cuda_ok(cudaFree(NULL), "cudaFree");
}

static int parse_count(const char *text, int min, const char *what, int *out)
{
    char *end = NULL;
    long v = strtol(text, &end, 10);
    if (end == text || *end != '\0' || v < min || v > 1000000) {
        if (my_rank == 0)
            fprintf(stderr, "bench_gpu_step: %s must be an integer >= %d, got '%s'\n", what, min,
                    text);
        return 0;
    }
    *out = (int)v;
    return 1;
}

/* Holds all but leave_gib GiB of the device's free memory in ballast (none
 * when leave_gib is 0). Local; returns 1 on success. */
static int take_ballast(double leave_gib)
{
    size_t free_mem = 0, total = 0;
    if (leave_gib <= 0.0) return 1;
    if (!cuda_ok(cudaMemGetInfo(&free_mem, &total), "cudaMemGetInfo")) return 0;
    const double leave = leave_gib * GIB;
    if ((double)free_mem <= leave) {
        fprintf(stderr, "bench_gpu_step: rank %d: --memory-gib=%g but only %.3f GiB are free\n", my_rank,
                leave_gib, (double)free_mem / GIB);
        return 0;
    }
    return cuda_ok(cudaMalloc(&ballast, free_mem - (size_t)leave), "cudaMalloc of the ballast");
}

static int run(const gpu_bench_config *gc, int warmup, int steps, int n_overrides, char **overrides,
               double leave_gib)
{
    int nranks = 1, device = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);

    size_t free_before = 0, free_after = 0, total_mem = 0;
    int ok = select_device(&device) && take_ballast(leave_gib) &&
             cuda_ok(cudaMemGetInfo(&free_before, &total_mem), "cudaMemGetInfo");
    if (gpu_bench_any_rank(!ok))
        return 0;

    insitra_config *cfg = NULL;
    run_shape sh;
    memset(&sh, 0, sizeof sh);
    ok = build_config(gc, n_overrides, overrides, &cfg, &sh);
    if (gpu_bench_any_rank(!ok)) {
        insitra_config_free(cfg); /* NULL where this rank failed */
        return 0;
    }

    insitra_trainer *trainer = NULL;
    ok = gpu_bench_ok(insitra_trainer_create(&trainer, cfg, MPI_COMM_WORLD),
                    "insitra_trainer_create");
    insitra_config_free(cfg);
    if (!ok) /* collective: every rank has failed */
        return 0;

    int64_t params = 0;
    int current = device;
    ok = gpu_bench_ok(insitra_trainer_num_parameters(trainer, &params),
                    "insitra_trainer_num_parameters") &&
         gpu_bench_push_store(trainer, sh.capacity < GPU_BENCH_STORE_SAMPLES ? sh.capacity : GPU_BENCH_STORE_SAMPLES,
                              sh.seq_len, sh.in_features, sh.out_features) &&
         cuda_ok(cudaGetDevice(&current), "cudaGetDevice");
    /* The library is expected to train on the device chosen here. If it made
     * another one current, it trains there: synchronize that one, and drop
     * the memory figure, which was read on the other. */
    int memory_valid = 1;
    if (ok && current != device) {
        fprintf(stderr,
                "bench_gpu_step: rank %d: WARNING: the trainer made device %d current, not %d; "
                "no memory figure\n",
                my_rank, current, device);
        device = current;
        memory_valid = 0;
    }
    double *times = malloc((size_t)steps * sizeof *times);
    double *waits = malloc((size_t)steps * sizeof *waits);
    if (ok && (!times || !waits)) {
        fprintf(stderr, "bench_gpu_step: rank %d: out of host memory\n", my_rank);
        ok = 0;
    }
    if (gpu_bench_any_rank(!ok)) {
        free(times);
        free(waits);
        insitra_trainer_free(trainer);
        return 0;
    }

    insitra_metrics m;
    memset(&m, 0, sizeof m);
    for (int i = 0; ok && i < warmup + steps; i++) {
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = MPI_Wtime();
        ok = gpu_bench_ok(insitra_train_step(trainer, &m), "insitra_train_step");
        /* Local, so the ranks agree on it before going on. */
        int synced = !ok || cuda_ok(cudaDeviceSynchronize(), "cudaDeviceSynchronize after a step");
        double dt = MPI_Wtime() - t0;
        if (gpu_bench_any_rank(!synced))
            ok = 0;
        if (i >= warmup) {
            times[i - warmup] = dt;
            waits[i - warmup] = m.comm_wait_seconds;
        }
    }
    if (ok && !isfinite(m.loss)) {
        fprintf(stderr, "bench_gpu_step: rank %d: loss is %g after %d steps\n", my_rank, m.loss,
                warmup + steps);
        ok = 0;
    }
    insitra_memory_usage usage;
    memset(&usage, 0, sizeof usage);
    ok = ok && cuda_ok(cudaMemGetInfo(&free_after, &total_mem), "cudaMemGetInfo") &&
         gpu_bench_ok(insitra_memory_report(trainer, &usage), "insitra_memory_report");
    if (gpu_bench_any_rank(!ok)) {
        free(times);
        free(waits);
        insitra_trainer_free(trainer);
        return 0;
    }

    /* Slowest rank per step, then the median over steps. */
    MPI_Allreduce(MPI_IN_PLACE, times, steps, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, waits, steps, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    double held = !memory_valid ? NAN
                  : free_before > free_after ? (double)(free_before - free_after) / GIB : 0.0;
    double held_any = memory_valid ? held : -1.0, held_max = held_any;
    MPI_Allreduce(&held_any, &held_max, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (held_max < 0.0)
        held_max = NAN;

    if (my_rank == 0) {
        double mean = 0.0;
        for (int i = 0; i < steps; i++)
            mean += times[i] / steps;
        double step_s = median_sorted(times, steps); /* times[0] is now the fastest */
        double wait_s = median_sorted(waits, steps);
        double tokens = (double)nranks * (double)sh.batch_size * (double)sh.seq_len;
        double flops_per_token =
            6.0 * (double)params + 12.0 * (double)sh.n_layers * (double)sh.d_model *
                                       (double)sh.seq_len;
        double tok_s = tokens / step_s;
        double mfu = tok_s * flops_per_token / (PEAK_FLOPS_PER_GPU * nranks);
        struct cudaDeviceProp prop;
        const char *gpu_name = cudaGetDeviceProperties(&prop, device) == cudaSuccess
                                   ? prop.name : "unknown";
        char gpu[sizeof prop.name];
        snprintf(gpu, sizeof gpu, "%s", gpu_name);
        for (char *c = gpu; *c; c++)
            if (*c == ' ')
                *c = '_';
        printf("insitra config=%s gpus=%d step_ms=%.3f tok_s=%.1f mfu=%.4f peak_mem_gib=%.3f "
               "params=%lld step_ms_min=%.3f step_ms_mean=%.3f warmup=%d steps=%d "
               "tokens_per_step=%.0f flops_per_token=%.0f comm_wait_ms=%.3f "
               "mem_report_gib=%.3f peak_mem_max_gib=%.3f device_total_gib=%.1f "
               "device=%s precision=%s gpu=%s loss=%.6g seq_len=%lld batch=%lld memory_gib=%g\n",
               gc->name, nranks, 1e3 * step_s, tok_s, mfu, held, (long long)params,
               1e3 * times[0], 1e3 * mean, warmup, steps, tokens, flops_per_token, 1e3 * wait_s,
               (double)usage.total_bytes / GIB, held_max, (double)total_mem / GIB, sh.device,
               sh.precision, gpu, m.loss, (long long)sh.seq_len, (long long)sh.batch_size, leave_gib);
        fflush(stdout);
    }
    free(times);
    free(waits);
    return gpu_bench_ok(insitra_trainer_free(trainer), "insitra_trainer_free");
}

static void usage(void)
{
    if (my_rank == 0)
        fprintf(stderr,
                "usage: mpiexec -n G bench_gpu_step S|M|L [warmup_steps=%d] "
                "[timed_steps=30 for S, 20 for M and L] [key=value ...] [--memory-gib=X]\n",
                DEFAULT_WARMUP);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    gpu_bench_init("bench_gpu_step");
    my_rank = gpu_bench_rank();
    /* --memory-gib=X, anywhere after the config: taken out of the arguments. */
    double leave_gib = 0.0;
    int kept = 1;
    for (int a = 1; a < argc; a++) {
        if (strncmp(argv[a], "--memory-gib=", 13) == 0) {
            char *end = NULL;
            leave_gib = strtod(argv[a] + 13, &end);
            if (end == argv[a] + 13 || *end != '\0' || !(leave_gib > 0.0)) {
                if (my_rank == 0) fprintf(stderr, "bench_gpu_step: bad %s (GiB, more than 0)\n", argv[a]);
                MPI_Finalize();
                return EXIT_FAILURE;
            }
        } else {
            argv[kept++] = argv[a];
        }
    }
    argc = kept;
    const gpu_bench_config *gc = argc > 1 ? gpu_bench_find(argv[1]) : NULL;
    int ok = 0;
    if (!gc) {
        usage();
    } else {
        int warmup = DEFAULT_WARMUP, steps = gc->default_steps;
        /* A key=value argument ends the positional counts. */
        int first_override = 2;
        if (argc > first_override && !strchr(argv[first_override], '=')) {
            if (!parse_count(argv[first_override], 0, "warmup_steps", &warmup)) {
                usage();
                MPI_Finalize();
                return EXIT_FAILURE;
            }
            first_override++;
            if (argc > first_override && !strchr(argv[first_override], '=')) {
                if (!parse_count(argv[first_override], 1, "timed_steps", &steps)) {
                    usage();
                    MPI_Finalize();
                    return EXIT_FAILURE;
                }
                first_override++;
            }
        }
        ok = run(gc, warmup, steps, argc - first_override, argv + first_override, leave_gib);
    }
    cudaFree(ballast);
    MPI_Finalize();
    return ok ? EXIT_SUCCESS : EXIT_FAILURE;
}
