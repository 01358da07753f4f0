/*
 * Training-step benchmark for insitra, and the machine's sgemm rate.
 *
 *   bench_step S|M [warmup_steps] [timed_steps] [key=value ...]
 *       Builds config S or M through the public API, fills the sample store
 *       with synthetic data and times insitra_train_step (MPI_Wtime around
 *       each call). Extra key=value arguments are passed to
 *       insitra_config_set after the config's own keys, so a run can try e.g.
 *       a different micro-batch without recompiling.
 *
 *   bench_step sgemm [reps]
 *       Times cblas_sgemm on the GEMM shapes that dominate config M
 *       (B*T = 2048 tokens, C = 512, 4C = 2048), median of reps per shape.
 *
 * Either mode prints one machine-readable line of key=value pairs last;
 * bench/run_step_bench.sh reads it. Run it with the thread count in
 * OMP_NUM_THREADS (the library and OpenBLAS both take it from there).
 *
 * FLOPs per token follow the convention: 6 x params for the weight
 * matmuls of forward + backward, plus 12 x L x C x T for attention
 * (QK^T and AV, forward and backward). A step of B samples has B x T tokens.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cblas.h>
#include <mpi.h>

#include "insitra.h"

/* The two benchmark configurations of the issue. */
typedef struct bench_config {
    const char *name;
    int64_t seq_len;      /* T */
    int64_t in_features;  /* F_in */
    int64_t out_features; /* F_out */
    int64_t d_model;      /* C */
    int64_t n_layers;     /* L */
    int64_t n_heads;      /* H */
    int64_t batch_size;   /* B, samples per optimizer step on this rank */
    int64_t slices;       /* ranks sharing each sample's tokens: parallel.cp x parallel.tp */
} bench_config;

static const bench_config bench_configs[] = {
    {"S", 256, 16, 16, 128, 4, 4, 16, 1},
    {"M", 256, 16, 16, 512, 8, 8, 8, 1},
};

/* Samples in the store: more than one batch, so the sampler has to draw. */
enum { BENCH_CAPACITY = 64 };

static int compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of n values; sorts v in place. */
static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, compare_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Deterministic uniform values in [-1, 1) (64-bit LCG, top 24 bits). */
static float next_uniform(uint64_t *state)
{
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((*state >> 40) * (1.0 / 8388608.0) - 1.0);
}

/* Seconds of CPU time of the whole process (all threads). */
static double cpu_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static const char *thread_env(void)
{
    const char *t = getenv("OMP_NUM_THREADS");
    return t && *t ? t : "unset";
}

static int check(insitra_status st, const char *what)
{
    if (st == INSITRA_STATUS_OK)
        return 0;
    fprintf(stderr, "bench_step: %s failed: %s: %s\n", what, insitra_status_name(st),
            insitra_last_error());
    return 1;
}

static int set_key(insitra_config *cfg, const char *key, int64_t value)
{
    char text[32];
    snprintf(text, sizeof text, "%lld", (long long)value);
    return check(insitra_config_set(cfg, key, text), key);
}

static int get_key(const insitra_config *cfg, const char *key, int64_t *value)
{
    char text[64], *end = NULL;
    if (check(insitra_config_get(cfg, key, text, sizeof text), key))
        return 1;
    *value = (int64_t)strtoll(text, &end, 10);
    if (end == text || *end != '\0') {
        fprintf(stderr, "bench_step: %s reads back as '%s', not an integer\n", key, text);
        return 1;
    }
    return 0;
}

/* Builds the trainer for bc plus the key=value overrides in argv. The sizes
 * are read back into bc afterwards, so an override of a model key still gives
 * the right token and FLOP counts. */
static int make_trainer(bench_config *bc, int n_overrides, char **overrides,
                        insitra_trainer **trainer)
{
    insitra_config *cfg = NULL;
    int err = check(insitra_config_create(&cfg), "insitra_config_create");
    err = err || set_key(cfg, "model.seq_len", bc->seq_len);
    err = err || set_key(cfg, "model.in_features", bc->in_features);
    err = err || set_key(cfg, "model.out_features", bc->out_features);
    err = err || set_key(cfg, "model.d_model", bc->d_model);
    err = err || set_key(cfg, "model.n_layers", bc->n_layers);
    err = err || set_key(cfg, "model.n_heads", bc->n_heads);
    err = err || set_key(cfg, "training.batch_size", bc->batch_size);
    err = err || set_key(cfg, "data.capacity", BENCH_CAPACITY);
    for (int i = 0; i < n_overrides && !err; i++) {
        char key[128];
        const char *eq = strchr(overrides[i], '=');
        size_t len = eq ? (size_t)(eq - overrides[i]) : 0;
        if (!eq || len == 0 || len >= sizeof key) {
            fprintf(stderr, "bench_step: expected key=value, got '%s'\n", overrides[i]);
            err = 1;
            break;
        }
        memcpy(key, overrides[i], len);
        key[len] = '\0';
        err = check(insitra_config_set(cfg, key, eq + 1), overrides[i]);
    }
    err = err || get_key(cfg, "model.seq_len", &bc->seq_len);
    err = err || get_key(cfg, "model.in_features", &bc->in_features);
    err = err || get_key(cfg, "model.out_features", &bc->out_features);
    err = err || get_key(cfg, "model.d_model", &bc->d_model);
    err = err || get_key(cfg, "model.n_layers", &bc->n_layers);
    err = err || get_key(cfg, "model.n_heads", &bc->n_heads);
    err = err || get_key(cfg, "training.batch_size", &bc->batch_size);
    int64_t cp = 1, tp = 1;
    err = err || get_key(cfg, "parallel.cp", &cp);
    err = err || get_key(cfg, "parallel.tp", &tp);
    bc->slices = cp * tp;
    err = err || check(insitra_trainer_create(trainer, cfg, MPI_COMM_WORLD),
                       "insitra_trainer_create");
    insitra_config_free(cfg);
    return err;
}

