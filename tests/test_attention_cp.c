/*
 * Context-parallel attention (lib/attention_ring.h) on the CPU backend over
 * MPI against the
 * attention of the whole sample on one rank. Every rank makes the same whole
 * samples from a fixed seed, keeps its cp group's slice of tokens, runs the
 * ring, and compares its out, lse and dqkv with the rows of the one-rank
 * attention: normalised error within 2e-5 (rounding seen ~5e-7; a block at
 * the wrong position or a lost dk is off by O(1)). Cases: cp = the world
 * (2 or 4 ranks), and on 4 ranks dp x cp = 2 x 2 groups from a colour, with
 * other samples per group; T not a multiple of the tile or of 64 / cp,
 * causal and bidirectional; two runs bit-identical; finite differences of
 * the ring's gradient at cp = 2.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention_ring.h"
#include "comm.h"
#include "cpu/attention.h"
#include "gradcheck.h"
#include "test_util.h"

#define TOL 2e-5

typedef struct ring_case {
    MPI_Comm comm;
    insitra_backend *be;
    insitra_comm group_comm;
    insitra_group *g;
    int rank, cp;
    int64_t B, T, Tc, H, hs, C;
    bool causal;
    float *qkv, *dout;               /* whole samples (B,T,3C), (B,T,C) */
    float *lqkv, *ldout, *out, *lse; /* this rank's (B,Tc,3C), (B,Tc,C), (B,Tc,C), (B,H,Tc) */
    float *dqkv, *scratch;           /* (B,Tc,3C), the ring's scratch */
} ring_case;

static void ring_alloc(ring_case *k, MPI_Comm comm, int64_t B, int64_t T, int64_t H, int64_t hs, bool causal,
                       uint64_t seed)
{
    k->comm = comm;
    MPI_Comm_rank(comm, &k->rank);
    MPI_Comm_size(comm, &k->cp);
    insitra_backend_cpu_create(&k->be);
    insitra_comm_create(&k->group_comm, comm);
    k->be->i->group_create(k->be, &k->group_comm, &k->g);
    k->B = B, k->T = T, k->Tc = T / k->cp, k->H = H, k->hs = hs, k->C = H * hs, k->causal = causal;
    const int64_t C = k->C, n = B * k->Tc;
    k->qkv = malloc(sizeof(float) * (size_t)(3 * B * T * C));
    k->dout = malloc(sizeof(float) * (size_t)(B * T * C));
    fill_uniform(k->qkv, 3 * B * T * C, seed, 2.0f);
    fill_uniform(k->dout, B * T * C, seed + 1, 1.0f);
    k->lqkv = malloc(sizeof(float) * (size_t)(3 * n * C));
    k->ldout = malloc(sizeof(float) * (size_t)(n * C));
    k->out = malloc(sizeof(float) * (size_t)(n * C));
    k->lse = malloc(sizeof(float) * (size_t)(B * H * k->Tc));
    k->dqkv = malloc(sizeof(float) * (size_t)(3 * n * C));
    k->scratch = malloc((size_t)insitra_attention_ring_scratch_bytes(B, k->Tc, C, H, sizeof(float)));
}

static void ring_free(ring_case *k)
{
    free(k->qkv), free(k->dout), free(k->lqkv), free(k->ldout), free(k->out), free(k->lse), free(k->dqkv);
    free(k->scratch);
    k->be->i->group_free(k->be, k->g);
    insitra_comm_free(&k->group_comm);
    insitra_backend_free(k->be);
}

/* This rank's tokens [rank Tc, (rank+1) Tc) of every sample. */
static void ring_slice(ring_case *k)
{
    const int64_t C = k->C, Tc = k->Tc;
    for (int64_t b = 0; b < k->B; b++) {
        const int64_t from = b * k->T + k->rank * Tc;
        memcpy(k->lqkv + b * Tc * 3 * C, k->qkv + from * 3 * C, sizeof(float) * (size_t)(Tc * 3 * C));
        memcpy(k->ldout + b * Tc * C, k->dout + from * C, sizeof(float) * (size_t)(Tc * C));
    }
}

static int ring_run(ring_case *k)
{
    ring_slice(k);
    int bad = insitra_attention_ring_forward(k->be, k->g, k->rank, k->cp, k->out, k->lse, k->scratch, k->lqkv,
                                             k->B, k->Tc, k->C, k->H, k->causal) != INSITRA_STATUS_OK;
    bad += insitra_attention_ring_backward(k->be, k->g, k->rank, k->cp, k->dqkv, k->scratch, k->ldout, k->lqkv,
                                           k->out, k->lse, k->B, k->Tc, k->C, k->H,
                                           k->causal) != INSITRA_STATUS_OK;
    return bad;
}

/* max |mine - whole rows| / max |whole rows| over this rank's tokens; w columns per token. */
static double rows_error(const ring_case *k, const float *mine, const float *whole, int64_t w, int64_t per_sample)
{
    double err = 0.0, top = 0.0;
    for (int64_t b = 0; b < k->B; b++)
        for (int64_t i = 0; i < k->Tc * w; i++) {
            const double x = mine[b * k->Tc * w + i], y = whole[b * per_sample + k->rank * k->Tc * w + i];
            err = fmax(err, fabs(x - y));
            top = fmax(top, fabs(y));
        }
    return top > 0.0 ? err / top : err;
}

