/*
 * AdamW over the flat parameter buffer, with linear warmup + cosine decay of
 * the learning rate and global gradient-norm clipping.
 */
#ifndef INSITRA_OPTIMIZER_H
#define INSITRA_OPTIMIZER_H

#include <stdint.h>

#include "model.h"

typedef struct insitra_adamw_hparams {
    double lr;            /* peak learning rate */
    double min_lr;        /* floor of the cosine decay */
    int64_t warmup_steps; /* linear ramp from lr/warmup to lr */
    int64_t decay_steps;  /* step at which the cosine reaches min_lr */
    double beta1, beta2, eps, weight_decay;
} insitra_adamw_hparams;

/* Per-step AdamW values, in backend memory so a captured step reads them
 * where they land. The clip factor and the skip on a non-finite loss or norm
 * come from the step's stats (loss sum, gradient sum of squares) on the
 * backend, so no value travels to the host between backward and update. */
typedef struct insitra_step_scalars {
    float beta1, beta2, eps;
    float step_size;    /* lr / (1 - beta1^t) */
    float inv_sqrt_bc2; /* 1 / sqrt(1 - beta2^t) */
    float keep_decay;   /* 1 - lr * weight_decay */
    double max_norm;    /* training.grad_clip; 0 = off */
    double dp;          /* data-parallel ranks: gradients are sums over them */
} insitra_step_scalars;

/* The scalars of 1-based step t at learning rate lr (the one place they are computed). */
insitra_step_scalars insitra_step_scalars_make(const insitra_adamw_hparams *hp, int64_t t, double lr,
                                               double max_norm, int64_t dp);
/* The gradient scale AdamW applies, from the step's stats (loss sum, gradient
 * sum of squares, both summed over dp): clip / dp; 0 when the loss or norm is
 * not finite (the update is then skipped). */
double insitra_step_grad_scale(const insitra_step_scalars *sc, const double *stats);

/* Learning rate for 0-based step s:
 *   s < warmup:  lr * (s + 1) / warmup
 *   otherwise:   min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2,
 *                p = clamp((s - warmup) / max(1, decay - warmup), 0, 1). */
double insitra_lr_at(const insitra_adamw_hparams *hp, int64_t step);

/* Sum of squares of n values, accumulated in double in a fixed order. */
double insitra_sum_squares(const float *x, int64_t n);

/* Factor that clip_grad_norm applies: min(1, max_norm / (norm + 1e-6)); 1 when
 * max_norm <= 0 (clipping off). Same formula as torch.nn.utils.clip_grad_norm_. */
float insitra_clip_factor(double norm, double max_norm);

/* One AdamW update of n values (PyTorch's formula). t is the 1-based step
 * count, grad_scale multiplies g first (clipping), decay says whether
 * weight decay applies to this range. */
void insitra_adamw_update(float *p, const float *g, float *m, float *v, int64_t n, int64_t t,
                          double lr, float grad_scale, bool decay,
                          const insitra_adamw_hparams *hp);

/* AdamW over n values with the step's scalars (grad_scale from insitra_step_grad_scale);
 * copy, when not NULL, receives the updated values too. */
void insitra_adamw_apply(float *p, float *copy, const float *g, float *m, float *v, int64_t n,
                         float grad_scale, bool decay, const insitra_step_scalars *sc);

/* AdamW over every tensor of a layout: decay per tensor as the layout says. */
void insitra_adamw_update_all(float *params, const float *grads, float *m, float *v,
                              const insitra_param_layout *layout, int64_t t, double lr,
                              float grad_scale, const insitra_adamw_hparams *hp);

#endif /* INSITRA_OPTIMIZER_H */
