/*
 * Finite-difference check of every CPU layer's backward. Each layer's loss is
 * a fixed random projection of its output, L = sum(out * r), so backward with
 * dout = r must give dL/d(every input and parameter).
 *
 * Tolerance: |fd - analytic| <= 1e-3 + 1e-2 * max(|fd|, |analytic|), with
 * h = 1e-2 on inputs of order 1 in fp32. Rounding in the fp32 forward is
 * ~1e-6 relative, divided by 2h; a wrong backward is off by O(1).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/attention.h"
#include "cpu/layers.h"
#include "gradcheck.h"
#include "test_util.h"

#define H_STEP 1e-2
#define ATOL 1e-3
#define RTOL 1e-2
#define POINTS 200

static double dot(const float *a, const float *r, int64_t n)
{
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)a[i] * (double)r[i];
    return s;
}

static float *randn(int64_t n, uint64_t seed, float scale)
{
    float *a = malloc((size_t)n * sizeof(float));
    fill_uniform(a, n, seed, scale);
    return a;
}

/* ---- linear: out (N,OC) = res + inp @ w^T + b ---- */
typedef struct { float *out, *inp, *w, *b, *res, *r; int64_t N, IC, OC; } linear_case;
static double linear_loss(void *p)
{
    linear_case *c = p;
    insitra_linear_forward(c->out, c->inp, c->w, c->b, c->res, c->N, c->IC, c->OC);
    return dot(c->out, c->r, c->N * c->OC);
}
static int check_linear(void)
{
    linear_case c = {.N = 6, .IC = 5, .OC = 7};
    c.out = calloc(42, sizeof(float));
    c.inp = randn(30, 1, 1.0f);
    c.w = randn(35, 2, 1.0f);
    c.b = randn(7, 3, 1.0f);
    c.res = randn(42, 4, 1.0f);
    c.r = randn(42, 5, 1.0f);
    float *dinp = calloc(30, 4), *dw = calloc(35, 4), *db = calloc(7, 4);
    insitra_linear_backward(dinp, dw, db, c.r, c.inp, c.w, c.N, c.IC, c.OC);
    int f = gradcheck("linear dinp", c.inp, dinp, 30, linear_loss, &c, POINTS, H_STEP, ATOL, RTOL);
    f += gradcheck("linear dw", c.w, dw, 35, linear_loss, &c, POINTS, H_STEP, ATOL, RTOL);
    f += gradcheck("linear db", c.b, db, 7, linear_loss, &c, POINTS, H_STEP, ATOL, RTOL);
    /* The residual enters with gradient r itself. */
    f += gradcheck("linear dresidual", c.res, c.r, 42, linear_loss, &c, POINTS, H_STEP, ATOL, RTOL);
    /* dw and db accumulate: a second backward doubles them. */
    float dw1 = dw[3], db1 = db[2];
    insitra_linear_backward(NULL, dw, db, c.r, c.inp, c.w, c.N, c.IC, c.OC);
    if (fabsf(dw[3] - 2 * dw1) > 1e-5f * fabsf(dw1) + 1e-7f || fabsf(db[2] - 2 * db1) > 1e-5f * fabsf(db1) + 1e-7f) {
        printf("linear: dw/db do not accumulate\n");
        f++;
    }
    free(c.out), free(c.inp), free(c.w), free(c.b), free(c.res), free(c.r);
    free(dinp), free(dw), free(db);
    return f;
}

/* ---- layernorm ---- */
typedef struct { float *out, *mean, *rstd, *inp, *w, *b, *r; int64_t N, C; } ln_case;
static double ln_loss(void *p)
{
    ln_case *c = p;
    insitra_layernorm_forward(c->out, c->mean, c->rstd, c->inp, c->w, c->b, c->N, c->C);
    return dot(c->out, c->r, c->N * c->C);
}
static int check_layernorm(void)
{
    ln_case c = {.N = 5, .C = 8};
    const int64_t n = 40;
    c.out = calloc(n, 4), c.mean = calloc(5, 4), c.rstd = calloc(5, 4);
    c.inp = randn(n, 11, 2.0f), c.w = randn(8, 12, 1.0f), c.b = randn(8, 13, 1.0f);
    c.r = randn(n, 14, 1.0f);
    ln_loss(&c);
    float *dinp = calloc(n, 4), *dw = calloc(8, 4), *db = calloc(8, 4);
    insitra_layernorm_backward(dinp, dw, db, c.r, c.inp, c.mean, c.rstd, c.w, c.N, c.C);
    int f = gradcheck("layernorm dinp", c.inp, dinp, n, ln_loss, &c, POINTS, H_STEP, ATOL, RTOL);
    f += gradcheck("layernorm dw", c.w, dw, 8, ln_loss, &c, POINTS, H_STEP, ATOL, RTOL);
    f += gradcheck("layernorm db", c.b, db, 8, ln_loss, &c, POINTS, H_STEP, ATOL, RTOL);
    free(c.out), free(c.mean), free(c.rstd), free(c.inp), free(c.w), free(c.b), free(c.r);
    free(dinp), free(dw), free(db);
    return f;
}