static void check_ring(insitra_test *t, MPI_Comm comm, int64_t T, int64_t hs, bool causal, uint64_t seed)
{
    ring_case k;
    ring_alloc(&k, comm, 2, T, 2, hs, causal, seed);
    const int64_t C = k.C, B = k.B, H = k.H;
    float *out = malloc(sizeof(float) * (size_t)(B * T * C)), *lse = malloc(sizeof(float) * (size_t)(B * H * T));
    float *dqkv = malloc(sizeof(float) * (size_t)(3 * B * T * C));
    insitra_attention_forward(out, lse, k.qkv, B, T, C, H, causal);
    insitra_attention_backward(dqkv, k.dout, k.qkv, out, lse, B, T, C, H, causal);
    EXPECT(t, ring_run(&k) == 0, "cp=%d: the ring failed: %s", k.cp, insitra_last_error());
    const double e_out = rows_error(&k, k.out, out, C, T * C);
    const double e_dqkv = rows_error(&k, k.dqkv, dqkv, 3 * C, T * 3 * C);
    double e_lse = 0.0;
    for (int64_t bh = 0; bh < B * H; bh++)
        for (int64_t i = 0; i < k.Tc; i++)
            e_lse = fmax(e_lse, fabs((double)k.lse[bh * k.Tc + i] - lse[bh * T + k.rank * k.Tc + i]));
    EXPECT(t, e_out <= TOL && e_lse <= TOL && e_dqkv <= TOL,
           "cp=%d rank %d T=%lld hs=%lld %s: out %.2e, lse %.2e (absolute), dqkv %.2e", k.cp, k.rank, (long long)T,
           (long long)hs, causal ? "causal" : "bidirectional", e_out, e_lse, e_dqkv);
    printf("rank %d cp=%d T=%-4lld hs=%-3lld %-13s out %.2e  lse %.2e  dqkv %.2e\n", k.rank, k.cp, (long long)T,
           (long long)hs, causal ? "causal" : "bidirectional", e_out, e_lse, e_dqkv);
    /* the same bits again */
    float *out1 = malloc(sizeof(float) * (size_t)(B * k.Tc * C)), *dqkv1 = malloc(sizeof(float) * (size_t)(3 * B * k.Tc * C));
    memcpy(out1, k.out, sizeof(float) * (size_t)(B * k.Tc * C));
    memcpy(dqkv1, k.dqkv, sizeof(float) * (size_t)(3 * B * k.Tc * C));
    ring_run(&k);
    EXPECT(t,
           memcmp(out1, k.out, sizeof(float) * (size_t)(B * k.Tc * C)) == 0 &&
               memcmp(dqkv1, k.dqkv, sizeof(float) * (size_t)(3 * B * k.Tc * C)) == 0,
           "cp=%d: a second run differs", k.cp);
    free(out), free(lse), free(dqkv), free(out1), free(dqkv1);
    ring_free(&k);
}

/* L = sum over the group's ranks of out . r (r = dout), summed in rank order
 * on every rank so all ranks take the same finite differences. */
static double ring_loss(void *p)
{
    ring_case *k = p;
    ring_slice(k);
    insitra_attention_ring_forward(k->be, k->g, k->rank, k->cp, k->out, k->lse, k->scratch, k->lqkv, k->B, k->Tc,
                                   k->C, k->H, k->causal);
    double s = 0.0;
    for (int64_t i = 0; i < k->B * k->Tc * k->C; i++) s += (double)k->out[i] * (double)k->ldout[i];
    double *all = malloc(sizeof(double) * (size_t)k->cp);
    MPI_Allgather(&s, 1, MPI_DOUBLE, all, 1, MPI_DOUBLE, k->comm);
    s = 0.0;
    for (int i = 0; i < k->cp; i++) s += all[i];
    free(all);
    return s;
}

static int check_ring_gradient(MPI_Comm comm, bool causal)
{
    ring_case k;
    ring_alloc(&k, comm, 1, 6, 2, 3, causal, causal ? 81 : 82);
    ring_run(&k);
    /* the whole qkv's gradient: every rank's dqkv rows, gathered in token order */
    const int64_t C = k.C, n = k.Tc * 3 * C;
    float *grad = malloc(sizeof(float) * (size_t)(k.T * 3 * C));
    MPI_Allgather(k.dqkv, (int)n, MPI_FLOAT, grad, (int)n, MPI_FLOAT, comm);
    char name[64];
    snprintf(name, sizeof name, "cp=%d ring%s dqkv", k.cp, causal ? " (causal)" : "");
    const int f = gradcheck(name, k.qkv, grad, k.T * 3 * C, ring_loss, &k, 200, 1e-2, 1e-3, 1e-2);
    free(grad);
    ring_free(&k);
    return f;
}

int main(int argc, char **argv)
{
    insitra_test t = insitra_test_begin(&argc, &argv, "attention_cp");
    int world, rank;
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    const int64_t cases[][2] = {{100, 8}, {200, 5}, {260, 72}, {4 * 3, 3}};
    uint64_t seed = 500;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        for (int causal = 0; causal < 2; causal++, seed += 2)
            if (cases[i][0] % world == 0) check_ring(&t, MPI_COMM_WORLD, cases[i][0], cases[i][1], causal != 0, seed);
    MPI_Comm pair = MPI_COMM_NULL;
    if (world % 2 == 0) {
        /* dp x cp = world/2 x 2: a colour per pair of consecutive ranks, other samples per group */
        MPI_Comm_split(MPI_COMM_WORLD, rank / 2, rank, &pair);
        for (int causal = 0; causal < 2; causal++)
            check_ring(&t, pair, 130, 16, causal != 0, 900 + 10 * (uint64_t)(rank / 2) + (uint64_t)causal);
        for (int causal = 0; causal < 2; causal++)
            EXPECT(&t, check_ring_gradient(pair, causal != 0) == 0,
                   "cp=2 ring: finite differences disagree (lines above)");
        MPI_Comm_free(&pair);
    }
    return insitra_test_end(&t);
}
