/*
 * Feature normalisation and residual targets (data.normalize, model.residual).
 *
 * The model never sees physical units: inputs are standardised per feature,
 * and it learns a standardised target, the increment y - x[r(o)] when output
 * feature o updates input feature r(o) (model.residual), else y itself:
 *
 *   x_hat[t, i] = (x[t, i] - x_mean[i]) * x_inv_std[i]
 *   y_hat[t, o] = (y[t, o] - x[t, r(o)] - y_mean[o]) * y_inv_std[o]     (x term only with a residual)
 *   y[t, o]     = out[t, o] * y_std[o] + y_mean[o] + x[t, r(o)]          (what predict returns)
 *
 * Two parts, both plain structs:
 *   insitra_feature_norm   the coefficients the model applies (floats), and
 *                          the host functions that apply them: what an
 *                          inference handle or an export file needs, nothing else;
 *   insitra_normalize      the statistics they come from: per-feature counts,
 *                          means and sums of squared deviations (Welford/Chan,
 *                          in double), this rank's new samples apart, combined
 *                          over the ranks in rank order at each training step,
 *                          then frozen or kept running.
 * With data.normalize = off the coefficients are the identity (mean 0, std 1);
 * the residual map applies whatever the mode.
 */
#ifndef INSITRA_NORMALIZE_H
#define INSITRA_NORMALIZE_H

#include <mpi.h>
#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "insitra.h"

/* data.normalize */
enum { INSITRA_NORMALIZE_OFF = 0, INSITRA_NORMALIZE_FROZEN = 1, INSITRA_NORMALIZE_RUNNING = 2 };

/* The per-feature maps, in host memory (or, as the engine keeps a copy,
 * in a backend's memory: then only the backend's operations read it). */
typedef struct insitra_feature_norm {
    int64_t f_in, f_out;
    float *x_mean, *x_inv_std;         /* (f_in) */
    float *y_mean, *y_std, *y_inv_std; /* (f_out) */
    int32_t *residual;                 /* (f_out): the input feature output o is an increment of; -1 none */
} insitra_feature_norm;

/* Floats and int32s a feature map of (f_in, f_out) takes, carved in this order
 * from one buffer: x_mean, x_inv_std, y_mean, y_std, y_inv_std, residual. */
int64_t insitra_feature_norm_bytes(int64_t f_in, int64_t f_out);
void insitra_feature_norm_carve(insitra_feature_norm *fm, void *mem, int64_t f_in, int64_t f_out);

/* Host application over N tokens (rows of f_in or f_out features):
 * x_out (N, f_in) = x_hat of x (N, f_in);
 * y (N, f_out), in place: the target y_hat of y (targets) or the physical
 * output of the model's out (outputs); x is the same tokens' raw input. */
void insitra_feature_norm_inputs(const insitra_feature_norm *fm, int64_t N, const float *x, float *x_out);
void insitra_feature_norm_targets(const insitra_feature_norm *fm, int64_t N, const float *x, float *y);
void insitra_feature_norm_outputs(const insitra_feature_norm *fm, int64_t N, const float *x, float *y);

/* Moments of `width` features: count values each, their mean and the sum of
 * squared deviations from it (m2). */
typedef struct insitra_moments {
    int64_t width, count;
    double *mean, *m2; /* (width) */
} insitra_moments;

/* Adds rows (rows, width) of values v[r, f] = a[r * width + f], minus
 * b[r * b_width + map[f]] where map is given and map[f] >= 0: the batch's
 * own mean and m2 by two passes, merged by Chan's update. */
void insitra_moments_add(insitra_moments *m, int64_t rows, const float *a, const float *b,
                         int64_t b_width, const int32_t *map);
/* dst += src (Chan et al.'s pairwise combination). */
void insitra_moments_merge(insitra_moments *dst, const insitra_moments *src);
/* The standard deviation the model uses for feature f: the population one,
 * floored at 1e-6 |mean| (a nearly constant feature is not blown up), 1 when
 * that is 0 or nothing was counted. */
double insitra_moments_std(const insitra_moments *m, int64_t f);

typedef struct insitra_normalize {
    int mode;                      /* INSITRA_NORMALIZE_* */
    int64_t freeze_samples;        /* data.normalize_samples (0: not by samples) */
    int64_t freeze_steps;          /* data.normalize_steps (0: not by steps) */
    int64_t seq_len;               /* tokens per sample on this rank: model.seq_len / slices */
    int64_t slices;                /* insitra_config_token_slices: each sample is counted once by each
                                      of the cp x tp ranks holding its slices */
    bool frozen;                   /* the statistics no longer change */
    int64_t samples;               /* samples in x, y (every rank's; a sample `slices` times) */
    insitra_moments x, y;          /* every rank's samples, combined: the coefficients' source */
    insitra_moments x_new, y_new;  /* this rank's samples since the last combination */
    int64_t samples_new;
    insitra_feature_norm coef;     /* what the model applies now */
    int world;                     /* ranks combined */
    double *send;                  /* (1 + 2 f_in + 2 f_out) this rank's row of the combination: */
    double *exchange;              /* (world, that) samples, x mean, x m2, y mean, y m2 per rank */
    void *mem;                     /* one allocation for all of the above */
} insitra_normalize;

/* From cfg (data.normalize*, model.residual*); world: the ranks that combine.
 * With data.normalize on, each rank keeps every rank's row of the
 * combination: (world + 1) x (1 + 2 f_in + 2 f_out) doubles. */
insitra_status insitra_normalize_create(insitra_normalize *n, const insitra_config *cfg, int world);
void insitra_normalize_free(insitra_normalize *n);

/* This rank's samples x (count, T, f_in), y (count, T, f_out), host memory,
 * into its new moments: the targets as the model learns them (increments
 * with a residual). Nothing once frozen or with data.normalize = off. */
void insitra_normalize_observe(insitra_normalize *n, int64_t count, const float *x, const float *y);

/* Collective over comm (the ranks in create's world): every rank's new
 * moments merged into the combined ones in rank order, so every rank holds
 * the same bits; then frozen when the samples or the training steps
 * (steps_done, the steps taken so far) reach their limit; then the
 * coefficients recomputed. */
insitra_status insitra_normalize_combine(insitra_normalize *n, MPI_Comm comm, int64_t steps_done);

/* Forgets this rank's new moments, and with combined the combined ones too
 * (back to no samples, not frozen, identity coefficients). */
void insitra_normalize_clear(insitra_normalize *n, bool combined);

/* The coefficients from the combined moments (identity where nothing is
 * counted or data.normalize = off); the residual map is left as it is. */
void insitra_normalize_update_coef(insitra_normalize *n);

/* model.residual_inputs parsed against f_in, f_out: into map (f_out) when
 * given, else only checked. With model.residual off every entry is -1. */
insitra_status insitra_residual_map_parse(const insitra_config *cfg, int32_t *map);

#endif /* INSITRA_NORMALIZE_H */
