/*
 * One attention layer, forward + backward, on one GPU (issue #13): the fused
 * kernels of lib/cuda/attention.cuh against the materialised path the model
 * ran before them (head split, batched cuBLASLt GEMMs around a row softmax
 * that keeps the (B,H,T,T) probabilities, head merge), on the same inputs.
 * bench/bench_torch_attention.py times PyTorch's SDPA on the same shape.
 *
 *   bench_gpu_attention [--B 16] [--H 12] [--T 1024] [--hd 64] [--causal] [--fp32] [--reps 50] [--cp 1]
 *
 * With --cp c > 1 it also times one rank's part of a context-parallel
 * attention of the same samples (lib/cuda/attention_block.cuh): T / c
 * queries meeting c blocks of T / c keys in the ring's order, forward (the
 * blocks, then finish) and backward (the blocks, then done), without the
 * ring's communication. The rank is the last one, which with causal sees
 * every block (the others wait for it at each step of the ring).
 *
 * Median over reps of CUDA-event times; the inputs (qkv and dout, uniform
 * random) are larger than the L2 cache at the default shape. Prints one line
 *   attention impl=fused B=.. H=.. T=.. hd=.. causal=.. precision=.. fwd_ms=.. bwd_ms=.. total_ms=..
 * tflops=.. per implementation (FLOPs counted as 4 B H T^2 hd forward and 10 B H T^2 hd backward, halved when
 * causal: the matrix products an exact attention needs, not the recomputation the fused backward does).
 */
#include <algorithm>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vector>

#include "cuda/attention.cuh"
#include "cuda/attention_block.cuh"
#ifdef INSITRA_HAVE_CUDNN
#include "cuda/attention_cudnn.cuh"
#endif
#include "cuda/kernels.cuh"
#include "cuda/matmul.cuh"

namespace {

struct args {
    int64_t B = 16, H = 12, T = 1024, hd = 64;
    bool causal = false, fp32 = false;
    int reps = 50;
    int64_t cp = 1;
};

/* The materialised attention of the model before the fused kernels, on
 * scratch of its own: q, k, v split per head, att and datt (B,H,T,T). */
template <typename T> struct materialised {
    insitra_matmul_ctx *mm;
    cudaDataType_t ab;
    int64_t B, Tn, C, H, hd;
    bool causal;
    T *qkvr = nullptr, *att = nullptr, *yr = nullptr, *dyr = nullptr, *datt = nullptr, *dqkvr = nullptr;

    insitra_status head_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const void *a, int64_t lda,
                             int64_t sa, const void *b, int64_t ldb, int64_t sb, void *d, int64_t ldd,
                             int64_t sd, float alpha)
    {
        insitra_gemm g{};
        g.ta = ta, g.tb = tb, g.m = m, g.n = n, g.k = k;
        g.a = a, g.lda = lda, g.stride_a = sa, g.b = b, g.ldb = ldb, g.stride_b = sb;
        g.d = d, g.ldd = ldd, g.stride_d = sd, g.alpha = alpha, g.beta = 0.f, g.batch = B * H;
        return insitra_matmul(mm, &g, ab, ab, 0);
    }
    insitra_status forward(T *out, const T *qkv)
    {
        const int64_t N = B * Tn;
        for (int part = 0; part < 3; part++)
            insitra_heads_split<T>(qkvr + part * N * C, qkv + part * C, 3 * C, B, Tn, H, hd, 0);
        const T *q = qkvr, *k = qkvr + N * C, *v = qkvr + 2 * N * C;
        INSITRA_CHECK(head_gemm(true, false, Tn, Tn, hd, k, hd, Tn * hd, q, hd, Tn * hd, att, Tn, Tn * Tn,
                                1.f / sqrtf((float)hd)));
        insitra_softmax_forward<T>(att, B * H * Tn, Tn, causal, 0);
        INSITRA_CHECK(head_gemm(false, false, hd, Tn, Tn, v, hd, Tn * hd, att, Tn, Tn * Tn, yr, hd, Tn * hd, 1.f));
        insitra_heads_merge<T>(out, C, yr, B, Tn, H, hd, 0);
        return INSITRA_STATUS_OK;
    }
    insitra_status backward(T *dqkv, const T *dout)
    {
        const int64_t N = B * Tn;
        const T *q = qkvr, *k = qkvr + N * C, *v = qkvr + 2 * N * C;
        T *dq = dqkvr, *dk = dqkvr + N * C, *dv = dqkvr + 2 * N * C;
        insitra_heads_split<T>(dyr, dout, C, B, Tn, H, hd, 0);
        INSITRA_CHECK(head_gemm(true, false, Tn, Tn, hd, v, hd, Tn * hd, dyr, hd, Tn * hd, datt, Tn, Tn * Tn, 1.f));
        INSITRA_CHECK(head_gemm(false, true, hd, Tn, Tn, dyr, hd, Tn * hd, att, Tn, Tn * Tn, dv, hd, Tn * hd, 1.f));
        insitra_softmax_backward<T>(datt, att, B * H * Tn, Tn, 1.f / sqrtf((float)hd), 0);
        INSITRA_CHECK(head_gemm(false, false, hd, Tn, Tn, k, hd, Tn * hd, datt, Tn, Tn * Tn, dq, hd, Tn * hd, 1.f));
        INSITRA_CHECK(head_gemm(false, true, hd, Tn, Tn, q, hd, Tn * hd, datt, Tn, Tn * Tn, dk, hd, Tn * hd, 1.f));
        for (int part = 0; part < 3; part++)
            insitra_heads_merge<T>(dqkv + part * C, 3 * C, dqkvr + part * N * C, B, Tn, H, hd, 0);
        return INSITRA_STATUS_OK;
    }
};

