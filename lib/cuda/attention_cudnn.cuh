/*
 * Fused multi-head self-attention through cuDNN's SDPA engines, built with
 * the cuDNN backend (C) graph API: the same contract as attention.cuh
 * (qkv (B,T,3C) read in place as strided Q, K, V views, out (B,T,C) in the
 * merged layout, dqkv (B,T,3C) written in place), bf16 only.
 *
 * The operation graphs, the engine each one runs on (cuDNN's heuristics,
 * mode A) and its execution plan are made once, at create time, for one
 * shape. The workspace holds the plans' own and the graph tensors cuDNN
 * leaves to its caller: the backward's rowsum(dout * out), and the fp32 dQ
 * accumulator of the fast backward.
 *
 * Statistics: the forward writes each row's log-sum-exp (natural log, of the
 * scaled scores) to stats (B,H,T) fp32: not the base-2 values of
 * attention.cuh, so the forward and backward of one layer must both run here.
 *
 * Backward, deterministic == true: the graph that writes dQ straight from
 * the dS @ K product (cuDNN's "dP workspace" decomposition, which keeps a
 * (B,H,T,T) bf16 dP in the workspace) and engines that carry cuDNN's
 * NONDETERMINISTIC numerical note are refused. deterministic == false: the
 * fp32 dQ accumulator graph (atomics across key blocks; faster, O(T) extra
 * memory per row, but reruns are not bit-identical).
 *
 * Available where the build found cuDNN 9 (INSITRA_HAVE_CUDNN); create
 * returns INSITRA_STATUS_DEVICE_ERROR, its message naming why, where the
 * cuDNN at run time or its heuristics refuse the shape; the caller then
 * falls back to attention.cuh.
 */
#ifndef INSITRA_CUDA_ATTENTION_CUDNN_CUH
#define INSITRA_CUDA_ATTENTION_CUDNN_CUH

#include "attention.cuh"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct insitra_cudnn_attention insitra_cudnn_attention;

/* The oldest cuDNN whose SDPA graphs this module builds (run-time check). */
#define INSITRA_CUDNN_MIN_VERSION 90000

/* Builds and plans the forward and backward graphs of shape sh on the
 * current device and runs both once on zeros (cuDNN's lazy kernel loading
 * happens here, not in a step recorded as a CUDA graph; an engine failing
 * on this machine is found here). Its workspace: workspace_bytes at
 * workspace (the backend's region sized by insitra_gpu_sdpa_bytes; refused,
 * naming both sizes, if the plans need more), or with workspace NULL one
 * allocated here. *out is NULL on failure. */
insitra_status insitra_cudnn_attention_create(insitra_cudnn_attention **out, const insitra_attention_shape *sh,
                                              bool deterministic, void *workspace, int64_t workspace_bytes);
void insitra_cudnn_attention_free(insitra_cudnn_attention *a);

/* Builds both graphs of sh and plans them for the GPU that device_json
 * describes (cuDNN's device-properties JSON) without one (cuDNN 9.8+): OK
 * when cuDNN recognises both graphs as fused attention there and compiles
 * an engine's kernels for each (line names them). Loading the kernels needs
 * that GPU's driver; a missing one (CUDA's stub libcuda will do) is taken as
 * loaded. For tests on machines without a GPU: nothing runs. */
insitra_status insitra_cudnn_attention_plan_offline(const insitra_attention_shape *sh, bool deterministic,
                                                    const char *device_json, char *line, size_t line_len);

/* Bytes of workspace the module uses. */
int64_t insitra_cudnn_attention_workspace_bytes(const insitra_cudnn_attention *a);

/* A line naming the engines chosen and the cuDNN version, for the log. */
const char *insitra_cudnn_attention_describe(const insitra_cudnn_attention *a);

/* out (B,T,C), stats (B,H,T) fp32 from qkv (B,T,3C). */
insitra_status insitra_cudnn_attention_forward(insitra_cudnn_attention *a, void *out, float *stats, const void *qkv,
                                               cudaStream_t s);

/* dqkv (B,T,3C) overwritten from dout (B,T,C), the forward's qkv, out and
 * stats. */
insitra_status insitra_cudnn_attention_backward(insitra_cudnn_attention *a, void *dqkv, const void *dout,
                                                const void *qkv, const void *out, const float *stats,
                                                cudaStream_t s);

#ifdef __cplusplus
}
#endif

#endif /* INSITRA_CUDA_ATTENTION_CUDNN_CUH */
