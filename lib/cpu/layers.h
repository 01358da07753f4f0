/*
 * CPU fp32 layer kernels, each a _forward/_backward pair. N is the number of
 * rows (tokens, B*T). Shapes are row-major; "+=" marks outputs that
 * accumulate, so gradient accumulation over micro-batches and the residual
 * stream need no extra passes. Every kernel is deterministic for a fixed
 * OpenMP thread count: reductions never depend on thread timing.
 */
#ifndef INSITRA_CPU_LAYERS_H
#define INSITRA_CPU_LAYERS_H

#include <stdbool.h>
#include <stdint.h>

/* out (N,OC) = residual (N,OC) + inp (N,IC) @ w^T + b;  w (OC,IC), b (OC).
 * residual and b may be NULL; residual may not alias out. */
void insitra_linear_forward(float *out, const float *inp, const float *w, const float *b,
                            const float *residual, int64_t N, int64_t IC, int64_t OC);
/* dinp (N,IC) = dout (N,OC) @ w (dinp may be NULL); dw (OC,IC) += dout^T @ inp;
 * db (OC) += column sums of dout (db may be NULL). */
void insitra_linear_backward(float *dinp, float *dw, float *db, const float *dout,
                             const float *inp, const float *w, int64_t N, int64_t IC, int64_t OC);

/* out (N,C) = (inp - mean) * rstd * w + b, saving mean, rstd (N). eps = 1e-5. */
void insitra_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                               const float *w, const float *b, int64_t N, int64_t C);
/* dinp (N,C) += ..., dw (C) += ..., db (C) += ... */
void insitra_layernorm_backward(float *dinp, float *dw, float *db, const float *dout,
                                const float *inp, const float *mean, const float *rstd,
                                const float *w, int64_t N, int64_t C);

/* GELU, tanh approximation (PyTorch approximate="tanh"). */
void insitra_gelu_forward(float *out, const float *inp, int64_t n);
/* dinp = gelu'(inp) * dout; dinp may alias dout. */
void insitra_gelu_backward(float *dinp, const float *inp, const float *dout, int64_t n);

/* out (B,T,C) += pos (T,C) for each of the B samples. */
void insitra_pos_embed_forward(float *out, const float *pos, int64_t B, int64_t T, int64_t C);
/* dpos (T,C) += sum over b of dout (B,T,C). */
void insitra_pos_embed_backward(float *dpos, const float *dout, int64_t B, int64_t T, int64_t C);

/* Mean of (pred - target)^2 over n values, accumulated in double. */
double insitra_mse_forward(const float *pred, const float *target, int64_t n);
/* dpred = scale * 2 (pred - target) / n. */
void insitra_mse_backward(float *dpred, const float *pred, const float *target, int64_t n,
                          float scale);

#endif /* INSITRA_CPU_LAYERS_H */
