/*
 * The CPU backend's matrix products, one call for every provider the build
 * can choose (CMake option INSITRA_CPU_GEMM): a CBLAS (OpenBLAS, BLIS, or
 * whatever BLAS_LIBRARIES names) or oneDNN's dnnl_sgemm. Row-major, as the
 * layers store their tensors. Each provider threads with OpenMP and runs on
 * one thread when called inside a parallel region.
 */
#ifndef INSITRA_CPU_GEMM_H
#define INSITRA_CPU_GEMM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* c (M,N) = alpha * op(a) @ op(b) + beta * c, row-major; op(a) (M,K) is a
 * (M,K) or, with trans_a, a (K,M) read transposed; op(b) (K,N) likewise. */
void insitra_sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float *a,
                   int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc);

/* What runs the products, as found at run time. */
typedef struct insitra_gemm_info {
    char provider[64];    /* "OpenBLAS 0.3.21", "BLIS 0.9.0", "oneDNN 2.6.0", "CBLAS (unknown)" */
    char kernel[64];      /* the kernel set in use: OpenBLAS's core name, BLIS's
                           * sub-configuration, oneDNN's instruction set; "" if unknown */
    bool kernel_from_env; /* OpenBLAS: OPENBLAS_CORETYPE chose the kernel */
    int threads;          /* the provider's thread count outside parallel regions; 0 if unknown */
} insitra_gemm_info;

/* The provider of the linear layers' products (insitra_sgemm). */
void insitra_gemm_info_get(insitra_gemm_info *info);
/* The CBLAS the library links (attention's products; the linear layers' too
 * unless the build chose oneDNN). */
void insitra_blas_info_get(insitra_gemm_info *info);

/* Whether the GEMM library runs kernels narrower than the CPU's vector units
 * (OpenBLAS 0.3.21 takes CPUs it does not know for Prescott, SSE3 only, and
 * its GEMMs then run at a quarter of the rate). A pure function of its
 * arguments: provider and kernel as in insitra_gemm_info, cpu_flags the
 * space-separated flags of /proc/cpuinfo. Returns true and one sentence with
 * the fix in advice (size bytes) when they differ; false when they match or
 * either side is unknown. */
bool insitra_gemm_kernel_advice(const char *provider, const char *kernel, const char *cpu_flags, char *advice,
                                size_t size);

/* This CPU's flags line from /proc/cpuinfo into flags (size bytes); "" where
 * there is none (not Linux, not x86). */
void insitra_cpu_flags(char *flags, size_t size);

/* One warning line on stderr, from the rank that passes rank 0 and once per
 * process, when insitra_gemm_kernel_advice says so for this machine. Changes
 * nothing: the fix is the user's to apply. */
void insitra_gemm_warn_narrow(int rank);

#endif /* INSITRA_CPU_GEMM_H */