/* Fills the store with BENCH_CAPACITY samples: x uniform in [-1, 1), y a
 * smooth function of x, so the loss is finite and the step does real work. */
static int push_synthetic(insitra_trainer *trainer, const bench_config *bc, int rank)
{
    const int64_t T = bc->seq_len / bc->slices; /* this rank's tokens of each sample */
    size_t nx = (size_t)(BENCH_CAPACITY * T * bc->in_features);
    size_t ny = (size_t)(BENCH_CAPACITY * T * bc->out_features);
    float *x = malloc(nx * sizeof *x);               /* (N,T,F_in) */
    float *y = malloc(ny * sizeof *y);               /* (N,T,F_out) */
    if (!x || !y) {
        fprintf(stderr, "bench_step: out of memory for synthetic samples\n");
        free(x);
        free(y);
        return 1;
    }
    uint64_t state = 12345u + (uint64_t)rank;
    for (size_t i = 0; i < nx; i++)
        x[i] = next_uniform(&state);
    for (int64_t s = 0; s < BENCH_CAPACITY * T; s++)
        for (int64_t f = 0; f < bc->out_features; f++)
            y[s * bc->out_features + f] =
                sinf(x[s * bc->in_features + f % bc->in_features] * 3.0f);
    int err = check(insitra_push_samples(trainer, BENCH_CAPACITY, x, y), "insitra_push_samples");
    free(x);
    free(y);
    return err;
}

static int bench_training(bench_config *bc, int warmup, int steps, int n_overrides,
                          char **overrides)
{
    int rank = 0, nranks = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);

    insitra_trainer *trainer = NULL;
    int64_t params = 0;
    if (make_trainer(bc, n_overrides, overrides, &trainer) ||
        check(insitra_trainer_num_parameters(trainer, &params),
              "insitra_trainer_num_parameters") ||
        push_synthetic(trainer, bc, rank)) {
        insitra_trainer_free(trainer);
        return 1;
    }

    double *times = malloc((size_t)steps * sizeof *times);
    double *waits = malloc((size_t)steps * sizeof *waits);
    double *cpus = malloc((size_t)steps * sizeof *cpus);
    if (!times || !waits || !cpus) {
        free(times);
        free(waits);
        free(cpus);
        insitra_trainer_free(trainer);
        return 1;
    }
    insitra_metrics metrics = {0};
    int err = 0;
    for (int i = 0; i < warmup + steps && !err; i++) {
        double t0 = MPI_Wtime(), c0 = cpu_seconds();
        err = check(insitra_train_step(trainer, &metrics), "insitra_train_step");
        double dt = MPI_Wtime() - t0;
        if (i >= warmup) {
            times[i - warmup] = dt;
            cpus[i - warmup] = cpu_seconds() - c0;
            waits[i - warmup] = metrics.comm_wait_seconds;
        }
    }
    if (!err && !isfinite(metrics.loss)) {
        fprintf(stderr, "bench_step: loss is not finite after %d steps\n", warmup + steps);
        err = 1;
    }
    if (!err && rank == 0) {
        double mean = 0.0;
        for (int i = 0; i < steps; i++)
            mean += times[i] / steps;
        double step_s = median(times, steps);
        double wait_s = median(waits, steps);
        double cpu_s = median(cpus, steps);
        /* the data replicas' samples: a sample's tokens are spread over `slices` ranks */
        double tokens = (double)(nranks / bc->slices * bc->batch_size * bc->seq_len);
        double flops_per_token =
            6.0 * (double)params + 12.0 * (double)(bc->n_layers * bc->d_model * bc->seq_len);
        double tokens_per_s = tokens / step_s;
        insitra_memory_usage mem = {0};
        insitra_memory_report(trainer, &mem);
        printf("insitra config=%s ranks=%d threads=%s warmup=%d steps=%d params=%lld "
               "tokens_per_step=%.0f flops_per_token=%.0f step_ms=%.3f step_ms_min=%.3f "
               "step_ms_mean=%.3f tokens_per_s=%.1f gflops=%.2f comm_wait_ms=%.3f "
               "comm_share=%.4f cpu_ms=%.3f mem_mib=%.1f loss=%.6g\n",
               bc->name, nranks, thread_env(), warmup, steps, (long long)params, tokens,
               flops_per_token, 1e3 * step_s, 1e3 * times[0], 1e3 * mean, tokens_per_s,
               flops_per_token * tokens_per_s * 1e-9, 1e3 * wait_s, wait_s / step_s, 1e3 * cpu_s,
               (double)mem.total_bytes / 1048576.0, metrics.loss);
    }
    free(times);
    free(waits);
    free(cpus);
    err |= check(insitra_trainer_free(trainer), "insitra_trainer_free");
    return err;
}

