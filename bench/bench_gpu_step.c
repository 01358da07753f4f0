/*
 * Training-step benchmark of insitra's GPU backend.
 *
 *   mpiexec -n G bench_gpu_step S|M|L [warmup_steps] [timed_steps] [key=value ...]
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

#include "insitra.h"

#define PEAK_FLOPS_PER_GPU 989e12 /* dense BF16, H100/H200 SXM */
#define GIB (1024.0 * 1024.0 * 1024.0)

typedef struct gpu_config {
    const char *name;
    int64_t seq_len;     /* T */
    int64_t features;    /* F_in = F_out */
    int64_t d_model;     /* C */
    int64_t n_layers;    /* L */
    int64_t n_heads;     /* H */
    int64_t batch_size;  /* B, samples per step on each GPU */
    int default_steps;   /* timed steps when not given */
} gpu_config;

static const gpu_config gpu_configs[] = {
    {"S", 256, 16, 128, 4, 4, 16, 30},
    {"M", 1024, 64, 768, 12, 12, 16, 20},
    {"L", 1024, 64, 1024, 24, 16, 16, 20},
};

enum { STORE_SAMPLES = 64, DEFAULT_WARMUP = 10 };

static int my_rank = 0;

/* The sizes a run actually used, read back from the configuration after the
 * overrides, so that token and FLOP counts follow e.g. a model.seq_len=...
 * override. */
typedef struct run_shape {
    int64_t seq_len, in_features, out_features, d_model, n_layers, n_heads, batch_size;
    char device[32], precision[32];
} run_shape;

static int insitra_ok(insitra_status st, const char *what)
{
    if (st == INSITRA_STATUS_OK)
        return 1;
    fprintf(stderr, "bench_gpu_step: rank %d: %s: %s: %s\n", my_rank, what,
            insitra_status_name(st), insitra_last_error());
    return 0;
}

static int cuda_ok(cudaError_t st, const char *what)
{
    if (st == cudaSuccess)
        return 1;
    fprintf(stderr, "bench_gpu_step: rank %d: %s: %s (%s)\n", my_rank, what,
            cudaGetErrorString(st), cudaGetErrorName(st));
    return 0;
}

/* 1 on every rank if any rank passes failed != 0: a local failure must not
 * leave the other ranks waiting in the next collective call. */
static int any_rank(int failed)
{
    int any = failed;
    MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return any;
}

static int set_int(insitra_config *cfg, const char *key, int64_t value)
{
    char text[32];
    snprintf(text, sizeof text, "%lld", (long long)value);
    return insitra_ok(insitra_config_set(cfg, key, text), key);
}

static int get_text(const insitra_config *cfg, const char *key, char *buf, size_t size)
{
    return insitra_ok(insitra_config_get(cfg, key, buf, size), key);
}

static int get_int(const insitra_config *cfg, const char *key, int64_t *value)
{
    char text[64], *end = NULL;
    if (!get_text(cfg, key, text, sizeof text))
        return 0;
    long long v = strtoll(text, &end, 10);
    if (end == text || *end != '\0') {
        fprintf(stderr, "bench_gpu_step: %s reads back as '%s', not an integer\n", key, text);
        return 0;
    }
    *value = (int64_t)v;
    return 1;
}

/* The benchmark's configuration, then the overrides; on success the sizes
 * in effect are in *shape. Local; returns 1 on success. */
static int build_config(const gpu_config *gc, int n_overrides, char **overrides,
                        insitra_config **cfg_out, run_shape *shape)
{
    insitra_config *cfg = NULL;
    if (!insitra_ok(insitra_config_create(&cfg), "insitra_config_create"))
        return 0;
    int ok = set_int(cfg, "model.seq_len", gc->seq_len) &&
             set_int(cfg, "model.in_features", gc->features) &&
             set_int(cfg, "model.out_features", gc->features) &&
             set_int(cfg, "model.d_model", gc->d_model) &&
             set_int(cfg, "model.n_layers", gc->n_layers) &&
             set_int(cfg, "model.n_heads", gc->n_heads) &&
             set_int(cfg, "training.batch_size", gc->batch_size) &&
             set_int(cfg, "data.capacity", STORE_SAMPLES) &&
             set_int(cfg, "log.every_steps", 0) &&
             insitra_ok(insitra_config_set(cfg, "device", "cuda"), "device=cuda") &&
             insitra_ok(insitra_config_set(cfg, "precision", "bf16"), "precision=bf16");
    for (int i = 0; ok && i < n_overrides; i++) {
        const char *arg = overrides[i];
        const char *eq = strchr(arg, '=');
        char key[128];
        size_t len = eq ? (size_t)(eq - arg) : 0;
        if (len == 0 || len >= sizeof key) {
            fprintf(stderr, "bench_gpu_step: expected key=value, got '%s'\n", arg);
            ok = 0;
            break;
        }
        memcpy(key, arg, len);
        key[len] = '\0';
        ok = insitra_ok(insitra_config_set(cfg, key, eq + 1), arg);
    }
    ok = ok && get_int(cfg, "model.seq_len", &shape->seq_len) &&
         get_int(cfg, "model.in_features", &shape->in_features) &&
         get_int(cfg, "model.out_features", &shape->out_features) &&
         get_int(cfg, "model.d_model", &shape->d_model) &&
         get_int(cfg, "model.n_layers", &shape->n_layers) &&
         get_int(cfg, "model.n_heads", &shape->n_heads) &&
         get_int(cfg, "training.batch_size", &shape->batch_size) &&
         get_text(cfg, "device", shape->device, sizeof shape->device) &&
         get_text(cfg, "precision", shape->precision, sizeof shape->precision) &&
         insitra_ok(insitra_config_validate(cfg), "insitra_config_validate");
    if (!ok) {
        insitra_config_free(cfg);
        return 0;
    }
    *cfg_out = cfg;
    return 1;
}

