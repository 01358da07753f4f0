/* insitra_sgemm over the provider the build chose (lib/cpu/gemm.h). */
#include "gemm.h"

#if defined(INSITRA_CPU_GEMM_ONEDNN)
#include <oneapi/dnnl/dnnl.h>
#else
#include <cblas.h>
#endif

void insitra_sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float *a,
                   int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc)
{
#if defined(INSITRA_CPU_GEMM_ONEDNN)
    /* dnnl_sgemm is row-major; it fails only on arguments the layers never pass. */
    (void)dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, a, lda, b, ldb, beta, c, ldc);
#else
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                (int)M, (int)N, (int)K, alpha, a, (int)lda, b, (int)ldb, beta, c, (int)ldc);
#endif
}
