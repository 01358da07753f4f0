/*
 * GEMM candidates on the model's own products.
 *
 *   bench_gemm_<provider> [reps=10] [warmup=2] [S|M|SM]
 *
 * Built once per provider the machine has (bench/CMakeLists.txt): the same
 * insitra_sgemm call (lib/cpu/gemm.c) compiled against OpenBLAS, BLIS or
 * oneDNN. Times every linear layer's three products as the CPU backend runs
 * them (row-major; forward out = in @ w^T with beta 1 onto the bias, dinp =
 * dout @ w, dw += dout^T @ in) for configs S and M, median of reps calls per
 * shape after warmup untimed calls, and prints the rate over all of a config's shapes weighted by how
 * often a step runs each: total FLOPs / total median time. Threads: the
 * provider's OpenMP (OMP_NUM_THREADS). It also prints the rate per second of
 * the process's CPU time (cpu_gflops, summed over its threads): on a shared
 * machine a one-thread run's CPU-time rate is what the library would reach
 * alone, where its wall-clock rate is whatever share of the core it got.
 */
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpu/gemm.h"

#ifndef BENCH_PROVIDER
#define BENCH_PROVIDER "cblas"
#endif

typedef struct bench_model {
    const char *name;
    int64_t tokens, C, L, F; /* B*T, d_model, layers, in = out features */
} bench_model;

/* The same S and M as bench_step.c (B*T tokens per step, micro-batch = batch). */
static const bench_model models[] = {{"S", 16 * 256, 128, 4, 16}, {"M", 8 * 256, 512, 8, 16}};

typedef struct shape {
    const char *what;
    bool ta, tb;
    int64_t m, n, k;
    float beta;
    int64_t count; /* calls per step */
} shape;