bool ok(insitra_status s, const char *what)
{
    if (s == INSITRA_STATUS_OK && cudaGetLastError() == cudaSuccess) return true;
    fprintf(stderr, "bench_gpu_attention: %s failed: %s\n", what, insitra_last_error());
    return false;
}

double median(std::vector<float> v)
{
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[v.size() / 2];
}

template <typename F> double time_ms(F fn, int reps)
{
    cudaEvent_t a, b;
    cudaEventCreate(&a), cudaEventCreate(&b);
    for (int i = 0; i < 3; i++) fn(); /* warm-up: module load, cuBLASLt heuristics */
    std::vector<float> ms;
    for (int i = 0; i < reps; i++) {
        cudaEventRecord(a, 0);
        fn();
        cudaEventRecord(b, 0);
        cudaEventSynchronize(b);
        float t = 0;
        cudaEventElapsedTime(&t, a, b);
        ms.push_back(t);
    }
    cudaEventDestroy(a), cudaEventDestroy(b);
    return median(ms);
}

__global__ void fill_k(float *x, int64_t n, uint32_t seed)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 15, h *= 2246822519u, h ^= h >> 13;
        x[i] = 2.f * (float)(h >> 8) / 16777216.f - 1.f;
    }
}

template <typename T> int run(const args &a)
{
    const int64_t C = a.H * a.hd, N = a.B * a.T;
    const insitra_attention_shape sh{a.B, a.T, C, a.H, a.causal, sizeof(T) == 2};
    const cudaDataType_t ab = sizeof(T) == 2 ? CUDA_R_16BF : CUDA_R_32F;
    float *stage;
    T *qkv, *dout, *out, *dqkv;
    float *lse, *delta;
    cudaMalloc(&stage, 3 * N * C * sizeof(float));
    cudaMalloc(&qkv, 3 * N * C * sizeof(T)), cudaMalloc(&dout, N * C * sizeof(T));
    cudaMalloc(&out, N * C * sizeof(T)), cudaMalloc(&dqkv, 3 * N * C * sizeof(T));
    cudaMalloc(&lse, a.B * a.H * a.T * sizeof(float)), cudaMalloc(&delta, a.B * a.H * a.T * sizeof(float));
    fill_k<<<1024, 256>>>(stage, 3 * N * C, 1u);
    insitra_convert<T, float>(qkv, stage, 3 * N * C, 0);
    fill_k<<<1024, 256>>>(stage, N * C, 2u);
    insitra_convert<T, float>(dout, stage, N * C, 0);
    if (cudaDeviceSynchronize() != cudaSuccess) {
        fprintf(stderr, "bench_gpu_attention: setup failed: %s\n", cudaGetErrorString(cudaGetLastError()));
        return 1;
    }
    const double flop = (a.causal ? 0.5 : 1.0) * 14.0 * a.B * a.H * (double)a.T * a.T * a.hd;
    const char *prec = sizeof(T) == 2 ? "bf16" : "fp32";
    const auto report = [&](const char *impl, double f, double b) {
        printf("attention impl=%s B=%lld H=%lld T=%lld hd=%lld causal=%d precision=%s fwd_ms=%.4f bwd_ms=%.4f "
               "total_ms=%.4f tflops=%.1f\n",
               impl, (long long)a.B, (long long)a.H, (long long)a.T, (long long)a.hd, (int)a.causal, prec, f, b,
               f + b, flop / ((f + b) * 1e-3) / 1e12);
        fflush(stdout);
    };

    bool good = ok(insitra_fused_attention_forward(out, lse, qkv, &sh, 0), "fused forward");
    if (good) {
        const double f = time_ms([&] { insitra_fused_attention_forward(out, lse, qkv, &sh, 0); }, a.reps);
        const double b = time_ms(
            [&] { insitra_fused_attention_backward(dqkv, delta, dout, qkv, out, lse, &sh, 0); }, a.reps);
        good = ok(INSITRA_STATUS_OK, "fused backward");
        if (good) report("fused", f, b);
    }

    if (good && a.cp > 1) {
        /* one rank's queries (the last rank's) against the blocks of every rank, packed from
         * parts of qkv; out, lse (as m), delta (as l), dqkv and dout are the buffers above */
        const int64_t Tc = a.T / a.cp, nkv = a.B * Tc * 2 * C, nq = a.B * Tc * 3 * C;
        const int64_t q = a.cp - 1;
        const bool bf = sizeof(T) == 2;
        T *kv = nullptr;
        float *dkv = nullptr;
        cudaMalloc(&kv, (size_t)(a.cp * nkv) * sizeof(T)), cudaMalloc(&dkv, (size_t)nkv * sizeof(float));
        for (int64_t j = 0; j < a.cp; j++)
            insitra_cuda_attention_kv_pack(kv + j * nkv, qkv + j * nq, a.B * Tc, C, sizeof(T), 0);
        const T *qr = qkv + q * nq;
        const auto block = [&](int64_t j) {
            return insitra_attention_block_shape{a.B, Tc, Tc, C, a.H, q * Tc, j * Tc, a.causal, bf};
        };
        const auto fwd = [&] {
            insitra_status st = INSITRA_STATUS_OK;
            for (int64_t s = 0; s < a.cp && st == INSITRA_STATUS_OK; s++) {
                const insitra_attention_block_shape b = block(q - s);
                st = insitra_cuda_attention_block_forward(out, lse, delta, qr, kv + (q - s) * nkv, &b, s == 0,
                                                          0);
            }
            if (st == INSITRA_STATUS_OK)
                st = insitra_cuda_attention_block_finish(out, lse, lse, delta, a.B, Tc, C, a.H, bf, 0);
            return st;
        };
        const auto bwd = [&] {
            cudaMemsetAsync(dqkv, 0, (size_t)nq * sizeof(T), 0);
            cudaMemsetAsync(dkv, 0, (size_t)nkv * sizeof(float), 0);
            insitra_status st = INSITRA_STATUS_OK;
            for (int64_t s = 0; s < a.cp && st == INSITRA_STATUS_OK; s++) {
                const insitra_attention_block_shape b = block(q - s);
                st = insitra_cuda_attention_block_backward(dqkv, dkv, dout, qr, kv + (q - s) * nkv, out, lse,
                                                           &b, 0);
            }
            if (st == INSITRA_STATUS_OK)
                st = insitra_cuda_attention_block_done(dqkv, dkv, a.B * Tc, C, a.H, bf, 0);
            return st;
        };
        if (ok(fwd(), "block forward") && ok(bwd(), "block backward")) {
            const double f = time_ms(fwd, a.reps), b = time_ms(bwd, a.reps);
            /* this rank's exact products: cp whole blocks, or with causal cp - 1 and half the diagonal one */
            const double pairs = (a.causal ? (double)a.cp - 0.5 : (double)a.cp) * (double)Tc * Tc;
            const double fl = 14.0 * a.B * a.H * pairs * a.hd;
            printf(
                "attention impl=blocks_cp%lld rank=%lld B=%lld H=%lld Tc=%lld hd=%lld causal=%d precision=%s "
                "fwd_ms=%.4f bwd_ms=%.4f total_ms=%.4f tflops=%.1f\n",
                (long long)a.cp, (long long)q, (long long)a.B, (long long)a.H, (long long)Tc, (long long)a.hd,
                (int)a.causal, bf ? "bf16" : "fp32", f, b, f + b, fl / ((f + b) * 1e-3) / 1e12);
            fflush(stdout);
        }
        cudaFree(kv), cudaFree(dkv);
    }

#ifdef INSITRA_HAVE_CUDNN
    /* cuDNN's SDPA (bf16), both backward graphs: its output and gradients
     * against the fused kernels' (max |difference| / max |fused value|), and
     * whether two backward runs give the same bits */
    if (good && sizeof(T) == 2) {
        const size_t on = (size_t)(N * C), dn = 3 * on;
        std::vector<T> ref_o(on), ref_d(dn), got(dn), again(dn);
        insitra_fused_attention_forward(out, lse, qkv, &sh, 0);
        insitra_fused_attention_backward(dqkv, delta, dout, qkv, out, lse, &sh, 0);
        cudaMemcpy(ref_o.data(), out, on * sizeof(T), cudaMemcpyDeviceToHost);
        cudaMemcpy(ref_d.data(), dqkv, dn * sizeof(T), cudaMemcpyDeviceToHost);
        const auto rel = [](const std::vector<T> &x, const std::vector<T> &ref, size_t n) {
            double md = 0, mr = 0;
            for (size_t i = 0; i < n; i++) {
                const double r = (double)(float)ref[i], d = fabs((double)(float)x[i] - r);
                md = d > md || d != d ? d : md, mr = fabs(r) > mr ? fabs(r) : mr;
            }
            return md / (mr > 0 ? mr : 1);
        };
        for (int det = 1; det >= 0; det--) {
            const char *impl = det ? "cudnn_det" : "cudnn_nondet";
            insitra_cudnn_attention *cu = nullptr;
            insitra_status st = insitra_cudnn_attention_create(&cu, &sh, det, nullptr, 0);
            if (st != INSITRA_STATUS_OK) {
                printf("attention impl=%s unavailable: %s\n", impl, insitra_last_error());
                continue;
            }
            printf("attention impl=%s %s\n", impl, insitra_cudnn_attention_describe(cu));
            bool fine = ok(insitra_cudnn_attention_forward(cu, out, lse, qkv, 0), "cudnn forward") &&
                        ok(insitra_cudnn_attention_backward(cu, dqkv, dout, qkv, out, lse, 0), "cudnn backward");
            if (fine) {
                cudaMemcpy(got.data(), out, on * sizeof(T), cudaMemcpyDeviceToHost);
                const double eo = rel(got, ref_o, on);
                cudaMemcpy(got.data(), dqkv, dn * sizeof(T), cudaMemcpyDeviceToHost);
                const double ed = rel(got, ref_d, dn);
                insitra_cudnn_attention_backward(cu, dqkv, dout, qkv, out, lse, 0);
                cudaMemcpy(again.data(), dqkv, dn * sizeof(T), cudaMemcpyDeviceToHost);
                const bool same = memcmp(got.data(), again.data(), dn * sizeof(T)) == 0;
                printf("attention impl=%s check out_rel_err=%.3e dqkv_rel_err=%.3e rerun_bit_identical=%d\n", impl,
                       eo, ed, (int)same);
                const double f = time_ms([&] { insitra_cudnn_attention_forward(cu, out, lse, qkv, 0); }, a.reps);
                const double b = time_ms(
                    [&] { insitra_cudnn_attention_backward(cu, dqkv, dout, qkv, out, lse, 0); }, a.reps);
                fine = ok(INSITRA_STATUS_OK, "cudnn timing");
                if (fine) report(impl, f, b);
            }
            insitra_cudnn_attention_free(cu);
        }
    }
#endif

    /* the materialised path, when its (B,H,T,T) buffers fit */
    insitra_matmul_ctx mm{};
    materialised<T> m{&mm, ab, a.B, a.T, C, a.H, a.hd, a.causal};
    const size_t tt = (size_t)(a.B * a.H * a.T * a.T) * sizeof(T), nc = (size_t)(N * C) * sizeof(T);
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    if (good && 2 * tt + 9 * nc < free_b && ok(insitra_matmul_create(&mm), "cuBLASLt")) {
        cudaMalloc(&m.qkvr, 3 * nc), cudaMalloc(&m.att, tt), cudaMalloc(&m.datt, tt);
        cudaMalloc(&m.yr, nc), cudaMalloc(&m.dyr, nc), cudaMalloc(&m.dqkvr, 3 * nc);
        if (ok(m.forward(out, qkv), "materialised forward") && ok(m.backward(dqkv, dout), "materialised backward")) {
            const double f = time_ms([&] { m.forward(out, qkv); }, a.reps);
            const double b = time_ms([&] { m.backward(dqkv, dout); }, a.reps);
            report("materialised", f, b);
        }
        cudaFree(m.qkvr), cudaFree(m.att), cudaFree(m.datt), cudaFree(m.yr), cudaFree(m.dyr), cudaFree(m.dqkvr);
        insitra_matmul_free(&mm);
    } else if (good) {
        printf("attention impl=materialised skipped: (B,H,T,T) buffers of %.1f GiB do not fit\n", 2.0 * tt / (1 << 30));
    }
    cudaFree(stage), cudaFree(qkv), cudaFree(dout), cudaFree(out), cudaFree(dqkv), cudaFree(lse), cudaFree(delta);
    return good ? 0 : 1;
}

} // namespace