/* Uniform in [-1, 1): a 64-bit LCG, top 24 bits. */
static float uniform_pm1(uint64_t *state)
{
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((double)(*state >> 40) / 8388608.0 - 1.0);
}

/* STORE_SAMPLES samples: x uniform in [-1, 1), y = sin(3 x) feature by
 * feature (input feature f mod F_in for output feature f). Local. */
static int push_store(insitra_trainer *trainer, const run_shape *sh)
{
    size_t tokens = (size_t)STORE_SAMPLES * (size_t)sh->seq_len;
    float *x = malloc(tokens * (size_t)sh->in_features * sizeof *x);  /* [N][T][F_in] */
    float *y = malloc(tokens * (size_t)sh->out_features * sizeof *y); /* [N][T][F_out] */
    int ok = x && y;
    if (!ok) {
        fprintf(stderr, "bench_gpu_step: rank %d: out of host memory for the samples\n", my_rank);
    } else {
        uint64_t state = 0x9e3779b97f4a7c15ULL ^ (uint64_t)(my_rank + 1) * 1000003u;
        for (size_t i = 0; i < tokens * (size_t)sh->in_features; i++)
            x[i] = uniform_pm1(&state);
        for (size_t t = 0; t < tokens; t++)
            for (int64_t f = 0; f < sh->out_features; f++)
                y[t * (size_t)sh->out_features + (size_t)f] =
                    sinf(3.0f * x[t * (size_t)sh->in_features + (size_t)(f % sh->in_features)]);
        ok = insitra_ok(insitra_push_samples(trainer, STORE_SAMPLES, x, y), "insitra_push_samples");
    }
    free(x);
    free(y);
    return ok;
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

static int run(const gpu_config *gc, int warmup, int steps, int n_overrides, char **overrides)
{
    int nranks = 1, device = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);

    size_t free_before = 0, free_after = 0, total_mem = 0;
    int ok = select_device(&device) &&
             cuda_ok(cudaMemGetInfo(&free_before, &total_mem), "cudaMemGetInfo");
    if (any_rank(!ok))
        return 0;

    insitra_config *cfg = NULL;
    run_shape sh;
    memset(&sh, 0, sizeof sh);
    ok = build_config(gc, n_overrides, overrides, &cfg, &sh);
    if (any_rank(!ok)) {
        insitra_config_free(cfg); /* NULL where this rank failed */
        return 0;
    }

    insitra_trainer *trainer = NULL;
    ok = insitra_ok(insitra_trainer_create(&trainer, cfg, MPI_COMM_WORLD),
                    "insitra_trainer_create");
    insitra_config_free(cfg);
    if (!ok) /* collective: every rank has failed */
        return 0;

    int64_t params = 0;
    int current = device;
    ok = insitra_ok(insitra_trainer_num_parameters(trainer, &params),
                    "insitra_trainer_num_parameters") &&
         push_store(trainer, &sh) && cuda_ok(cudaGetDevice(&current), "cudaGetDevice");
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
    if (any_rank(!ok)) {
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
        ok = insitra_ok(insitra_train_step(trainer, &m), "insitra_train_step");
        /* Local, so the ranks agree on it before going on. */
        int synced = !ok || cuda_ok(cudaDeviceSynchronize(), "cudaDeviceSynchronize after a step");
        double dt = MPI_Wtime() - t0;
        if (any_rank(!synced))
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
         insitra_ok(insitra_memory_report(trainer, &usage), "insitra_memory_report");
    if (any_rank(!ok)) {
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
               "device=%s precision=%s gpu=%s loss=%.6g\n",
               gc->name, nranks, 1e3 * step_s, tok_s, mfu, held, (long long)params,
               1e3 * times[0], 1e3 * mean, warmup, steps, tokens, flops_per_token, 1e3 * wait_s,
               (double)usage.total_bytes / GIB, held_max, (double)total_mem / GIB, sh.device,
               sh.precision, gpu, m.loss);
        fflush(stdout);
    }
    free(times);
    free(waits);
    return insitra_ok(insitra_trainer_free(trainer), "insitra_trainer_free");
}

static void usage(void)
{
    if (my_rank == 0)
        fprintf(stderr,
                "usage: mpiexec -n G bench_gpu_step S|M|L [warmup_steps=%d] "
                "[timed_steps=30 for S, 20 for M and L] [key=value ...]\n",
                DEFAULT_WARMUP);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &my_rank);
    const gpu_config *gc = NULL;
    for (size_t i = 0; argc > 1 && i < sizeof gpu_configs / sizeof gpu_configs[0]; i++)
        if (strcmp(argv[1], gpu_configs[i].name) == 0)
            gc = &gpu_configs[i];
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
        ok = run(gc, warmup, steps, argc - first_override, argv + first_override);
    }
    MPI_Finalize();
    return ok ? EXIT_SUCCESS : EXIT_FAILURE;
}
