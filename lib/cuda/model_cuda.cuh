/*
 * The model on the GPU: the same layer sequence as lib/cpu/model_cpu.c, as
 * cuBLASLt GEMMs and the kernels of kernels.cuh, in the compute type T (fp32,
 * or bf16 with fp32 parameter gradients). Attention is fused (attention.cuh):
 * per layer it keeps its input qkv and one log-sum-exp per (sample, head,
 * token), never the (B,H,T,T) probabilities.
 *
 * Parameters and gradients are not owned here: unit hooks hand out, per unit
 * (embedding, block, head), a base pointer to the unit's range of the flat
 * layout, in T for parameters and fp32 for gradients. That is the seam the
 * ZeRO stages of engine.cu use, as on the CPU.
 */
#ifndef INSITRA_CUDA_MODEL_CUH
#define INSITRA_CUDA_MODEL_CUH

#include "kernels.cuh"
#include "matmul.cuh"

extern "C" {
#include "../model.h"
}

typedef struct insitra_dev_unit_hooks {
    void *ctx;
    /* returns the unit's parameters, and in backward its gradient buffer */
    insitra_status (*begin)(void *ctx, int64_t unit, insitra_pass pass, const void **params,
                            float **grads);
    insitra_status (*end)(void *ctx, int64_t unit, insitra_pass pass);
} insitra_dev_unit_hooks;

typedef struct insitra_dev_block_acts {
    void *ln1, *qkv, *atty, *res_att, *ln2, *fch, *fch_gelu, *res_out;
    float *ln1_mean, *ln1_rstd, *ln2_mean, *ln2_rstd;
    float *att_lse;               /* (B,H,T) attention log-sum-exp (attention.cuh) */
} insitra_dev_block_acts;

typedef struct insitra_dev_model {
    insitra_model_dims dims;
    const insitra_param_layout *layout;
    int64_t max_batch;
    bool bf16;
    size_t esize;                 /* bytes per element of the compute type */
    insitra_matmul_ctx *mm;
    bool fused_gelu;              /* GELU and its derivative in the GEMM epilogues (probed at create) */
    void *memory;                 /* one device allocation for everything below */
    size_t bytes;
    insitra_dev_block_acts *blocks; /* host array of L */
    void *encoded, *lnf;
    float *lnf_mean, *lnf_rstd;
    float *out;                   /* (B,T,F_out) fp32 */
    void *x;                      /* (B,T,F_in) the micro-batch input */
    float *x_stage;               /* (B,T,F_in) fp32, for inputs copied from the host */
    float *y;                     /* (B,T,F_out) fp32 targets */
    /* scratch shared by all layers */
    void *dres, *dln, *datty, *dqkv, *dfch, *dout;
    float *att_delta;             /* (B,H,T) attention backward's rowsum(dout * out) */
    float *col_partial;
    double *reduce_partial;
} insitra_dev_model;

insitra_status insitra_dev_model_create(insitra_dev_model *m, const insitra_model_dims *d,
                                        const insitra_param_layout *layout, int64_t max_batch,
                                        bool bf16, insitra_matmul_ctx *mm);
void insitra_dev_model_free(insitra_dev_model *m);

/* Forward of B <= max_batch samples from m->x into m->out; B = 0 runs only the hooks. */
insitra_status insitra_dev_model_forward(insitra_dev_model *m, int64_t B,
                                         const insitra_dev_unit_hooks *h, cudaStream_t s);
/* Backward after forward: adds d(loss_scale * mse(out, m->y)) to the hooks' gradients. */
insitra_status insitra_dev_model_backward(insitra_dev_model *m, int64_t B, float loss_scale,
                                          const insitra_dev_unit_hooks *h, cudaStream_t s);

#endif /* INSITRA_CUDA_MODEL_CUH */
