/*
 * The fused attention kernels (lib/cuda/attention.cuh) against the CPU
 * reference, insitra_attention_forward/backward of lib/cpu/attention.h (fp32,
 * blocked online softmax), over a table of shapes: odd T (1, 7, 129,
 * 1000), head sizes 32 and 64 (the tensor-core path in bf16) and 8, 48, 128,
 * 256 (the CUDA-core path, and the hd = 128 tensor-core kernels), causal and
 * bidirectional, fp32 and bf16.
 *
 * Error: max |gpu - ref| / max |ref| (normalised max error), for out, and
 * for each third of dqkv (dq, dk, dv) over max |ref| of the whole dqkv: at
 * T = 1 dq and dk are exactly zero (one probability of 1 has no gradient),
 * so their own maximum would be rounding noise.
 *   fp32: 1e-5. The kernels compute the same sums as the reference in another
 *         order (online softmax, tiles), so only fp32 rounding separates them.
 *   bf16: the reference gets the same bf16-rounded qkv and dout, so what is
 *         left is the kernels' own rounding: the probabilities are rounded to
 *         bf16 before the P V and dS products and every output is stored in
 *         bf16 (2^-9 relative each): 1e-2 for out and the gradients.
 * Seen on an H200 (2026-12-01): fp32 at most 1.5e-6 (out) and 2.4e-6
 * (gradients), bf16 3.5e-3 and 4.1e-3, over the table.
 * NaN never passes (the comparisons are written so that NaN fails).
 *
 * Every output is poisoned (all bytes 0xFF, a NaN in fp32 and bf16) before a
 * run, so an element the kernels forget to write fails. Every case runs
 * twice on the same inputs: out, lse and dqkv must be bit-identical
 * (the kernels promise a fixed summation order). The head-size check must
 * refuse hd > INSITRA_ATTENTION_MAX_HEAD_DIM with a message naming it.
 *
 * Without a usable GPU (CI has none) the test prints why and exits 77.
 */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/attention.h"
#include "cuda/attention.cuh"

typedef struct {
    int64_t B, T, H, hd;
    bool causal, bf16;
} attn_case;

static const attn_case cases[] = {
    /* the tensor-core path (bf16, hd 32 and 64) and its fp32 twin */
    {2, 1, 3, 32, false, true},    {2, 7, 3, 32, true, true},     {2, 129, 3, 32, false, true},
    {2, 1000, 3, 32, true, true},  {2, 1, 3, 64, true, true},     {2, 7, 3, 64, false, true},
    {2, 129, 3, 64, true, true},   {2, 1000, 3, 64, false, true}, {2, 1000, 3, 64, true, true},
    {2, 129, 3, 64, false, true},  {2, 1, 3, 32, true, false},    {2, 7, 3, 32, false, false},
    {2, 129, 3, 32, true, false},  {2, 1000, 3, 32, false, false}, {2, 1, 3, 64, false, false},
    {2, 7, 3, 64, true, false},    {2, 129, 3, 64, false, false}, {2, 1000, 3, 64, true, false},
    {2, 1000, 3, 64, false, false},
    /* hd 128 on the tensor cores; other head sizes on the CUDA-core path */
    {2, 129, 2, 128, true, true},  {1, 1000, 2, 128, false, true}, {2, 70, 2, 8, true, true},
    {2, 70, 2, 8, false, false},   {2, 200, 2, 48, true, true},   {2, 200, 2, 48, false, false},
    {1, 65, 2, 256, true, false},  {1, 65, 2, 256, false, true},
};

static int failures;

