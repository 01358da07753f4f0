/*
 * Shared by the CUDA sources: turning CUDA, cuBLASLt and NCCL failures into
 * an insitra status with the call, the file and line, and the library's own
 * message. Everything here runs on the host.
 */
#ifndef INSITRA_CUDA_UTIL_H
#define INSITRA_CUDA_UTIL_H

#include <cublasLt.h>
#include <cuda_runtime.h>
#include <nccl.h>

extern "C" {
#include "../error.h"
}

static inline insitra_status insitra_cuda_fail(const char *what, const char *detail,
                                               const char *file, int line)
{
    return insitra_error_set(INSITRA_STATUS_DEVICE_ERROR, "%s failed at %s:%d: %s", what, file,
                             line, detail);
}

#define CUDA_TRY(call)                                                                    \
    do {                                                                                  \
        cudaError_t cuda_try_e_ = (call);                                                 \
        if (cuda_try_e_ != cudaSuccess)                                                   \
            return insitra_cuda_fail(#call, cudaGetErrorString(cuda_try_e_), __FILE__,    \
                                     __LINE__);                                           \
    } while (0)

#define CUBLAS_TRY(call)                                                                  \
    do {                                                                                  \
        cublasStatus_t cublas_try_s_ = (call);                                            \
        if (cublas_try_s_ != CUBLAS_STATUS_SUCCESS)                                       \
            return insitra_cuda_fail(#call, cublasLtGetStatusString(cublas_try_s_),         \
                                     __FILE__, __LINE__);                                 \
    } while (0)

#define NCCL_TRY(call)                                                                    \
    do {                                                                                  \
        ncclResult_t nccl_try_r_ = (call);                                                \
        if (nccl_try_r_ != ncclSuccess)                                                   \
            return insitra_cuda_fail(#call, ncclGetErrorString(nccl_try_r_), __FILE__,    \
                                     __LINE__);                                           \
    } while (0)

/* A kernel launch reports its configuration errors at once. */
#define LAUNCH_TRY() CUDA_TRY(cudaGetLastError())

static inline int insitra_ceil_div(long long a, long long b) { return (int)((a + b - 1) / b); }

#endif /* INSITRA_CUDA_UTIL_H */
