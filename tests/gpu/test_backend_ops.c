/*
 * Every backend operation on the CUDA backend against the CPU backend (the
 * reference), in the manner of ggml's test-backend-ops: a table of
 * operations x shapes (odd sizes included) x {fp32, bf16}, the same random
 * inputs on both, outputs compared by normalised error
 *
 *   err = max_i |cuda_i - cpu_i| / max(max_i |cpu_i|, 1e-6)
 *
 * against a tolerance per precision: fp32 1e-4 (summation orders differ:
 * cuBLASLt's tiles against BLAS, tree against sequential reductions; seen
 * at most 5.3e-6 on an H200), bf16 1e-2 (outputs rounded to 8 mantissa bits,
 * ~4e-3; seen at most 3.7e-3). Forward and backward of every layer, the
 * feature maps (normalisation, residual), the optimizer and shard operations,
 * and the blocks of a context-parallel attention (two blocks at offsets,
 * causal masks by global position; seen at most 5.1e-7 in fp32 and 5.7e-3
 * in bf16).
 *
 * Without a usable GPU (CI has none) it prints why and exits 77: skipped.
 */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "config.h"
#include "error.h"
#include "optimizer.h"

static int failures, checks;
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static float uniform(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static float *randoms(int64_t n, float scale)
{
    float *a = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    for (int64_t i = 0; i < n; i++) a[i] = scale * uniform();
    return a;
}

/* Host floats into a new buffer of be, in the compute type when act. */
static void *put(insitra_backend *be, const float *host, int64_t n, bool act)
{
    void *dst = NULL, *tmp = NULL;
    const size_t bytes = (size_t)(n > 0 ? n : 1) * sizeof(float);
    if (be->i->alloc(be, bytes, "test", &tmp) != INSITRA_STATUS_OK) return NULL;
    be->i->upload(be, tmp, host, (size_t)n * sizeof(float));
    if (!act || be->act == INSITRA_DTYPE_F32) return tmp;
    be->i->alloc(be, (size_t)(n > 0 ? n : 1) * be->act_size, "test", &dst);
    be->i->to_act(be, dst, tmp, n);
    be->i->synchronize(be);
    be->i->release(be, tmp);
    return dst;
}

/* A buffer of be into host floats (from the compute type when act). */
static void get(insitra_backend *be, float *host, const void *src, int64_t n, bool act)
{
    if (!act || be->act == INSITRA_DTYPE_F32) {
        be->i->download(be, host, src, (size_t)n * sizeof(float));
        return;
    }
    uint16_t *raw = malloc((size_t)(n > 0 ? n : 1) * sizeof(uint16_t));
    be->i->download(be, raw, src, (size_t)n * sizeof(uint16_t));
    for (int64_t i = 0; i < n; i++) {
        const uint32_t bits = (uint32_t)raw[i] << 16;
        memcpy(&host[i], &bits, sizeof bits);
    }
    free(raw);
}

/* f64: the buffer holds n / 2 doubles (accumulators). */
static void compare(const char *op, const char *what, const float *cpu, const float *gpu, int64_t n, bool f64,
                    double tol)
{
    double diff = 0.0, scale = 1e-6;
    for (int64_t i = 0; i < (f64 ? n / 2 : n); i++) {
        double a, b;
        if (f64) {
            memcpy(&a, cpu + 2 * i, sizeof a);
            memcpy(&b, gpu + 2 * i, sizeof b);
        } else {
            a = cpu[i];
            b = gpu[i];
        }
        diff = fmax(diff, fabs(b - a));
        scale = fmax(scale, fabs(a));
    }
    const double err = diff / scale;
    checks++;
    const bool ok = err <= tol && isfinite(err);
    if (!ok) failures++;
    printf("%-4s %-48s %-10s err %.2e (tol %.0e)\n", ok ? "ok" : "FAIL", op, what, err, tol);
}

/* One operation's inputs and outputs: host arrays, and their buffers on a backend. */
typedef struct tensor {
    const char *name;
    int64_t n;
    bool act;     /* compute type (else fp32) */
    bool output;  /* compared after the operation */
    bool f64;     /* holds n / 2 doubles */
    float scale;  /* of the random input values (0: zero-filled) */
    float *host;  /* the inputs, the same for both backends */
} tensor;

enum { MAX_T = 12 };
typedef struct op_case {
    char name[96];
    int nt;
    tensor t[MAX_T];
} op_case;

typedef insitra_status (*op_fn)(insitra_backend *be, void **b, const int64_t *dims);

/* Runs fn on a backend with freshly uploaded inputs; the outputs into out[k]. */
static int run_on(insitra_backend *be, op_case *c, op_fn fn, const int64_t *dims, float **out)
{
    void *b[MAX_T];
    for (int k = 0; k < c->nt; k++) b[k] = put(be, c->t[k].host, c->t[k].n, c->t[k].act);
    const insitra_status s = fn(be, b, dims);
    be->i->synchronize(be);
    if (s != INSITRA_STATUS_OK) printf("FAIL %s on %s: %s\n", c->name, be->i->name, insitra_last_error());
    for (int k = 0; k < c->nt; k++) {
        if (c->t[k].output) get(be, out[k], b[k], c->t[k].n, c->t[k].act);
        be->i->release(be, b[k]);
    }
    return s != INSITRA_STATUS_OK;
}

static void check(insitra_backend *cpu, insitra_backend *gpu, op_case *c, op_fn fn, const int64_t *dims, double tol)
{
    float *a[MAX_T] = {0}, *g[MAX_T] = {0};
    for (int k = 0; k < c->nt; k++) {
        if (!c->t[k].host) c->t[k].host = c->t[k].scale != 0.f ? randoms(c->t[k].n, c->t[k].scale)
                                                                : calloc((size_t)(c->t[k].n + 1), sizeof(float));
        if (gpu->act == INSITRA_DTYPE_BF16 && c->t[k].act) /* both see the same bf16-representable inputs */
            for (int64_t i = 0; i < c->t[k].n; i++) {
                uint32_t bits;
                memcpy(&bits, &c->t[k].host[i], sizeof bits);
                bits = (bits + 0x7fff + ((bits >> 16) & 1)) & 0xffff0000u;
                memcpy(&c->t[k].host[i], &bits, sizeof bits);
            }
        a[k] = calloc((size_t)(c->t[k].n + 1), sizeof(float));
        g[k] = calloc((size_t)(c->t[k].n + 1), sizeof(float));
    }
    if (run_on(cpu, c, fn, dims, a) || run_on(gpu, c, fn, dims, g)) {
        failures++;
    } else {
        for (int k = 0; k < c->nt; k++)
            if (c->t[k].output) compare(c->name, c->t[k].name, a[k], g[k], c->t[k].n, c->t[k].f64, tol);
    }
    for (int k = 0; k < c->nt; k++) {
        free(a[k]);
        free(g[k]);
        free(c->t[k].host);
        c->t[k].host = NULL;
    }
}

#define T_IN(nm, count, is_act, sc) ((tensor){nm, count, is_act, false, false, sc, NULL})
#define T_OUT(nm, count, is_act, sc) ((tensor){nm, count, is_act, true, false, sc, NULL})
#define T_F64(nm) ((tensor){nm, 2, false, true, true, 0, NULL})

/* ---- the operations, each with its buffers in the order of its case ---- */

static insitra_status op_linear_forward(insitra_backend *be, void **b, const int64_t *d)
{
    /* d: N, IC, OC, residual?, gelu? */
    return be->i->linear_forward(be, b[0], d[4] ? b[1] : NULL, b[2], b[3], b[4], d[3] ? b[5] : NULL, d[0], d[1],
                                 d[2]);
}

static insitra_status op_linear_backward(insitra_backend *be, void **b, const int64_t *d)
{
    /* d: N, IC, OC, gelu?; b: dinp, dw, db, dout, gelu_pre, inp, w */
    return be->i->linear_backward(be, b[0], b[1], b[2], b[3], d[3] ? b[4] : NULL, b[5], b[6], d[0], d[1], d[2]);
}

static insitra_status op_output_forward(insitra_backend *be, void **b, const int64_t *d)
{
    return be->i->output_forward(be, b[0], b[1], b[2], b[3], d[0], d[1], d[2]);
}

static insitra_status op_pos(insitra_backend *be, void **b, const int64_t *d)
{
    /* b: out (B,T,C) in/out, pos, dpos, dout */
    INSITRA_CHECK(be->i->pos_forward(be, b[0], b[1], d[0], d[1], d[2]));
    return be->i->pos_backward(be, b[2], b[3], d[0], d[1], d[2]);
}

static insitra_status op_layernorm(insitra_backend *be, void **b, const int64_t *d)
{
    /* d: N, C, accumulate; b: out, mean, rstd, inp, w, bias, dinp, dw, db, dout */
    INSITRA_CHECK(be->i->layernorm_forward(be, b[0], b[1], b[2], b[3], b[4], b[5], d[0], d[1]));
    return be->i->layernorm_backward(be, b[6], b[7], b[8], b[9], b[3], b[1], b[2], b[4], d[0], d[1], d[2] != 0);
}

static insitra_status op_attention(insitra_backend *be, void **b, const int64_t *d)
{
    /* d: B, T, C, H, causal; b: out, state, qkv, dqkv, dout */
    const insitra_model_dims dims = {.seq_len = d[1], .d_model = d[2], .n_heads = d[3], .n_layers = 1,
                                     .in_features = 1, .out_features = 1};
    INSITRA_CHECK(be->i->reserve(be, &dims, d[0]));
    INSITRA_CHECK(be->i->attention_forward(be, b[0], b[1], b[2], d[0], d[1], d[2], d[3], d[4] != 0));
    return be->i->attention_backward(be, b[3], b[4], b[2], b[0], b[1], d[0], d[1], d[2], d[3], d[4] != 0);
}

/* Context parallelism: a rank's queries meet another rank's block (a) and
 * its own, packed from qkv, the way lib/attention_ring.c calls the operations. */
static insitra_status op_attention_blocks(insitra_backend *be, void **b, const int64_t *d)
{
    /* d: B, Tq, Tk, C, H, q_pos, k_pos of a, causal; b: out, m, l, lse, qkv, kv_a, kv_own, dout, dqkv,
     * dkv_a (accumulates into what is there), dkv_own */
    const int64_t B = d[0], Tq = d[1], Tk = d[2], C = d[3], H = d[4], qp = d[5], kp = d[6];
    const bool causal = d[7] != 0;
    const insitra_backend_i *i = be->i;
    INSITRA_CHECK(i->attention_kv_pack(be, b[6], b[4], B * Tq, C));
    INSITRA_CHECK(
        i->attention_block_forward(be, b[0], b[1], b[2], b[4], b[5], B, Tq, Tk, C, H, qp, kp, causal, true));
    INSITRA_CHECK(
        i->attention_block_forward(be, b[0], b[1], b[2], b[4], b[6], B, Tq, Tq, C, H, qp, qp, causal, false));
    INSITRA_CHECK(i->attention_block_finish(be, b[0], b[3], b[1], b[2], B, Tq, C, H));
    INSITRA_CHECK(i->fill_zero(be, b[8], (size_t)(B * Tq * 3 * C) * be->act_size));
    INSITRA_CHECK(i->attention_block_backward(be, b[8], b[9], b[7], b[4], b[5], b[0], b[3], B, Tq, Tk, C, H,
                                              qp, kp, causal));
    INSITRA_CHECK(i->attention_block_backward(be, b[8], b[10], b[7], b[4], b[6], b[0], b[3], B, Tq, Tq, C, H,
                                              qp, qp, causal));
    return i->attention_block_done(be, b[8], b[10], B * Tq, C, H);
}

static insitra_status op_mse(insitra_backend *be, void **b, const int64_t *d)
{
    /* b: dout, out, y, acc (f64 as 2 floats) */
    INSITRA_CHECK(be->i->mse_backward(be, b[0], b[1], b[2], d[0], 0.5f));
    INSITRA_CHECK(be->i->fill_zero(be, b[3], sizeof(double)));
    return be->i->sum_squares(be, b[3], b[1], b[2], d[0], 1.0 / (double)d[0]);
}

static insitra_status op_normalize(insitra_backend *be, void **b, const int64_t *d)
{
    /* d: N tokens, F_in, F_out; b: x_hat, y (in place), x, out (in place), the feature maps */
    insitra_feature_norm fm;
    insitra_feature_norm_carve(&fm, b[4], d[1], d[2]);
    INSITRA_CHECK(be->i->normalize_forward(be, b[0], b[1], b[2], &fm, d[0]));
    return be->i->normalize_inverse(be, b[3], b[2], &fm, d[0]);
}

/* Feature maps in host floats: means, positive scales, residual inputs (every
 * third output has none), as insitra_feature_norm_carve lays them out. */
static float *feature_maps(int64_t fi, int64_t fo)
{
    float *h = calloc((size_t)insitra_feature_norm_bytes(fi, fo), 1);
    insitra_feature_norm fm;
    insitra_feature_norm_carve(&fm, h, fi, fo);
    for (int64_t i = 0; i < fi; i++) fm.x_mean[i] = 3 * uniform(), fm.x_inv_std[i] = 1.5f + uniform();
    for (int64_t o = 0; o < fo; o++) {
        fm.y_mean[o] = uniform();
        fm.y_std[o] = 1.5f + uniform();
        fm.y_inv_std[o] = 1.0f / fm.y_std[o];
        fm.residual[o] = o % 3 == 2 ? -1 : (int32_t)((o * 7) % fi);
    }
    return h;
}

/* Segments over two runs of a flat buffer, as lib/zero.c builds them. */
static insitra_update_segment segments[2];

static insitra_status op_adamw(insitra_backend *be, void **b, const int64_t *d)
{
    /* b: params, copy, grads, m, v, segs, scalars, stats, norm (f64) */
    const int64_t n = d[0];
    segments[0] = (insitra_update_segment){0, 0, 0, 0, n / 2, 1};
    segments[1] = (insitra_update_segment){n / 2, n / 2, n / 2, n / 2, n - n / 2, 0};
    insitra_adamw_hparams hp = {.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1};
    const insitra_step_scalars sc = insitra_step_scalars_make(&hp, 3, 1e-3, 1.0, 2);
    const double stats[2] = {0.5, 9.0};
    INSITRA_CHECK(be->i->upload(be, b[5], segments, sizeof segments));
    INSITRA_CHECK(be->i->upload(be, b[6], &sc, sizeof sc));
    INSITRA_CHECK(be->i->upload(be, b[7], stats, sizeof stats));
    INSITRA_CHECK(be->i->fill_zero(be, b[8], sizeof(double)));
    INSITRA_CHECK(be->i->grad_sum_squares(be, b[8], b[2], b[5], 2, n - n / 2));
    return be->i->adamw(be, b[5], 2, n - n / 2, b[0], b[1], b[2], b[3], b[4], b[6], b[7]);
}

static insitra_shard_copy copies[3];

static insitra_status op_shard(insitra_backend *be, void **b, const int64_t *d)
{
    /* d: dp; b: flat (in), packed (out), flat2 (out), table, acc, add */
    const int64_t dp = d[0];
    const int64_t numel[3] = {5, 17, 64};
    int64_t slot = 0, flat = 0;
    for (int i = 0; i < 3; i++) {
        const int64_t len = (numel[i] + dp - 1) / dp;
        copies[i] = (insitra_shard_copy){flat, numel[i], len, slot};
        flat += numel[i];
        slot += len;
    }
    INSITRA_CHECK(be->i->upload(be, b[3], copies, sizeof copies));
    const insitra_dtype t = be->act;
    INSITRA_CHECK(be->i->shard_pack(be, b[1], b[0], b[3], 3, slot, 0, dp, 64, t));
    INSITRA_CHECK(be->i->shard_unpack(be, b[2], b[1], b[3], 3, slot, 0, dp, 64, t));
    return be->i->add(be, b[4], b[5], 86);
}

static insitra_status op_bias_residual(insitra_backend *be, void **b, const int64_t *d)
{
    /* d: N, C; b: out, inp, b, residual, db, dout */
    INSITRA_CHECK(be->i->bias_residual_forward(be, b[0], b[1], b[2], b[3], d[0], d[1]));
    return be->i->bias_backward(be, b[4], b[5], d[0], d[1]);
}

static insitra_status op_block_transpose(insitra_backend *be, void **b, const int64_t *d)
{
    /* d: P, Q, n; b: out (Q,P,n), in (P,Q,n) */
    return be->i->block_transpose(be, b[0], b[1], d[0], d[1], d[2], be->act);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    insitra_backend *cpu = NULL;
    if (insitra_backend_cpu_create(&cpu) != INSITRA_STATUS_OK) {
        printf("FAIL cpu backend: %s\n", insitra_last_error());
        return 1;
    }
    for (int precision = 0; precision < 2; precision++) {
        insitra_config *cfg;
        insitra_config_create(&cfg);
        insitra_config_set(cfg, "device", "cuda");
        insitra_config_set(cfg, "precision", precision ? "bf16" : "fp32");
        insitra_backend *gpu = NULL;
        if (insitra_backend_create(&gpu, cfg, MPI_COMM_WORLD) != INSITRA_STATUS_OK) {
            printf("skipped: %s\n", insitra_last_error());
            insitra_config_free(cfg);
            insitra_backend_free(cpu);
            MPI_Finalize();
            return 77;
        }
        const double tol = precision ? 1e-2 : 1e-4;
        const char *p = precision ? "bf16" : "fp32";
        /* the kernels' workspace, for the largest shapes below */
        const insitra_model_dims big = {.seq_len = 33, .d_model = 64, .n_heads = 4, .n_layers = 1,
                                        .in_features = 64, .out_features = 64};
        insitra_backend_i const *gi = gpu->i;
        if (gi->reserve(gpu, &big, 4) != INSITRA_STATUS_OK || cpu->i->reserve(cpu, &big, 4) != INSITRA_STATUS_OK) {
            printf("FAIL reserve: %s\n", insitra_last_error());
            return 1;
        }
        op_case c;
        const int64_t lin[][5] = {{1, 8, 8, 0, 0}, {7, 24, 40, 1, 0}, {33, 64, 96, 0, 1}, {17, 32, 128, 1, 0},
                                  {5, 3, 64, 0, 1}};
        for (size_t k = 0; k < sizeof lin / sizeof *lin; k++) {
            const int64_t *d = lin[k], N = d[0], IC = d[1], OC = d[2];
            snprintf(c.name, sizeof c.name, "linear_forward N%lld IC%lld OC%lld%s%s %s", (long long)N,
                     (long long)IC, (long long)OC, d[3] ? " +res" : "", d[4] ? " gelu" : "", p);
            c.nt = 6;
            c.t[0] = T_OUT("out", N * OC, true, 0);
            c.t[1] = T_OUT("gelu_pre", N * OC, true, 0);
            c.t[2] = T_IN("inp", N * IC, true, 1);
            c.t[3] = T_IN("w", OC * IC, true, 0.3f);
            c.t[4] = T_IN("b", OC, true, 0.1f);
            c.t[5] = T_IN("residual", N * OC, true, 1);
            check(cpu, gpu, &c, op_linear_forward, d, tol);

            snprintf(c.name, sizeof c.name, "linear_backward N%lld IC%lld OC%lld%s %s", (long long)N, (long long)IC,
                     (long long)OC, d[4] ? " gelu" : "", p);
            const int64_t db[4] = {N, IC, OC, d[4]};
            c.nt = 7;
            c.t[0] = T_OUT("dinp", N * IC, true, 0);
            c.t[1] = T_OUT("dw", OC * IC, false, 0.01f); /* accumulates into what is there */
            c.t[2] = T_OUT("db", OC, false, 0.01f);
            c.t[3] = T_IN("dout", N * OC, true, 1);
            c.t[4] = T_IN("gelu_pre", N * IC, true, 2);
            c.t[5] = T_IN("inp", N * IC, true, 1);
            c.t[6] = T_IN("w", OC * IC, true, 0.3f);
            check(cpu, gpu, &c, op_linear_backward, db, tol);
        }
        const int64_t outs[][3] = {{1, 8, 1}, {33, 64, 3}, {16, 32, 7}};
        for (size_t k = 0; k < sizeof outs / sizeof *outs; k++) {
            const int64_t *d = outs[k];
            snprintf(c.name, sizeof c.name, "output_forward N%lld C%lld F%lld %s", (long long)d[0], (long long)d[1],
                     (long long)d[2], p);
            c.nt = 4;
            c.t[0] = T_OUT("out", d[0] * d[2], false, 0);
            c.t[1] = T_IN("inp", d[0] * d[1], true, 1);
            c.t[2] = T_IN("w", d[2] * d[1], true, 0.3f);
            c.t[3] = T_IN("b", d[2], true, 0.1f);
            check(cpu, gpu, &c, op_output_forward, d, tol);
        }
        const int64_t pos[][3] = {{1, 1, 8}, {3, 7, 24}, {4, 33, 64}};
        for (size_t k = 0; k < sizeof pos / sizeof *pos; k++) {
            const int64_t *d = pos[k], n = d[0] * d[1] * d[2];
            snprintf(c.name, sizeof c.name, "pos_forward+backward B%lld T%lld C%lld %s", (long long)d[0],
                     (long long)d[1], (long long)d[2], p);
            c.nt = 4;
            c.t[0] = T_OUT("out", n, true, 1);
            c.t[1] = T_IN("pos", d[1] * d[2], true, 1);
            c.t[2] = T_OUT("dpos", d[1] * d[2], false, 0.1f);
            c.t[3] = T_IN("dout", n, true, 1);
            check(cpu, gpu, &c, op_pos, d, tol);
        }
        const int64_t ln[][3] = {{1, 8, 0}, {7, 24, 1}, {33, 64, 1}, {5, 96, 0}, {64, 768, 1}};
        for (size_t k = 0; k < sizeof ln / sizeof *ln; k++) {
            const int64_t *d = ln[k], N = d[0], C = d[1];
            snprintf(c.name, sizeof c.name, "layernorm_forward+backward N%lld C%lld%s %s", (long long)N,
                     (long long)C, d[2] ? " +=" : "", p);
            c.nt = 10;
            c.t[0] = T_OUT("out", N * C, true, 0);
            c.t[1] = T_OUT("mean", N, false, 0);
            c.t[2] = T_OUT("rstd", N, false, 0);
            c.t[3] = T_IN("inp", N * C, true, 2);
            c.t[4] = T_IN("w", C, true, 1);
            c.t[5] = T_IN("b", C, true, 0.5f);
            c.t[6] = T_OUT("dinp", N * C, true, d[2] ? 1.f : 0.f);
            c.t[7] = T_OUT("dw", C, false, 0.1f);
            c.t[8] = T_OUT("db", C, false, 0.1f);
            c.t[9] = T_IN("dout", N * C, true, 1);
            check(cpu, gpu, &c, op_layernorm, d, tol);
        }
        const int64_t att[][5] = {{1, 1, 8, 1, 0}, {2, 7, 24, 3, 1}, {2, 17, 32, 2, 0}, {1, 33, 64, 4, 1},
                                  {4, 16, 64, 4, 0}};
        for (size_t k = 0; k < sizeof att / sizeof *att; k++) {
            const int64_t *d = att[k], B = d[0], T = d[1], C = d[2], H = d[3];
            /* as much as either backend keeps for backward */
            const insitra_model_dims ad = {.seq_len = T, .n_heads = H};
            const int64_t cs = insitra_backend_cpu_desc.attention_state_bytes(&ad, B, sizeof(float));
            const int64_t gs = insitra_backend_cuda_desc.attention_state_bytes(&ad, B, gpu->act_size);
            const int64_t state = cs > gs ? cs : gs;
            snprintf(c.name, sizeof c.name, "attention_forward+backward B%lld T%lld C%lld H%lld%s %s", (long long)B,
                     (long long)T, (long long)C, (long long)H, d[4] ? " causal" : "", p);
            c.nt = 5;
            c.t[0] = T_OUT("out", B * T * C, true, 0);
            c.t[1] = T_IN("state", state / (int64_t)sizeof(float), false, 0);
            c.t[2] = T_IN("qkv", B * T * 3 * C, true, 1);
            c.t[3] = T_OUT("dqkv", B * T * 3 * C, true, 0);
            c.t[4] = T_IN("dout", B * T * C, true, 1);
            check(cpu, gpu, &c, op_attention, d, tol);
        }
        const int64_t bias[][2] = {{1, 8}, {37, 24}, {512, 64}};
        for (size_t k = 0; k < sizeof bias / sizeof *bias; k++) {
            const int64_t N = bias[k][0], C = bias[k][1];
            snprintf(c.name, sizeof c.name, "bias_residual_forward+bias_backward N%lld C%lld %s", (long long)N,
                     (long long)C, p);
            c.nt = 6;
            c.t[0] = T_OUT("out", N * C, true, 0);
            c.t[1] = T_IN("inp", N * C, true, 1);
            c.t[2] = T_IN("b", C, true, 0.5f);
            c.t[3] = T_IN("residual", N * C, true, 1);
            c.t[4] = T_OUT("db", C, false, 0.1f); /* accumulates into what is there */
            c.t[5] = T_IN("dout", N * C, true, 1);
            check(cpu, gpu, &c, op_bias_residual, bias[k], tol);
        }
        const int64_t tr[][3] = {{1, 3, 5}, {2, 4, 96}, {4, 3, 1000}};
        for (size_t k = 0; k < sizeof tr / sizeof *tr; k++) {
            const int64_t *d = tr[k], n = d[0] * d[1] * d[2];
            snprintf(c.name, sizeof c.name, "block_transpose P%lld Q%lld n%lld %s", (long long)d[0], (long long)d[1],
                     (long long)d[2], p);
            c.nt = 2;
            c.t[0] = T_OUT("out", n, true, 0);
            c.t[1] = T_IN("in", n, true, 1);
            check(cpu, gpu, &c, op_block_transpose, d, 0.0); /* a copy: the same bits */
        }
        /* B, Tq, Tk, C, H, q_pos, k_pos of the other block, causal: the other block before the
         * queries, after them (wholly masked, folded in first), overlapping them, Tk != Tq; head
         * sizes 8 to 256 */
        const int64_t blk[][8] = {{1, 1, 1, 8, 1, 0, 0, 0},       {2, 7, 7, 24, 3, 7, 0, 1},
                                  {2, 17, 17, 32, 2, 0, 17, 1},   {2, 33, 20, 64, 4, 40, 50, 1},
                                  {1, 33, 65, 64, 4, 16, 0, 0},   {2, 40, 24, 128, 2, 24, 0, 1},
                                  {1, 20, 30, 256, 2, 30, 10, 1}, {1, 9, 9, 256, 1, 9, 0, 0}};
        for (size_t k = 0; k < sizeof blk / sizeof *blk; k++) {
            const int64_t *d = blk[k], B = d[0], Tq = d[1], Tk = d[2], C = d[3], H = d[4];
            snprintf(c.name, sizeof c.name,
                     "attention_block_* B%lld Tq%lld Tk%lld C%lld H%lld q%lld k%lld%s %s", (long long)B,
                     (long long)Tq, (long long)Tk, (long long)C, (long long)H, (long long)d[5],
                     (long long)d[6], d[7] ? " causal" : "", p);
            c.nt = 11;
            c.t[0] = T_OUT("out", B * Tq * C, true, 0);
            c.t[1] = T_OUT("m", B * H * Tq, false, 0);
            c.t[2] = T_OUT("l", B * H * Tq, false, 0);
            c.t[3] = T_OUT("lse", B * H * Tq, false, 0);
            c.t[4] = T_IN("qkv", B * Tq * 3 * C, true, 1);
            c.t[5] = T_IN("kv_a", B * Tk * 2 * C, true, 1);
            c.t[6] = T_OUT("kv_own", B * Tq * 2 * C, true, 0);
            c.t[7] = T_IN("dout", B * Tq * C, true, 1);
            c.t[8] = T_OUT("dqkv", B * Tq * 3 * C, true, 0);
            c.t[9] = T_OUT("dkv_a", B * Tk * 2 * C, false, 0.1f);
            c.t[10] = T_IN("dkv_own", B * Tq * 2 * C, false, 0); /* the CPU scales it in place */
            check(cpu, gpu, &c, op_attention_blocks, d, tol);
        }
        const int64_t mse[] = {1, 37, 4096};
        for (size_t k = 0; k < sizeof mse / sizeof *mse; k++) {
            snprintf(c.name, sizeof c.name, "mse_backward+sum_squares n%lld %s", (long long)mse[k], p);
            c.nt = 4;
            c.t[0] = T_OUT("dout", mse[k], true, 0);
            c.t[1] = T_IN("out", mse[k], false, 1);
            c.t[2] = T_IN("y", mse[k], false, 1);
            c.t[3] = T_F64("loss");
            check(cpu, gpu, &c, op_mse, &mse[k], precision ? 1e-2 : 1e-5);
        }
        const int64_t norm[][3] = {{1, 1, 1}, {37, 6, 1}, {512, 5, 3}};
        for (size_t k = 0; k < sizeof norm / sizeof *norm; k++) {
            const int64_t *d = norm[k], N = d[0], fi = d[1], fo = d[2];
            snprintf(c.name, sizeof c.name, "normalize_forward+inverse N%lld Fi%lld Fo%lld %s", (long long)N,
                     (long long)fi, (long long)fo, p);
            c.nt = 5;
            c.t[0] = T_OUT("x_hat", N * fi, true, 0);
            c.t[1] = T_OUT("y_hat", N * fo, false, 1);
            c.t[2] = T_IN("x", N * fi, false, 4);
            c.t[3] = T_OUT("y", N * fo, false, 1);
            c.t[4] = T_IN("maps", insitra_feature_norm_bytes(fi, fo) / (int64_t)sizeof(float), false, 0);
            c.t[4].host = feature_maps(fi, fo);
            check(cpu, gpu, &c, op_normalize, d, tol);
        }
        const int64_t adam[] = {3, 1001};
        for (size_t k = 0; k < sizeof adam / sizeof *adam; k++) {
            const int64_t n = adam[k];
            snprintf(c.name, sizeof c.name, "adamw+grad_sum_squares n%lld %s", (long long)n, p);
            c.nt = 9;
            c.t[0] = T_OUT("params", n, false, 1);
            c.t[1] = T_OUT("copy", n, true, 0);
            c.t[2] = T_IN("grads", n, false, 1);
            c.t[3] = T_OUT("m", n, false, 0.1f);
            c.t[4] = T_OUT("v", n, false, 0);
            c.t[5] = T_IN("segments", (int64_t)(sizeof(segments) / (sizeof(float))), false, 0);
            c.t[6] = T_IN("scalars", (int64_t)(sizeof(insitra_step_scalars) / sizeof(float)) + 1, false, 0);
            c.t[7] = T_IN("stats", 4, false, 0);
            c.t[8] = T_F64("norm");
            check(cpu, gpu, &c, op_adamw, &adam[k], precision ? 1e-2 : 1e-5);
        }
        const int64_t dps[] = {1, 2, 3, 4};
        for (size_t k = 0; k < sizeof dps / sizeof *dps; k++) {
            snprintf(c.name, sizeof c.name, "shard_pack+unpack+add dp%lld %s", (long long)dps[k], p);
            c.nt = 6;
            c.t[0] = T_IN("flat", 86, true, 1);
            c.t[1] = T_OUT("packed", 4 * 86, true, 0);
            c.t[2] = T_OUT("unpacked", 86, true, 0);
            c.t[3] = T_IN("table", (int64_t)(sizeof(copies) / (sizeof(float))), false, 0);
            c.t[4] = T_OUT("acc", 86, false, 1);
            c.t[5] = T_IN("add", 86, false, 1);
            check(cpu, gpu, &c, op_shard, &dps[k], 0.0);
        }
        insitra_backend_free(gpu);
        insitra_config_free(cfg);
    }
    insitra_backend_free(cpu);
    printf("backend ops: %d checks, %d failed\n", checks, failures);
    MPI_Finalize();
    return failures ? 1 : 0;
}