static uint16_t to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even (inputs are finite) */
    return (uint16_t)(u >> 16);
}
static float from_bf16(uint16_t b)
{
    const uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* x[i] uniform in [-a, a), rounded through bf16 when asked */
static void fill(float *x, int64_t n, float a, bool round, unsigned *seed)
{
    for (int64_t i = 0; i < n; i++) {
        *seed = *seed * 1664525u + 1013904223u;
        x[i] = a * (2.f * (float)(*seed >> 8) / 16777216.f - 1.f);
        if (round) x[i] = from_bf16(to_bf16(x[i]));
    }
}

/* host floats -> device buffer in the case's element type */
static void *upload(const float *x, int64_t n, bool bf16)
{
    const size_t es = bf16 ? 2 : 4;
    void *host = malloc((size_t)n * es), *dev = NULL;
    if (bf16)
        for (int64_t i = 0; i < n; i++) ((uint16_t *)host)[i] = to_bf16(x[i]);
    else
        memcpy(host, x, (size_t)n * es);
    if (cudaMalloc(&dev, (size_t)n * es) != cudaSuccess ||
        cudaMemcpy(dev, host, (size_t)n * es, cudaMemcpyHostToDevice) != cudaSuccess) {
        printf("FAIL: cudaMalloc/cudaMemcpy of %lld elements\n", (long long)n);
        exit(1);
    }
    free(host);
    return dev;
}

static void download(float *x, const void *dev, int64_t n, bool bf16)
{
    const size_t es = bf16 ? 2 : 4;
    void *host = malloc((size_t)n * es);
    if (cudaMemcpy(host, dev, (size_t)n * es, cudaMemcpyDeviceToHost) != cudaSuccess) {
        printf("FAIL: cudaMemcpy back\n");
        exit(1);
    }
    for (int64_t i = 0; i < n; i++) x[i] = bf16 ? from_bf16(((uint16_t *)host)[i]) : ((float *)host)[i];
    free(host);
}

/* max |a - b| over rows of a strided matrix (rows x cols, stride ld), NaN if any */
static double max_err(const float *a, const float *b, int64_t rows, int64_t cols, int64_t ld)
{
    double num = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            const double d = fabs((double)a[r * ld + c] - b[r * ld + c]);
            num = d > num || d != d ? d : num; /* NaN sticks */
        }
    return num;
}

static double max_abs(const float *a, int64_t n)
{
    double m = 1e-30;
    for (int64_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i]));
    return m;
}