int main(int argc, char **argv)
{
    args a;
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i];
        const bool has_value = i + 1 < argc;
        if (!strcmp(k, "--causal")) a.causal = true;
        else if (!strcmp(k, "--fp32")) a.fp32 = true;
        else if (has_value && !strcmp(k, "--B")) a.B = atoll(argv[++i]);
        else if (has_value && !strcmp(k, "--H")) a.H = atoll(argv[++i]);
        else if (has_value && !strcmp(k, "--T")) a.T = atoll(argv[++i]);
        else if (has_value && !strcmp(k, "--hd")) a.hd = atoll(argv[++i]);
        else if (has_value && !strcmp(k, "--reps")) a.reps = atoi(argv[++i]);
        else if (has_value && !strcmp(k, "--cp"))
            a.cp = atoll(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_gpu_attention [--B 16] [--H 12] [--T 1024] [--hd 64] [--causal] "
                            "[--fp32] [--reps 50] [--cp 1]\n");
            return 2;
        }
    }
    if (a.B < 1 || a.H < 1 || a.T < 1 || a.hd < 1 || a.reps < 1 || a.cp < 1 || a.T % a.cp != 0) {
        fprintf(stderr, "bench_gpu_attention: B, H, T, hd, reps and cp must be positive, cp dividing T\n");
        return 2;
    }
    return a.fp32 ? run<float>(a) : run<bf16>(a);
}
