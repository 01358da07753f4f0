/*
 * GEMMs through cuBLASLt, column-major as cuBLAS sees them:
 *   D (m x n) = alpha op(A) op(B) + beta C  [+ bias over rows]
 * with A and B in the compute type (fp32 or bf16), D and C in d_type, fp32
 * accumulation and no TF32, so fp32 runs match the CPU to rounding. A
 * row-major (rows x cols) matrix is a column-major (cols x rows) one, which
 * is how lib/cuda/model_cuda.cu states each call. Strided batches: one
 * stride per matrix, in elements.
 */
#ifndef INSITRA_CUDA_MATMUL_CUH
#define INSITRA_CUDA_MATMUL_CUH

#include <cublasLt.h>
#include <stdint.h>

#include "insitra.h"

typedef struct insitra_matmul_ctx {
    cublasLtHandle_t lt;
    void *workspace;          /* the caller's (part of the backend's workspace) */
    size_t workspace_bytes;
} insitra_matmul_ctx;

typedef struct insitra_gemm {
    bool ta, tb;                 /* op(A) = A^T, op(B) = B^T */
    int64_t m, n, k;
    const void *a; int64_t lda, stride_a;
    const void *b; int64_t ldb, stride_b;
    void *d; int64_t ldd, stride_d;
    const void *c;               /* NULL: C = D */
    float alpha, beta;
    const void *bias;            /* (m) in d_type, or NULL */
    int64_t batch;               /* 1 for a plain GEMM */
    /* GELU (tanh) epilogues: INSITRA_GELU_FORWARD stores gelu(op(A)op(B) + bias)
     * in D and the pre-activation in aux; INSITRA_GELU_BACKWARD multiplies the
     * product by gelu'(aux). aux is m x n with leading dimension ldd, in d_type. */
    int gelu;
    void *aux;
} insitra_gemm;

enum { INSITRA_GELU_NONE = 0, INSITRA_GELU_FORWARD = 1, INSITRA_GELU_BACKWARD = 2 };

insitra_status insitra_matmul_create(insitra_matmul_ctx *ctx);
void insitra_matmul_free(insitra_matmul_ctx *ctx);
insitra_status insitra_matmul(insitra_matmul_ctx *ctx, const insitra_gemm *g, cudaDataType_t ab_type,
                              cudaDataType_t d_type, cudaStream_t stream);
/* Whether cuBLASLt has an algorithm for g (nothing runs): a probe for the
 * fused epilogues, which not every version and shape supports. */
bool insitra_matmul_supported(insitra_matmul_ctx *ctx, const insitra_gemm *g, cudaDataType_t ab_type,
                              cudaDataType_t d_type);

#endif /* INSITRA_CUDA_MATMUL_CUH */
