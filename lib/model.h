/*
 * The surrogate model: a pre-LayerNorm transformer encoder for regression.
 *
 *   x (B,T,F_in) -> embed: x W_e^T + b_e + pos[t]            (B,T,C)
 *   L blocks:  r += proj(attn(qkv(LN1(r))))                    (B,T,C)
 *              r += fcproj(gelu(fc(LN2(r))))                   (B,T,C)
 *   LN_f -> head: W_h^T + b_h                                  (B,T,F_out)
 *   loss = mean((out - y)^2)
 *
 * Parameters live in one contiguous buffer, gradients in a second with the
 * same layout, activations in one workspace sized at create time for a
 * micro-batch of B samples. The layout is block-major (embedding, then each
 * block's twelve tensors together, then the final LN and head) so a block is
 * one contiguous range: per-layer gathers and shards are offset arithmetic.
 * Tensor names match the PyTorch reference model's state_dict keys.
 */
#ifndef INSITRA_MODEL_H
#define INSITRA_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "insitra.h"

typedef struct insitra_model_dims {
    int64_t seq_len;      /* T */
    int64_t in_features;  /* F_in */
    int64_t out_features; /* F_out */
    int64_t d_model;      /* C */
    int64_t n_layers;     /* L */
    int64_t n_heads;      /* H, divides C */
    bool causal;          /* token t attends only to tokens <= t */
} insitra_model_dims;

/* One named parameter tensor inside the flat buffer. */
typedef struct insitra_tensor_desc {
    char name[48];     /* e.g. "blocks.3.attn.qkv.weight" */
    int32_t ndim;      /* 1 or 2 */
    int64_t shape[2];  /* rows, cols (cols = 1 for ndim 1) */
    int64_t numel;
    int64_t offset;    /* in floats from the start of the buffer */
    bool decay;        /* AdamW weight decay applies (weight matrices only) */
} insitra_tensor_desc;

/* The twelve tensors of one block, in buffer order. */
enum insitra_block_tensor {
    INSITRA_BLOCK_LN1_W,
    INSITRA_BLOCK_LN1_B,
    INSITRA_BLOCK_QKV_W,    /* (3C, C): rows are [q | k | v], head h at rows h*C/H */
    INSITRA_BLOCK_QKV_B,    /* (3C) */
    INSITRA_BLOCK_PROJ_W,   /* (C, C) */
    INSITRA_BLOCK_PROJ_B,
    INSITRA_BLOCK_LN2_W,
    INSITRA_BLOCK_LN2_B,
    INSITRA_BLOCK_FC_W,     /* (4C, C) */
    INSITRA_BLOCK_FC_B,     /* (4C) */
    INSITRA_BLOCK_FCPROJ_W, /* (C, 4C) */
    INSITRA_BLOCK_FCPROJ_B,
    INSITRA_BLOCK_NUM_TENSORS
};

typedef struct insitra_param_layout {
    int64_t num_tensors;         /* 3 + 12 L + 4 */
    insitra_tensor_desc *tensors;
    int64_t total;               /* floats in the whole buffer */
    int64_t first_block_tensor;  /* index of blocks.0.ln1.weight */
    int64_t block_offset0;       /* offset of block 0 */
    int64_t block_numel;         /* floats per block */
} insitra_param_layout;

/* Named pointers into a parameter-shaped buffer (parameters or gradients). */
typedef struct insitra_block_view {
    float *ln1_w, *ln1_b;     /* (C) */
    float *qkv_w, *qkv_b;     /* (3C, C), (3C) */
    float *proj_w, *proj_b;   /* (C, C), (C) */
    float *ln2_w, *ln2_b;     /* (C) */
    float *fc_w, *fc_b;       /* (4C, C), (4C) */
    float *fcproj_w, *fcproj_b; /* (C, 4C), (C) */
} insitra_block_view;

