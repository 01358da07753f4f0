/*
 * Context-parallel training benchmark (issue #17, docs/parallel.md): one
 * sample of T tokens spread over the ranks of MPI_COMM_WORLD.
 *
 *   bench_cp run T [warmup_steps] [timed_steps] [key=value ...]
 *       Config S's width (C = 128, L = 4, H = 4, F_in = F_out = 16) at
 *       model.seq_len = T, one sample per step (training.batch_size = 1, so
 *       the micro-batch is 1), parallel.cp = the world size and dp = 1: rank
 *       c holds tokens [c T/cp, (c+1) T/cp) and the attention goes through
 *       the ring (lib/attention_ring.c). On one rank this is cp = 1, the
 *       plain blocked attention (lib/cpu/attention.c). Each step starts
 *       after an MPI_Barrier; its time is the slowest rank's (MPI_Wtime
 *       around insitra_train_step).
 *
 *   bench_cp plan T ranks [key=value ...]
 *       Local: what insitra_plan_stage says one rank of that run would hold
 *       (the formula insitra_memory_report uses), without allocating it.
 *
 * Extra key=value arguments go to insitra_config_set after the benchmark's
 * own keys. Each mode prints one line of key=value pairs last;
 * bench/run_cp_bench.sh reads it.
 *
 * Figures of a run, each a median over the timed steps:
 *   step_ms      the slowest rank's step;
 *   ring_wait_ms the largest insitra_metrics.ring_wait_seconds of the ranks:
 *                host time blocked in the ring's waits (its exposed
 *                communication, a late neighbour included);
 *   comm_wait_ms the same for comm_wait_seconds: every wait of the step (the
 *                ring and the gradient reduction over the cp ranks);
 *   ring_share   ring_wait / step time, per step, then the median.
 * Memory: the largest insitra_memory_report total of the ranks, its
 * activation part, and the largest maximum resident set (getrusage).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <mpi.h>

#include "insitra.h"

/* Config S's width (bench/bench_step.c); T and the batch are the run's. */
enum { WIDTH_F = 16, WIDTH_C = 128, WIDTH_L = 4, WIDTH_H = 4 };
/* Samples in the store: two, so the sampler draws, and a small store at 64k tokens. */
enum { BENCH_CAPACITY = 2 };

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

/* A value in [-1, 1) from an element's global index (splitmix64), so every
 * rank makes its slice of the same samples without the others'. */
static float uniform_at(uint64_t i)
{
    uint64_t z = i + 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return (float)((z >> 40) * (1.0 / 8388608.0) - 1.0);
}

static int check(insitra_status st, const char *what)
{
    if (st == INSITRA_STATUS_OK) return 0;
    fprintf(stderr, "bench_cp: %s failed: %s: %s\n", what, insitra_status_name(st), insitra_last_error());
    return 1;
}

static int set_int(insitra_config *cfg, const char *key, int64_t value)
{
    char text[32];
    snprintf(text, sizeof text, "%lld", (long long)value);
    return check(insitra_config_set(cfg, key, text), key);
}

/* The benchmark's config at T tokens on cp ranks, then the overrides. */
static int make_config(int64_t T, int cp, int n_overrides, char **overrides, insitra_config **out)
{
    insitra_config *cfg = NULL;
    int err = check(insitra_config_create(&cfg), "insitra_config_create");
    err = err || set_int(cfg, "model.seq_len", T);
    err = err || set_int(cfg, "model.in_features", WIDTH_F);
    err = err || set_int(cfg, "model.out_features", WIDTH_F);
    err = err || set_int(cfg, "model.d_model", WIDTH_C);
    err = err || set_int(cfg, "model.n_layers", WIDTH_L);
    err = err || set_int(cfg, "model.n_heads", WIDTH_H);
    err = err || set_int(cfg, "training.batch_size", 1);
    err = err || set_int(cfg, "data.capacity", BENCH_CAPACITY);
    err = err || set_int(cfg, "log.every_steps", 0);
    err = err || set_int(cfg, "parallel.cp", cp);
    for (int i = 0; i < n_overrides && !err; i++) {
        char key[128];
        const char *eq = strchr(overrides[i], '=');
        const size_t len = eq ? (size_t)(eq - overrides[i]) : 0;
        if (!eq || len == 0 || len >= sizeof key) {
            fprintf(stderr, "bench_cp: expected key=value, got '%s'\n", overrides[i]);
            err = 1;
            break;
        }
        memcpy(key, overrides[i], len);
        key[len] = '\0';
        err = check(insitra_config_set(cfg, key, eq + 1), overrides[i]);
    }
    if (err) {
        insitra_config_free(cfg);
        return 1;
    }
    *out = cfg;
    return 0;
}

