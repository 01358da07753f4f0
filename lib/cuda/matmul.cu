#include "matmul.cuh"

#include "cuda_util.h"

insitra_status insitra_matmul_create(insitra_matmul_ctx *ctx)
{
    *ctx = insitra_matmul_ctx{};
    CUBLAS_TRY(cublasLtCreate(&ctx->lt));
    return INSITRA_STATUS_OK;
}

void insitra_matmul_free(insitra_matmul_ctx *ctx)
{
    if (ctx->lt) cublasLtDestroy(ctx->lt);
    *ctx = insitra_matmul_ctx{};
}

namespace {

/* The descriptors of one call, destroyed on every path out. */
struct gemm_descs {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulPreference_t pref = nullptr;
    ~gemm_descs()
    {
        if (pref) cublasLtMatmulPreferenceDestroy(pref);
        if (c) cublasLtMatrixLayoutDestroy(c);
        if (b) cublasLtMatrixLayoutDestroy(b);
        if (a) cublasLtMatrixLayoutDestroy(a);
        if (op) cublasLtMatmulDescDestroy(op);
    }
};

insitra_status layout(cublasLtMatrixLayout_t *l, cudaDataType_t type, int64_t rows, int64_t cols,
                      int64_t ld, int64_t batch, int64_t stride)
{
    CUBLAS_TRY(cublasLtMatrixLayoutCreate(l, type, (uint64_t)rows, (uint64_t)cols, ld));
    if (batch > 1) {
        const int32_t count = (int32_t)batch;
        CUBLAS_TRY(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count,
                                                    sizeof count));
        CUBLAS_TRY(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                    &stride, sizeof stride));
    }
    return INSITRA_STATUS_OK;
}

} // namespace

/* Descriptors and the heuristic's algorithm for g; *found = 0 when there is none. */
static insitra_status plan(insitra_matmul_ctx *ctx, const insitra_gemm *g, cudaDataType_t ab_type,
                           cudaDataType_t d_type, gemm_descs &ds, cublasLtMatmulHeuristicResult_t *heur,
                           int *found)
{
    CUBLAS_TRY(cublasLtMatmulDescCreate(&ds.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t ta = g->ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb = g->tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUBLAS_TRY(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CUBLAS_TRY(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    cublasLtEpilogue_t epi = g->bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    if (g->gelu == INSITRA_GELU_FORWARD)
        epi = g->bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
    else if (g->gelu == INSITRA_GELU_BACKWARD)
        epi = CUBLASLT_EPILOGUE_DGELU;
    if (epi != CUBLASLT_EPILOGUE_DEFAULT)
        CUBLAS_TRY(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
    if (g->bias)
        CUBLAS_TRY(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g->bias,
                                                  sizeof g->bias));
    if (g->gelu != INSITRA_GELU_NONE) {
        const int64_t ld = g->ldd;
        CUBLAS_TRY(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                                                  &g->aux, sizeof g->aux));
        CUBLAS_TRY(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld,
                                                  sizeof ld));
        CUBLAS_TRY(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE,
                                                  &d_type, sizeof d_type));
    }
    /* stored shapes: op(A) is m x k, op(B) is k x n */
    INSITRA_CHECK(layout(&ds.a, ab_type, g->ta ? g->k : g->m, g->ta ? g->m : g->k, g->lda, g->batch,
                         g->stride_a));
    INSITRA_CHECK(layout(&ds.b, ab_type, g->tb ? g->n : g->k, g->tb ? g->k : g->n, g->ldb, g->batch,
                         g->stride_b));
    INSITRA_CHECK(layout(&ds.c, d_type, g->m, g->n, g->ldd, g->batch, g->stride_d));

    CUBLAS_TRY(cublasLtMatmulPreferenceCreate(&ds.pref));
    CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(ds.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                    &ctx->workspace_bytes, sizeof ctx->workspace_bytes));
    *found = 0;
    CUBLAS_TRY(cublasLtMatmulAlgoGetHeuristic(ctx->lt, ds.op, ds.a, ds.b, ds.c, ds.c, ds.pref, 1,
                                              heur, found));
    return INSITRA_STATUS_OK;
}

bool insitra_matmul_supported(insitra_matmul_ctx *ctx, const insitra_gemm *g, cudaDataType_t ab_type,
                              cudaDataType_t d_type)
{
    gemm_descs ds;
    cublasLtMatmulHeuristicResult_t heur;
    int found = 0;
    const insitra_status s = plan(ctx, g, ab_type, d_type, ds, &heur, &found);
    return s == INSITRA_STATUS_OK && found > 0;
}

insitra_status insitra_matmul(insitra_matmul_ctx *ctx, const insitra_gemm *g, cudaDataType_t ab_type,
                              cudaDataType_t d_type, cudaStream_t stream)
{
    gemm_descs ds;
    cublasLtMatmulHeuristicResult_t heur;
    int found = 0;
    INSITRA_CHECK(plan(ctx, g, ab_type, d_type, ds, &heur, &found));
    if (found == 0)
        return insitra_error_set(INSITRA_STATUS_DEVICE_ERROR,
                                 "cuBLASLt has no algorithm for a GEMM m=%lld n=%lld k=%lld "
                                 "(batch %lld, transa %d, transb %d, bias %d, gelu %d)",
                                 (long long)g->m, (long long)g->n, (long long)g->k,
                                 (long long)g->batch, (int)g->ta, (int)g->tb, g->bias != nullptr,
                                 g->gelu);
    const void *c = g->c ? g->c : g->d;
    CUBLAS_TRY(cublasLtMatmul(ctx->lt, ds.op, &g->alpha, g->a, ds.a, g->b, ds.b, &g->beta, c, ds.c,
                              g->d, ds.c, &heur.algo, ctx->workspace, ctx->workspace_bytes, stream));
    return INSITRA_STATUS_OK;
}
