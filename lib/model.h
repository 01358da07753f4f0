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

/* A unit is a run of tensors that moves together: 0 is the embedding (embed,
 * pos_embed), 1..L are the blocks, L+1 the head (ln_f, head). Forward visits
 * units in order, backward in reverse; sharded stages gather and reduce one
 * unit at a time. */
typedef struct insitra_param_unit {
    int64_t first_tensor, num_tensors;
    int64_t offset, numel;       /* the unit's range of the flat buffer */
} insitra_param_unit;

typedef struct insitra_param_layout {
    int64_t num_tensors;         /* 3 + 12 L + 4 */
    insitra_tensor_desc *tensors;
    int64_t total;               /* floats in the whole buffer */
    int64_t first_block_tensor;  /* index of blocks.0.ln1.weight */
    int64_t block_offset0;       /* offset of block 0 */
    int64_t block_numel;         /* floats per block */
    int64_t num_units;           /* L + 2 */
    insitra_param_unit *units;
    int64_t max_unit_numel;
} insitra_param_layout;

/* Named pointers into a parameter-shaped buffer (parameters or gradients);
 * tensor[] is the same pointers in enum insitra_block_tensor order. */
typedef union insitra_block_view {
    struct {
        float *ln1_w, *ln1_b;       /* (C) */
        float *qkv_w, *qkv_b;       /* (3C, C), (3C) */
        float *proj_w, *proj_b;     /* (C, C), (C) */
        float *ln2_w, *ln2_b;       /* (C) */
        float *fc_w, *fc_b;         /* (4C, C), (4C) */
        float *fcproj_w, *fcproj_b; /* (C, 4C), (C) */
    };
    float *tensor[INSITRA_BLOCK_NUM_TENSORS];
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

/* Called around every unit in forward and backward, so a sharded trainer can
 * gather a unit's parameters just before it is used (and point the views at
 * them) and reduce its gradients as soon as they are final. Errors are kept
 * by the implementation; the model itself never communicates. */
typedef enum { INSITRA_PASS_FORWARD, INSITRA_PASS_BACKWARD } insitra_pass;
typedef struct insitra_model_hooks {
    void *ctx;
    void (*unit_begin)(void *ctx, int64_t unit, insitra_pass pass);
    void (*unit_end)(void *ctx, int64_t unit, insitra_pass pass);
} insitra_model_hooks;

typedef struct insitra_model {
    insitra_model_dims dims;
    const insitra_model_hooks *hooks; /* NULL: parameters and gradients stay in place */
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
/* Points the views of unit u's tensors at unit_base, a buffer holding that
 * unit's range of the flat layout (unit_base[0] = flat element units[u].offset). */
void insitra_param_view_bind_unit(insitra_param_view *v, const insitra_param_layout *layout,
                                  int64_t unit, float *unit_base);

/* Index of a tensor by name, or -1. */
int64_t insitra_param_layout_find(const insitra_param_layout *layout, const char *name);

/* Floats the activation workspace needs for B samples; INSITRA_SIZE_OVERFLOW
 * (lib/checked.h) when that count does not fit 64 bits. */
int64_t insitra_model_act_numel(const insitra_model_dims *dims, int64_t max_batch);

/* Allocates parameters, gradients and the activation workspace for up to
 * max_batch samples per forward. Nothing is allocated after this. */
insitra_status insitra_model_create(insitra_model *m, const insitra_model_dims *dims,
                                    int64_t max_batch);
/* The same, but the full parameter and/or gradient buffers are left out
 * (NULL): a sharded trainer binds the views to its own buffers per unit. */
insitra_status insitra_model_create_partial(insitra_model *m, const insitra_model_dims *dims,
                                            int64_t max_batch, bool full_params, bool full_grads);
void insitra_model_free(insitra_model *m);

/* Deterministic initialisation from seed: weights N(0, std) (residual
 * projections scaled by 1/sqrt(2L)), positions N(0, std), biases 0, LN gains 1. */
void insitra_model_init_params(insitra_model *m, uint64_t seed, double std);
/* The same for one unit into unit_base (the unit's range of the flat layout).
 * Initialising units 0, 1, ... in order with one generator reproduces
 * insitra_model_init_params exactly, so a sharded trainer can initialise a
 * unit at a time. */
struct insitra_rng;
void insitra_param_init_unit(const insitra_param_layout *layout, int64_t unit, int64_t n_layers,
                             double std, struct insitra_rng *rng, float *unit_base);
void insitra_model_zero_grads(insitra_model *m);

/* Forward for B <= max_batch samples (B = 0 runs only the hooks). x is (B,T,F_in). Outputs land in
 * m->a.out (B,T,F_out). With y (B,T,F_out) it returns the mean squared error,
 * accumulated in double; without y it returns 0. */
double insitra_model_forward(insitra_model *m, int64_t B, const float *x, const float *y);

/* Backward after insitra_model_forward with the same x and y: adds the
 * gradient of loss_scale * loss to m->grads (so micro-batches accumulate). */
void insitra_model_backward(insitra_model *m, int64_t B, const float *x, const float *y,
                            float loss_scale);

#endif /* INSITRA_MODEL_H */