/* This rank's slice of BENCH_CAPACITY samples: x (N,Tc,F) uniform in [-1, 1)
 * by global index, y = sin(3x), so the loss is finite and the step real. */
static int push_slices(insitra_trainer *trainer, int64_t T, int cp, int rank)
{
    const int64_t Tc = T / cp, n = (int64_t)BENCH_CAPACITY * Tc * WIDTH_F;
    float *x = malloc((size_t)n * sizeof *x); /* (N,Tc,F) */
    float *y = malloc((size_t)n * sizeof *y); /* (N,Tc,F) */
    if (!x || !y) {
        fprintf(stderr, "bench_cp: out of memory for %lld sample values\n", (long long)n);
        free(x);
        free(y);
        return 1;
    }
    for (int64_t s = 0; s < BENCH_CAPACITY; s++)
        for (int64_t t = 0; t < Tc; t++)
            for (int64_t f = 0; f < WIDTH_F; f++) {
                const int64_t local = (s * Tc + t) * WIDTH_F + f;
                x[local] = uniform_at((uint64_t)((s * T + (int64_t)rank * Tc + t) * WIDTH_F + f));
                y[local] = sinf(3.0f * x[local]);
            }
    const int err = check(insitra_push_samples(trainer, BENCH_CAPACITY, x, y), "insitra_push_samples");
    free(x);
    free(y);
    return err;
}

static double max_rss_mib(void)
{
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) == 0 ? (double)ru.ru_maxrss / 1024.0 : NAN; /* KiB on Linux */
}

static const char *thread_env(void)
{
    const char *t = getenv("OMP_NUM_THREADS");
    return t && *t ? t : "unset";
}