static int cmp(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The three products of a linear layer IC -> OC over N rows, count times a step. */
static int linear_shapes(shape *s, const char *what, int64_t N, int64_t IC, int64_t OC, int64_t count,
                         bool need_dinp)
{
    int n = 0;
    s[n++] = (shape){what, false, true, N, OC, IC, 1.0f, count};                 /* fwd: in @ w^T */
    if (need_dinp) s[n++] = (shape){what, false, false, N, IC, OC, 0.0f, count}; /* dinp = dout @ w */
    s[n++] = (shape){what, true, false, OC, IC, N, 1.0f, count};                 /* dw += dout^T @ in */
    return n;
}

static double cpu_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Median wall time of one call; best: the fastest; cpu: the median CPU time. */
static double time_shape(const shape *s, int reps, int warmup, double *best, double *cpu)
{
    const int64_t ar = s->ta ? s->k : s->m, ac = s->ta ? s->m : s->k;
    const int64_t br = s->tb ? s->n : s->k, bc = s->tb ? s->k : s->n;
    float *a = malloc((size_t)(ar * ac) * sizeof *a), *b = malloc((size_t)(br * bc) * sizeof *b);
    float *c = malloc((size_t)(s->m * s->n) * sizeof *c);
    double *t = malloc((size_t)reps * sizeof *t), *tc = malloc((size_t)reps * sizeof *tc);
    if (!a || !b || !c || !t || !tc) {
        fprintf(stderr, "bench_gemm: out of memory\n");
        exit(1);
    }
    for (int64_t i = 0; i < ar * ac; i++) a[i] = (float)((i * 7 % 13) - 6) * 0.01f;
    for (int64_t i = 0; i < br * bc; i++) b[i] = (float)((i * 5 % 11) - 5) * 0.01f;
    memset(c, 0, (size_t)(s->m * s->n) * sizeof *c);
    for (int r = -warmup; r < reps; r++) { /* untimed calls: threads, first touch */
        const double t0 = omp_get_wtime(), c0 = cpu_seconds();
        insitra_sgemm(s->ta, s->tb, s->m, s->n, s->k, 1.0f, a, ac, b, bc, s->beta, c, s->n);
        if (r >= 0) t[r] = omp_get_wtime() - t0, tc[r] = cpu_seconds() - c0;
    }
    qsort(t, (size_t)reps, sizeof *t, cmp);
    qsort(tc, (size_t)reps, sizeof *tc, cmp);
    const double med = reps % 2 ? t[reps / 2] : 0.5 * (t[reps / 2 - 1] + t[reps / 2]);
    *cpu = reps % 2 ? tc[reps / 2] : 0.5 * (tc[reps / 2 - 1] + tc[reps / 2]);
    *best = t[0];
    free(a), free(b), free(c), free(t), free(tc);
    return med;
}

int main(int argc, char **argv)
{
    const int reps = argc > 1 ? atoi(argv[1]) : 10, warmup = argc > 2 ? atoi(argv[2]) : 2;
    const char *which = argc > 3 ? argv[3] : "SM";
    if (reps < 1 || warmup < 0 || argc > 4) {
        fprintf(stderr, "usage: bench_gemm_<provider> [reps >= 1] [warmup >= 0] [S|M|SM]\n");
        return 2;
    }
    insitra_gemm_info info;
    insitra_gemm_info_get(&info);
    printf("gemm provider=%s library=\"%s\" kernel=%s threads=%d\n", BENCH_PROVIDER, info.provider,
           info.kernel[0] ? info.kernel : "unknown", omp_get_max_threads());
    char result[512];
    int len = snprintf(result, sizeof result, "RESULT provider=%s kernel=%s threads=%d", BENCH_PROVIDER,
                       info.kernel[0] ? info.kernel : "unknown", omp_get_max_threads());
    for (size_t mi = 0; mi < sizeof models / sizeof models[0]; mi++) {
        const bench_model *md = &models[mi];
        if (!strstr(which, md->name)) continue;
        const int64_t N = md->tokens, C = md->C;
        shape s[18];
        int n = 0;
        n += linear_shapes(s + n, "embed", N, md->F, C, 1, false);
        n += linear_shapes(s + n, "qkv", N, C, 3 * C, md->L, true);
        n += linear_shapes(s + n, "proj", N, C, C, md->L, true);
        n += linear_shapes(s + n, "fc", N, C, 4 * C, md->L, true);
        n += linear_shapes(s + n, "fcproj", N, 4 * C, C, md->L, true);
        n += linear_shapes(s + n, "out", N, C, md->F, 1, true);
        double flops = 0, secs = 0, best = 0, cpu_secs = 0;
        for (int i = 0; i < n; i++) {
            double b, tc;
            const double t = time_shape(&s[i], reps, warmup, &b, &tc);
            const double f = 2.0 * (double)(s[i].m * s[i].n * s[i].k);
            printf("  %s %-6s %c%c m=%5lld n=%5lld k=%5lld x%-2lld %8.2f GFLOP/s\n", md->name, s[i].what,
                   s[i].ta ? 'T' : 'N', s[i].tb ? 'T' : 'N', (long long)s[i].m, (long long)s[i].n,
                   (long long)s[i].k, (long long)s[i].count, f / t * 1e-9);
            flops += f * (double)s[i].count;
            secs += t * (double)s[i].count;
            best += b * (double)s[i].count;
            cpu_secs += tc * (double)s[i].count;
        }
        printf("%s: %.2f GFLOP/s over the step's linear products (%.1f ms a step; best calls %.2f "
               "GFLOP/s; per CPU second %.2f)\n",
               md->name, flops / secs * 1e-9, secs * 1e3, flops / best * 1e-9, flops / cpu_secs * 1e-9);
        len += snprintf(result + len, sizeof result - (size_t)len,
                        " %s_gflops=%.2f %s_ms=%.2f %s_cpu_gflops=%.2f", md->name, flops / secs * 1e-9,
                        md->name, secs * 1e3, md->name, flops / cpu_secs * 1e-9);
    }
    printf("%s\n", result);
    return 0;
}
