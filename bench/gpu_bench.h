/*
 * Shared by the GPU benchmark programs (bench_gpu_step, bench_gpu_ckpt,
 * bench_gpu_comm): the S/M/L configurations of issue #6, the configuration
 * they build through the public API, the synthetic training samples, and
 * error reporting that names the program and the rank.
 */
#ifndef INSITRA_BENCH_GPU_BENCH_H
#define INSITRA_BENCH_GPU_BENCH_H

#include <stdint.h>

#include "insitra.h"

typedef struct gpu_bench_config {
    const char *name;
    int64_t seq_len;    /* T */
    int64_t features;   /* F_in = F_out */
    int64_t d_model;    /* C */
    int64_t n_layers;   /* L */
    int64_t n_heads;    /* H */
    int64_t batch_size; /* B, samples per step on each GPU */
    int default_steps;  /* bench_gpu_step's timed steps when not given */
} gpu_bench_config;

enum { GPU_BENCH_STORE_SAMPLES = 64 }; /* data.capacity, and the samples pushed */

/* Call after MPI_Init: messages then start "program: rank R:". */
void gpu_bench_init(const char *program);
int gpu_bench_rank(void);
const char *gpu_bench_program(void);

/* The configuration called name (S, M or L), or NULL. */
const gpu_bench_config *gpu_bench_find(const char *name);

/* 1 if st is OK; otherwise prints what failed with the library's message. */
int gpu_bench_ok(insitra_status st, const char *what);
/* Collective: 1 on every rank if any rank passes failed != 0, so that a local
 * failure does not leave the others waiting in the next collective call. */
int gpu_bench_any_rank(int failed);

int gpu_bench_get_text(const insitra_config *cfg, const char *key, char *buf, size_t size);
int gpu_bench_get_int(const insitra_config *cfg, const char *key, int64_t *value);

/* Local: gc's model and batch keys, data.capacity, device=cuda,
 * precision=bf16, no progress lines, then the key=value overrides in order,
 * then validation. Returns 1 with *out set, or 0 with nothing to free. */
int gpu_bench_build_config(const gpu_bench_config *gc, int n_overrides, char **overrides,
                           insitra_config **out);

/* Local: pushes n samples (GPU_BENCH_STORE_SAMPLES, or fewer for a smaller
 * data.capacity), x uniform in [-1, 1) from a
 * generator seeded by the rank, y = sin(3 x) feature by feature (input
 * feature f mod F_in for output feature f). */
int gpu_bench_push_store(insitra_trainer *trainer, int64_t n, int64_t seq_len, int64_t in_features,
                         int64_t out_features);

#endif /* INSITRA_BENCH_GPU_BENCH_H */