/* One forward + backward on the GPU into host arrays (out, lse bytes, dqkv bytes). */
static int run_gpu(const attn_case *k, const void *qkv, const void *dout, void *out, float *lse,
                   void *dqkv, float *delta, void *h_out, void *h_lse, void *h_dqkv)
{
    const insitra_attention_shape sh = {k->B, k->T, k->H * k->hd, k->H, k->causal, k->bf16};
    const size_t es = k->bf16 ? 2 : 4, N = (size_t)(k->B * k->T), C = (size_t)(k->H * k->hd);
    const size_t rows = (size_t)(k->B * k->H * k->T);
    cudaMemset(out, 0xff, N * C * es);
    cudaMemset(lse, 0xff, rows * 4);
    cudaMemset(dqkv, 0xff, 3 * N * C * es);
    insitra_status s = insitra_fused_attention_forward(out, lse, qkv, &sh, 0);
    if (s == INSITRA_STATUS_OK) s = insitra_fused_attention_backward(dqkv, delta, dout, qkv, out, lse, &sh, 0);
    if (s != INSITRA_STATUS_OK) {
        printf("FAIL: %s\n", insitra_last_error());
        return 0;
    }
    const cudaError_t e = cudaDeviceSynchronize();
    if (e != cudaSuccess) {
        printf("FAIL: kernels: %s\n", cudaGetErrorString(e));
        return 0;
    }
    cudaMemcpy(h_out, out, N * C * es, cudaMemcpyDeviceToHost);
    cudaMemcpy(h_lse, lse, rows * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(h_dqkv, dqkv, 3 * N * C * es, cudaMemcpyDeviceToHost);
    return 1;
}

static void check_case(const attn_case *k, unsigned seed)
{
    const int64_t B = k->B, T = k->T, H = k->H, C = H * k->hd, N = B * T;
    const size_t es = k->bf16 ? 2 : 4;
    float *qkv = malloc(sizeof(float) * (size_t)(3 * N * C)), *dout = malloc(sizeof(float) * (size_t)(N * C));
    float *ref_out = malloc(sizeof(float) * (size_t)(N * C)), *ref_dqkv = malloc(sizeof(float) * (size_t)(3 * N * C));
    float *ref_lse = malloc(sizeof(float) * (size_t)(B * H * T));
    float *got_out = malloc(sizeof(float) * (size_t)(N * C)), *got_dqkv = malloc(sizeof(float) * (size_t)(3 * N * C));
    /* spread 2 gives scores of a few units: peaked rows, not uniform ones */
    fill(qkv, 3 * N * C, 2.f, k->bf16, &seed);
    fill(dout, N * C, 1.f, k->bf16, &seed);
    insitra_attention_forward(ref_out, ref_lse, qkv, B, T, C, H, k->causal);
    insitra_attention_backward(ref_dqkv, dout, qkv, ref_out, ref_lse, B, T, C, H, k->causal);

    void *d_qkv = upload(qkv, 3 * N * C, k->bf16), *d_dout = upload(dout, N * C, k->bf16);
    void *d_out, *d_dqkv;
    float *d_lse, *d_delta;
    cudaMalloc(&d_out, (size_t)(N * C) * es);
    cudaMalloc(&d_dqkv, (size_t)(3 * N * C) * es);
    cudaMalloc((void **)&d_lse, (size_t)(B * H * T) * 4);
    cudaMalloc((void **)&d_delta, (size_t)(B * H * T) * 4);
    const size_t out_b = (size_t)(N * C) * es, lse_b = (size_t)(B * H * T) * 4, dqkv_b = 3 * out_b;
    char *run1 = malloc(out_b + lse_b + dqkv_b), *run2 = malloc(out_b + lse_b + dqkv_b);

    const char *prec = k->bf16 ? "bf16" : "fp32";
    if (run_gpu(k, d_qkv, d_dout, d_out, d_lse, d_dqkv, d_delta, run1, run1 + out_b, run1 + out_b + lse_b) &&
        run_gpu(k, d_qkv, d_dout, d_out, d_lse, d_dqkv, d_delta, run2, run2 + out_b, run2 + out_b + lse_b)) {
        download(got_out, d_out, N * C, k->bf16);
        download(got_dqkv, d_dqkv, 3 * N * C, k->bf16);
        const double n_out = max_abs(ref_out, N * C), n_grad = max_abs(ref_dqkv, 3 * N * C);
        const double e_out = max_err(got_out, ref_out, N, C, C) / n_out;
        const double e_dq = max_err(got_dqkv, ref_dqkv, N, C, 3 * C) / n_grad;
        const double e_dk = max_err(got_dqkv + C, ref_dqkv + C, N, C, 3 * C) / n_grad;
        const double e_dv = max_err(got_dqkv + 2 * C, ref_dqkv + 2 * C, N, C, 3 * C) / n_grad;
        const double tol_out = k->bf16 ? 1e-2 : 1e-5, tol_grad = tol_out;
        const int same = memcmp(run1, run2, out_b + lse_b + dqkv_b) == 0;
        const int ok = e_out <= tol_out && e_dq <= tol_grad && e_dk <= tol_grad && e_dv <= tol_grad && same;
        printf("%s B=%lld T=%-4lld H=%lld hd=%-3lld %-6s %s: out %.2e dq %.2e dk %.2e dv %.2e (tol %.0e/%.0e) "
               "rerun %s\n",
               ok ? "ok  " : "FAIL", (long long)B, (long long)T, (long long)H, (long long)k->hd,
               k->causal ? "causal" : "bidir", prec, e_out, e_dq, e_dk, e_dv, tol_out, tol_grad,
               same ? "bit-identical" : "DIFFERS");
        failures += !ok;
    } else {
        failures++;
    }
    cudaFree(d_qkv), cudaFree(d_dout), cudaFree(d_out), cudaFree(d_dqkv), cudaFree(d_lse), cudaFree(d_delta);
    free(qkv), free(dout), free(ref_out), free(ref_dqkv), free(ref_lse), free(got_out), free(got_dqkv);
    free(run1), free(run2);
}

int main(void)
{
    /* the refusal needs no GPU: a head size past the kernels' registers */
    const insitra_attention_shape big = {1, 8, 2 * (INSITRA_ATTENTION_MAX_HEAD_DIM + 8), 2, false, true};
    if (insitra_fused_attention_check(&big) != INSITRA_STATUS_INVALID_ARGUMENT ||
        !strstr(insitra_last_error(), "head size")) {
        printf("FAIL: hd %d was not refused with a message naming the head size (got '%s')\n",
               INSITRA_ATTENTION_MAX_HEAD_DIM + 8, insitra_last_error());
        failures++;
    } else {
        printf("ok   refused: %s\n", insitra_last_error());
    }
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
        printf("SKIP: no usable GPU\n");
        return failures ? 1 : 77;
    }
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) check_case(&cases[i], 17u + (unsigned)i);
    printf("%s: %d of %zu cases failed\n", failures ? "FAIL" : "PASS", failures, sizeof cases / sizeof *cases);
    return failures ? 1 : 0;
}