/* ---- attention ---- */
typedef struct { float *out, *lse, *qkv, *r; int64_t B, T, C, H; bool causal; } attn_case;
static double attn_loss(void *p)
{
    attn_case *c = p;
    insitra_attention_forward(c->out, c->lse, c->qkv, c->B, c->T, c->C, c->H, c->causal);
    return dot(c->out, c->r, c->B * c->T * c->C);
}
static int check_attention(bool causal)
{
    attn_case c = {.B = 2, .T = 5, .C = 8, .H = 2, .causal = causal};
    const int64_t nout = c.B * c.T * c.C, nqkv = 3 * nout, nlse = c.B * c.H * c.T;
    c.out = calloc(nout, 4), c.lse = calloc(nlse, 4);
    c.qkv = randn(nqkv, causal ? 21 : 22, 1.5f), c.r = randn(nout, 23, 1.0f);
    attn_loss(&c);
    float *dqkv = calloc(nqkv, 4);
    insitra_attention_backward(dqkv, c.r, c.qkv, c.out, c.lse, c.B, c.T, c.C, c.H, c.causal);
    int f = gradcheck(causal ? "attention (causal) dqkv" : "attention dqkv", c.qkv, dqkv, nqkv,
                      attn_loss, &c, POINTS, H_STEP, ATOL, RTOL);
    if (causal) { /* token 0 sees only itself: its output is its own value row */
        if (memcmp(c.out, c.qkv + 2 * c.C, (size_t)c.C * sizeof(float)) != 0) {
            printf("attention (causal): token 0's output is not its value row\n");
            f++;
        }
    }
    free(c.out), free(c.lse), free(c.qkv), free(c.r), free(dqkv);
    return f;
}

/* ---- GELU ---- */
typedef struct { float *out, *inp, *r; int64_t n; } gelu_case;
static double gelu_loss(void *p)
{
    gelu_case *c = p;
    insitra_gelu_forward(c->out, c->inp, c->n);
    return dot(c->out, c->r, c->n);
}
static int check_gelu(void)
{
    gelu_case c = {.n = 64};
    c.out = calloc(64, 4), c.inp = randn(64, 31, 4.0f), c.r = randn(64, 32, 1.0f);
    float *din = calloc(64, 4);
    insitra_gelu_backward(din, c.inp, c.r, c.n);
    int f = gradcheck("gelu dinp", c.inp, din, 64, gelu_loss, &c, POINTS, 1e-3, ATOL, RTOL);
    free(c.out), free(c.inp), free(c.r), free(din);
    return f;
}

/* ---- positional embedding ---- */
typedef struct { float *out, *base, *pos, *r; int64_t B, T, C; } pos_case;
static double pos_loss(void *p)
{
    pos_case *c = p;
    memcpy(c->out, c->base, (size_t)(c->B * c->T * c->C) * 4);
    insitra_pos_embed_forward(c->out, c->pos, c->B, c->T, c->C);
    return dot(c->out, c->r, c->B * c->T * c->C);
}
static int check_pos(void)
{
    pos_case c = {.B = 3, .T = 4, .C = 5};
    c.out = calloc(60, 4), c.base = randn(60, 41, 1.0f), c.pos = randn(20, 42, 1.0f);
    c.r = randn(60, 43, 1.0f);
    float *dpos = calloc(20, 4);
    insitra_pos_embed_backward(dpos, c.r, c.B, c.T, c.C);
    int f = gradcheck("pos_embed dpos", c.pos, dpos, 20, pos_loss, &c, POINTS, H_STEP, ATOL, RTOL);
    free(c.out), free(c.base), free(c.pos), free(c.r), free(dpos);
    return f;
}

/* ---- MSE ---- */
typedef struct { float *pred, *target; int64_t n; } mse_case;
static double mse_loss(void *p)
{
    mse_case *c = p;
    return insitra_mse_forward(c->pred, c->target, c->n);
}
static int check_mse(void)
{
    mse_case c = {.n = 30};
    c.pred = randn(30, 51, 1.0f), c.target = randn(30, 52, 1.0f);
    float *dpred = calloc(30, 4);
    insitra_mse_backward(dpred, c.pred, c.target, c.n, 1.0f);
    int f = gradcheck("mse dpred", c.pred, dpred, 30, mse_loss, &c, POINTS, H_STEP, 1e-5, RTOL);
    free(c.pred), free(c.target), free(dpred);
    return f;
}

/* Each check returns how many of its entries (or extra properties) failed. */
static void expect_none_off(insitra_test *tc, const char *layer, int off)
{
    EXPECT(tc, off == 0, "%s: %d checks failed (lines above)", layer, off);
}

int main(int argc, char **argv)
{
    insitra_test tc = insitra_test_begin(&argc, &argv, "layers_gradcheck");
    expect_none_off(&tc, "linear", check_linear());
    expect_none_off(&tc, "layernorm", check_layernorm());
    expect_none_off(&tc, "attention", check_attention(false));
    expect_none_off(&tc, "attention (causal)", check_attention(true));
    expect_none_off(&tc, "gelu", check_gelu());
    expect_none_off(&tc, "pos_embed", check_pos());
    expect_none_off(&tc, "mse", check_mse());
    return insitra_test_end(&tc);
}