/* One GEMM shape as nn.Linear runs it: out (M,N) = in (M,K) . W (N,K)^T. */
typedef struct gemm_shape {
    int m, n, k;
} gemm_shape;

static const gemm_shape sgemm_shapes[] = {
    {2048, 2048, 512}, /* M's fc forward: 2048 tokens, C -> 4C */
    {2048, 512, 2048}, /* M's fcproj forward: 4C -> C */
};

static int bench_sgemm(int reps)
{
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    enum { NSHAPES = sizeof sgemm_shapes / sizeof sgemm_shapes[0] };
    double *times = malloc((size_t)reps * sizeof *times);
    if (!times)
        return 1;
    double total_flops = 0.0, total_s = 0.0, total_best_s = 0.0;
    double shape_gflops[NSHAPES];
    for (int s = 0; s < NSHAPES; s++) {
        const gemm_shape g = sgemm_shapes[s];
        float *a = malloc((size_t)g.m * g.k * sizeof *a); /* (M,K) */
        float *b = malloc((size_t)g.n * g.k * sizeof *b); /* (N,K) */
        float *c = malloc((size_t)g.m * g.n * sizeof *c); /* (M,N) */
        if (!a || !b || !c) {
            free(a);
            free(b);
            free(c);
            free(times);
            return 1;
        }
        uint64_t state = 777u;
        for (size_t i = 0; i < (size_t)g.m * g.k; i++)
            a[i] = next_uniform(&state);
        for (size_t i = 0; i < (size_t)g.n * g.k; i++)
            b[i] = next_uniform(&state);
        /* Two untimed calls: thread start-up and first touch of c. */
        for (int r = -2; r < reps; r++) {
            double t0 = MPI_Wtime();
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, g.m, g.n, g.k, 1.0f, a, g.k, b,
                        g.k, 0.0f, c, g.n);
            double dt = MPI_Wtime() - t0;
            if (r >= 0)
                times[r] = dt;
        }
        double t = median(times, reps); /* sorts: times[0] is the fastest */
        total_best_s += times[0];
        double flops = 2.0 * g.m * g.n * g.k;
        shape_gflops[s] = flops / t * 1e-9;
        total_flops += flops;
        total_s += t;
        free(a);
        free(b);
        free(c);
    }
    free(times);
    if (rank == 0) {
        printf("sgemm threads=%s reps=%d", thread_env(), reps);
        for (int s = 0; s < NSHAPES; s++)
            printf(" gflops_%dx%dx%d=%.2f", sgemm_shapes[s].m, sgemm_shapes[s].n,
                   sgemm_shapes[s].k, shape_gflops[s]);
        /* The rate over both shapes together: total FLOPs / total median time. */
        printf(" gflops=%.2f gflops_best=%.2f\n", total_flops / total_s * 1e-9,
               total_flops / total_best_s * 1e-9);
    }
    return 0;
}

static int parse_count(const char *text, int min, const char *what, int *out)
{
    char *end = NULL;
    long v = strtol(text, &end, 10);
    if (end == text || *end != '\0' || v < min || v > 1000000) {
        fprintf(stderr, "bench_step: %s must be an integer >= %d, got '%s'\n", what, min, text);
        return 1;
    }
    *out = (int)v;
    return 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_step S|M [warmup_steps=3] [timed_steps=10] [key=value ...]\n"
                    "       bench_step sgemm [reps=10]\n");
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int err = 1;
    if (argc < 2) {
        usage();
    } else if (strcmp(argv[1], "sgemm") == 0) {
        int reps = 10;
        if (argc > 3 || (argc == 3 && parse_count(argv[2], 1, "reps", &reps)))
            usage();
        else
            err = bench_sgemm(reps);
    } else {
        bench_config chosen, *bc = NULL;
        for (size_t i = 0; i < sizeof bench_configs / sizeof bench_configs[0]; i++)
            if (strcmp(argv[1], bench_configs[i].name) == 0) {
                chosen = bench_configs[i];
                bc = &chosen;
            }
        int warmup = 3, steps = 10;
        if (!bc)
            usage();
        else if ((argc > 2 && parse_count(argv[2], 0, "warmup_steps", &warmup)) ||
                 (argc > 3 && parse_count(argv[3], 1, "timed_steps", &steps)))
            usage();
        else
            err = bench_training(bc, warmup, steps, argc > 4 ? argc - 4 : 0, argv + 4);
    }
    MPI_Finalize();
    return err ? EXIT_FAILURE : EXIT_SUCCESS;
}