static int bench_run(int64_t T, int warmup, int steps, int n_overrides, char **overrides)
{
    int rank = 0, ranks = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &ranks);
    insitra_config *cfg = NULL;
    insitra_trainer *trainer = NULL;
    int64_t params = 0;
    int err = make_config(T, ranks, n_overrides, overrides, &cfg);
    err = err || check(insitra_trainer_create(&trainer, cfg, MPI_COMM_WORLD), "insitra_trainer_create");
    insitra_config_free(cfg);
    err = err || check(insitra_trainer_num_parameters(trainer, &params), "insitra_trainer_num_parameters");
    err = err || push_slices(trainer, T, ranks, rank);

    double *step = malloc((size_t)steps * sizeof *step), *ring = malloc((size_t)steps * sizeof *ring);
    double *wait = malloc((size_t)steps * sizeof *wait), *share = malloc((size_t)steps * sizeof *share);
    if (!step || !ring || !wait || !share) err = 1;
    /* a local failure (memory for the samples) stops every rank before the first barrier */
    MPI_Allreduce(MPI_IN_PLACE, &err, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    insitra_metrics m = {0};
    int64_t tokens = 0;
    for (int i = 0; i < warmup + steps && !err; i++) {
        MPI_Barrier(MPI_COMM_WORLD);
        const double t0 = MPI_Wtime();
        err = check(insitra_train_step(trainer, &m), "insitra_train_step");
        double v[3] = {MPI_Wtime() - t0, m.ring_wait_seconds, m.comm_wait_seconds}, vmax[3];
        /* a failed step is an agreed error (every rank returns it), so every rank still gets here */
        MPI_Allreduce(v, vmax, 3, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        if (i >= warmup && !err) {
            step[i - warmup] = vmax[0];
            ring[i - warmup] = vmax[1];
            wait[i - warmup] = vmax[2];
            share[i - warmup] = vmax[1] / vmax[0];
        }
        tokens = m.tokens;
    }
    if (!err && !isfinite(m.loss)) {
        fprintf(stderr, "bench_cp: loss is not finite after %d steps\n", warmup + steps);
        err = 1;
    }
    insitra_memory_usage mem = {0};
    err = err || check(insitra_memory_report(trainer, &mem), "insitra_memory_report");
    /* the largest of the ranks: total, activations, resident set */
    double local[3] = {(double)mem.total_bytes / 1048576.0, (double)mem.activation_bytes / 1048576.0,
                       max_rss_mib()},
           most[3];
    MPI_Allreduce(local, most, 3, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (!err && rank == 0) {
        const double step_s = median(step, steps);
        double fastest = step[0]; /* sorted by median() */
        const double flops_per_token = 6.0 * (double)params + 12.0 * WIDTH_L * WIDTH_C * (double)T;
        printf("cp_bench T=%lld ranks=%d cp=%d dp=1 threads=%s warmup=%d steps=%d params=%lld "
               "tokens_per_step=%lld step_ms=%.3f step_ms_min=%.3f tokens_per_s=%.1f gflops=%.2f "
               "ring_wait_ms=%.3f comm_wait_ms=%.3f ring_share=%.4f mem_mib=%.1f act_mib=%.1f "
               "rss_mib=%.1f loss=%.6g\n",
               (long long)T, ranks, ranks, thread_env(), warmup, steps, (long long)params, (long long)tokens,
               1e3 * step_s, 1e3 * fastest, (double)tokens / step_s,
               flops_per_token * (double)tokens / step_s * 1e-9, 1e3 * median(ring, steps),
               1e3 * median(wait, steps), median(share, steps), most[0], most[1], most[2], m.loss);
    }
    free(step);
    free(ring);
    free(wait);
    free(share);
    if (trainer) err |= check(insitra_trainer_free(trainer), "insitra_trainer_free");
    return err;
}

static int bench_plan(int64_t T, int ranks, int n_overrides, char **overrides)
{
    insitra_config *cfg = NULL;
    insitra_plan plan;
    int err = make_config(T, ranks, n_overrides, overrides, &cfg);
    int64_t stage = 0;
    char text[32];
    err = err || check(insitra_config_get(cfg, "parallel.zero_stage", text, sizeof text), "parallel.zero_stage");
    if (!err) stage = strtoll(text, NULL, 10);
    err = err || check(insitra_plan_stage(cfg, ranks, (int32_t)stage, &plan), "insitra_plan_stage");
    insitra_config_free(cfg);
    if (!err)
        printf("cp_plan T=%lld ranks=%d cp=%d stage=%lld mem_mib=%.1f act_mib=%.1f\n", (long long)T, ranks, ranks,
               (long long)stage, (double)plan.memory.total_bytes / 1048576.0,
               (double)plan.memory.activation_bytes / 1048576.0);
    return err;
}

static int parse_int(const char *text, long long min, const char *what, long long *out)
{
    char *end = NULL;
    const long long v = strtoll(text, &end, 10);
    if (end == text || *end != '\0' || v < min || v > (1LL << 40)) {
        fprintf(stderr, "bench_cp: %s must be an integer >= %lld, got '%s'\n", what, min, text);
        return 1;
    }
    *out = v;
    return 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_cp run T [warmup_steps=1] [timed_steps=3] [key=value ...]\n"
                    "       bench_cp plan T ranks [key=value ...]\n");
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int err = 1, rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    long long T = 0, a = 1, b = 3;
    if (argc >= 3 && strcmp(argv[1], "run") == 0 && !parse_int(argv[2], 1, "T", &T) &&
        !(argc > 3 && parse_int(argv[3], 0, "warmup_steps", &a)) &&
        !(argc > 4 && parse_int(argv[4], 1, "timed_steps", &b)))
        err = bench_run(T, (int)a, (int)b, argc > 5 ? argc - 5 : 0, argv + 5);
    else if (argc >= 4 && strcmp(argv[1], "plan") == 0 && !parse_int(argv[2], 1, "T", &T) &&
             !parse_int(argv[3], 1, "ranks", &a))
        err = rank == 0 ? bench_plan(T, (int)a, argc - 4, argv + 4) : 0;
    else if (rank == 0)
        usage();
    MPI_Finalize();
    return err ? EXIT_FAILURE : EXIT_SUCCESS;
}
