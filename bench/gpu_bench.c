#include "gpu_bench.h"

#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const gpu_bench_config configs[] = {
    {"S", 256, 16, 128, 4, 4, 16, 30},
    {"M", 1024, 64, 768, 12, 12, 16, 20},
    {"L", 1024, 64, 1024, 24, 16, 16, 20},
};

static const char *program = "gpu_bench";
static int rank = 0;

void gpu_bench_init(const char *name)
{
    program = name;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
}

int gpu_bench_rank(void) { return rank; }
const char *gpu_bench_program(void) { return program; }

const gpu_bench_config *gpu_bench_find(const char *name)
{
    for (size_t i = 0; name && i < sizeof configs / sizeof configs[0]; i++)
        if (strcmp(name, configs[i].name) == 0) return &configs[i];
    return NULL;
}

int gpu_bench_ok(insitra_status st, const char *what)
{
    if (st == INSITRA_STATUS_OK) return 1;
    fprintf(stderr, "%s: rank %d: %s: %s: %s\n", program, rank, what, insitra_status_name(st),
            insitra_last_error());
    return 0;
}

int gpu_bench_any_rank(int failed)
{
    int any = failed;
    MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return any;
}

int gpu_bench_get_text(const insitra_config *cfg, const char *key, char *buf, size_t size)
{
    return gpu_bench_ok(insitra_config_get(cfg, key, buf, size), key);
}

int gpu_bench_get_int(const insitra_config *cfg, const char *key, int64_t *value)
{
    char text[64], *end = NULL;
    if (!gpu_bench_get_text(cfg, key, text, sizeof text)) return 0;
    long long v = strtoll(text, &end, 10);
    if (end == text || *end != '\0') {
        fprintf(stderr, "%s: %s reads back as '%s', not an integer\n", program, key, text);
        return 0;
    }
    *value = (int64_t)v;
    return 1;
}

static int set_int(insitra_config *cfg, const char *key, int64_t value)
{
    char text[32];
    snprintf(text, sizeof text, "%lld", (long long)value);
    return gpu_bench_ok(insitra_config_set(cfg, key, text), key);
}

int gpu_bench_build_config(const gpu_bench_config *gc, int n_overrides, char **overrides,
                           insitra_config **out)
{
    insitra_config *cfg = NULL;
    *out = NULL;
    if (!gpu_bench_ok(insitra_config_create(&cfg), "insitra_config_create")) return 0;
    int ok = set_int(cfg, "model.seq_len", gc->seq_len) &&
             set_int(cfg, "model.in_features", gc->features) &&
             set_int(cfg, "model.out_features", gc->features) &&
             set_int(cfg, "model.d_model", gc->d_model) &&
             set_int(cfg, "model.n_layers", gc->n_layers) &&
             set_int(cfg, "model.n_heads", gc->n_heads) &&
             set_int(cfg, "training.batch_size", gc->batch_size) &&
             set_int(cfg, "data.capacity", GPU_BENCH_STORE_SAMPLES) &&
             set_int(cfg, "log.every_steps", 0) &&
             gpu_bench_ok(insitra_config_set(cfg, "device", "cuda"), "device=cuda") &&
             gpu_bench_ok(insitra_config_set(cfg, "precision", "bf16"), "precision=bf16");
    for (int i = 0; ok && i < n_overrides; i++) {
        const char *arg = overrides[i];
        const char *eq = strchr(arg, '=');
        char key[128];
        size_t len = eq ? (size_t)(eq - arg) : 0;
        if (len == 0 || len >= sizeof key) {
            fprintf(stderr, "%s: expected key=value, got '%s'\n", program, arg);
            ok = 0;
            break;
        }
        memcpy(key, arg, len);
        key[len] = '\0';
        ok = gpu_bench_ok(insitra_config_set(cfg, key, eq + 1), arg);
    }
    ok = ok && gpu_bench_ok(insitra_config_validate(cfg), "insitra_config_validate");
    if (!ok) {
        insitra_config_free(cfg);
        return 0;
    }
    *out = cfg;
    return 1;
}

/* Uniform in [-1, 1): a 64-bit LCG, top 24 bits. */
static float uniform_pm1(uint64_t *state)
{
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((double)(*state >> 40) / 8388608.0 - 1.0);
}

int gpu_bench_push_store(insitra_trainer *trainer, int64_t n, int64_t seq_len, int64_t in_features,
                         int64_t out_features)
{
    const size_t tokens = (size_t)n * (size_t)seq_len;
    const size_t fi = (size_t)in_features, fo = (size_t)out_features;
    float *x = malloc(tokens * fi * sizeof *x); /* [N][T][F_in] */
    float *y = malloc(tokens * fo * sizeof *y); /* [N][T][F_out] */
    int ok = x && y;
    if (!ok) {
        fprintf(stderr, "%s: rank %d: out of host memory for the samples\n", program, rank);
    } else {
        uint64_t state = 0x9e3779b97f4a7c15ULL ^ (uint64_t)(rank + 1) * 1000003u;
        for (size_t i = 0; i < tokens * fi; i++) x[i] = uniform_pm1(&state);
        for (size_t t = 0; t < tokens; t++)
            for (size_t f = 0; f < fo; f++) y[t * fo + f] = sinf(3.0f * x[t * fi + f % fi]);
        ok = gpu_bench_ok(insitra_push_samples(trainer, n, x, y),
                          "insitra_push_samples");
    }
    free(x);
    free(y);
    return ok;
}