typedef struct insitra_param_view {
    float *embed_w, *embed_b; /* (C, F_in), (C) */
    float *pos;               /* (T, C) */
    insitra_block_view *blocks; /* L of them */
    float *lnf_w, *lnf_b;     /* (C) */
    float *head_w, *head_b;   /* (F_out, C), (F_out) */
} insitra_param_view;

/* Per-block activations kept for backward, each sized for B samples. */
typedef struct insitra_block_acts {
    float *ln1;               /* (B,T,C)   */
    float *ln1_mean, *ln1_rstd; /* (B,T)   */
    float *qkv;               /* (B,T,3C)  */
    float *att;               /* (B,H,T,T) softmax probabilities */
    float *atty;              /* (B,T,C)   attention output before proj */
    float *res_att;           /* (B,T,C)   residual after attention */
    float *ln2;               /* (B,T,C)   */
    float *ln2_mean, *ln2_rstd; /* (B,T)   */
    float *fch;               /* (B,T,4C)  fc output before GELU */
    float *fch_gelu;          /* (B,T,4C)  */
    float *res_out;           /* (B,T,C)   residual after the MLP = next block's input */
} insitra_block_acts;

typedef struct insitra_acts {
    float *encoded;           /* (B,T,C) embedding + positions */
    insitra_block_acts *blocks;
    float *lnf;               /* (B,T,C) */
    float *lnf_mean, *lnf_rstd; /* (B,T) */
    float *out;               /* (B,T,F_out) */
    /* backward scratch, reused by every block */
    float *dres;              /* (B,T,C)   gradient of the residual stream */
    float *dln;               /* (B,T,C)   */
    float *datty;             /* (B,T,C)   */
    float *dqkv;              /* (B,T,3C)  */
    float *dfch;              /* (B,T,4C)  */
    float *datt;              /* (B,H,T,T) */
    float *dout;              /* (B,T,F_out) */
} insitra_acts;

typedef struct insitra_model {
    insitra_model_dims dims;
    int64_t max_batch;        /* B the workspace was sized for */
    insitra_param_layout layout;
    float *params;            /* layout.total floats */
    float *grads;             /* layout.total floats */
    insitra_param_view p;
    insitra_param_view g;
    float *act_memory;        /* one buffer for every activation */
    int64_t act_numel;
    insitra_acts a;
} insitra_model;

/* Tensor table for dims (allocates layout->tensors). */
insitra_status insitra_param_layout_create(insitra_param_layout *layout,
                                           const insitra_model_dims *dims);
void insitra_param_layout_free(insitra_param_layout *layout);
/* Index of a tensor by name, or -1. */
int64_t insitra_param_layout_find(const insitra_param_layout *layout, const char *name);

/* Floats the activation workspace needs for B samples. */
int64_t insitra_model_act_numel(const insitra_model_dims *dims, int64_t max_batch);

/* Allocates parameters, gradients and the activation workspace for up to
 * max_batch samples per forward. Nothing is allocated after this. */
insitra_status insitra_model_create(insitra_model *m, const insitra_model_dims *dims,
                                    int64_t max_batch);
void insitra_model_free(insitra_model *m);

/* Deterministic initialisation from seed: weights N(0, std) (residual
 * projections scaled by 1/sqrt(2L)), positions N(0, std), biases 0, LN gains 1. */
void insitra_model_init_params(insitra_model *m, uint64_t seed, double std);
void insitra_model_zero_grads(insitra_model *m);

/* Forward for B <= max_batch samples. x is (B,T,F_in). Outputs land in
 * m->a.out (B,T,F_out). With y (B,T,F_out) it returns the mean squared error,
 * accumulated in double; without y it returns 0. */
double insitra_model_forward(insitra_model *m, int64_t B, const float *x, const float *y);

/* Backward after insitra_model_forward with the same x and y: adds the
 * gradient of loss_scale * loss to m->grads (so micro-batches accumulate). */
void insitra_model_backward(insitra_model *m, int64_t B, const float *x, const float *y,
                            float loss_scale);

#endif /* INSITRA_MODEL_H */
