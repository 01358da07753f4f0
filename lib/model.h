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
    bool recompute;       /* keep only each block's input; recompute the block in backward */
    int64_t cp;           /* ranks sharing one sample's tokens, each holding T / cp of them and
                           * attending through the ring (attention_ring.h); the engine sets it
                           * from parallel.cp, 0 or 1 (insitra_config_model_dims): whole samples */
    int64_t tp;           /* tensor-parallel ranks (Megatron with sequence parallelism): each
                           * holds H / tp heads and 4C / tp MLP columns of every block, and
                           * T / (cp tp) tokens of the residual stream; 0 or 1: no split */
} insitra_model_dims;

static inline int64_t insitra_model_dims_cp(const insitra_model_dims *d) { return d->cp > 1 ? d->cp : 1; }
static inline int64_t insitra_model_dims_tp(const insitra_model_dims *d) { return d->tp > 1 ? d->tp : 1; }

/* Tokens of one sample on one rank in the residual stream (embedding,
 * LayerNorms, residual adds, head): T / (cp tp). The positional table keeps
 * all T rows. */
static inline int64_t insitra_model_dims_tokens(const insitra_model_dims *d)
{
    return d->seq_len / (insitra_model_dims_cp(d) * insitra_model_dims_tp(d));
}

/* Tokens of one sample a rank's attention and MLP GEMMs see: the tp group's
 * tokens gathered, T / cp. */
static inline int64_t insitra_model_dims_attn_tokens(const insitra_model_dims *d)
{
    return d->seq_len / insitra_model_dims_cp(d);
}

/* Heads a rank computes: H / tp (each of width C / H). */
static inline int64_t insitra_model_dims_heads(const insitra_model_dims *d)
{
    return d->n_heads / insitra_model_dims_tp(d);
}

/* How a tensor is divided over the ranks of a tp group. */
typedef enum insitra_tp_split {
    INSITRA_TP_REPLICATED, /* every rank holds all of it (its gradient is summed over tp) */
    INSITRA_TP_ROWS,       /* rank r: rows [r R / tp, (r + 1) R / tp) (column-parallel fc) */
    INSITRA_TP_HEADS,      /* rank r: its heads' rows of each of q, k and v (fused qkv) */
    INSITRA_TP_COLS,       /* rank r: columns [r K / tp, (r + 1) K / tp) (row-parallel proj) */
} insitra_tp_split;

/* One named parameter tensor inside the flat buffer. */
typedef struct insitra_tensor_desc {
    char name[48];     /* e.g. "blocks.3.attn.qkv.weight" */
    int32_t ndim;      /* 1 or 2 */
    int64_t shape[2];  /* rows, cols on this rank (cols = 1 for ndim 1) */
    int64_t global_shape[2]; /* the whole tensor's: what checkpoints and exports hold */
    int64_t numel;     /* of shape */
    int64_t offset;    /* in floats from the start of the buffer */
    bool decay;        /* AdamW weight decay applies (weight matrices only) */
    insitra_tp_split split;
} insitra_tensor_desc;

/* Where tp rank r's part of a tensor (of this layout's tp) sits in the whole tensor:
 * its local rows come in n runs (3 for HEADS: q, k, v; else 1), run i being
 * local rows [local_row[i], local_row[i] + rows[i]) at global rows from
 * global_row[i], every run at global columns [col0, col0 + shape[1]). */
typedef struct insitra_tp_window {
    int n;
    int64_t local_row[3], global_row[3], rows[3];
    int64_t col0;
} insitra_tp_window;

insitra_tp_window insitra_tensor_tp_window(const insitra_tensor_desc *t, int64_t r);

/* Calls fn(ctx, local, global, count) for every contiguous run of rank r's
 * part of tensor t: element offsets within the local and the whole tensor. */
void insitra_tensor_tp_runs(const insitra_tensor_desc *t, int64_t r,
                            void (*fn)(void *ctx, int64_t local, int64_t global, int64_t count), void *ctx);

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
    int64_t global_total;        /* the whole model's parameters (= total at tp = 1) */
    int64_t first_block_tensor;  /* index of blocks.0.ln1.weight */
    int64_t block_offset0;       /* offset of block 0 */
    int64_t block_numel;         /* floats per block */
    int64_t tp;                  /* the ranks the tensors are split over (1: whole tensors) */
    int64_t num_units;           /* L + 2 */
    insitra_param_unit *units;
    int64_t max_unit_numel;
} insitra_param_layout;

/* Per-block activations kept for backward, each sized for B samples of T
 * tokens (T / cp when a sample's tokens are spread over cp ranks). "act"
 * buffers are in the backend's compute type, statistics in fp32. With
 * tp > 1, rows are Nl = B T / (cp tp) tokens of the residual stream (the
 * LayerNorm statistics, res_att, res_out) or Ng = B T / cp gathered tokens
 * (ln1, ln2 and everything between), and the widths 3C, C (atty), 4C are
 * this rank's 1 / tp of them: the gathered LayerNorm outputs are kept, so
 * backward gathers only gradients. */
typedef struct insitra_block_acts {
    void *ln1;                  /* (B,T,C)   act */
    float *ln1_mean, *ln1_rstd; /* (B,T)     */
    void *qkv;                  /* (B,T,3C)  act */
    void *att;                  /* what the backend's attention keeps for backward */
    void *atty;                 /* (B,T,C)   act, attention output before proj */
    void *res_att;              /* (B,T,C)   act, residual after attention */
    void *ln2;                  /* (B,T,C)   act */
    float *ln2_mean, *ln2_rstd; /* (B,T)     */
    void *fch;                  /* (B,T,4C)  act, fc output before GELU */
    void *fch_gelu;             /* (B,T,4C)  act */
    void *res_out;              /* (B,T,C)   act, residual after the MLP = next block's input */
} insitra_block_acts;

typedef struct insitra_acts {
    void *x;                    /* (B,T,F_in) act, the micro-batch's inputs */
    float *x_f32;               /* (B,T,F_in) inputs as given, when act is not fp32 (else NULL) */
    float *y;                   /* (B,T,F_out) targets */
    void *encoded;              /* (B,T,C) act, embedding + positions */
    insitra_block_acts *blocks;
    void *lnf;                  /* (B,T,C) act */
    float *lnf_mean, *lnf_rstd; /* (B,T) */
    float *out;                 /* (B,T,F_out) */
    void *ring;                 /* the ring attention's scratch when cp > 1, else NULL */
    /* tp > 1 (sequence parallelism): a LayerNorm's output on this rank's tokens before the
     * gather (Nl,C), a row-parallel GEMM's partial sums or a gathered gradient (Ng,C), and the
     * rank-major pieces of a collective (Ng,C); NULL at tp = 1 */
    void *tp_local, *tp_part, *tp_pieces;
    /* backward scratch, reused by every block */
    void *dres;                 /* (B,T,C)   gradient of the residual stream */
    void *dln;                  /* (B,T,C)   */
    void *datty;                /* (B,T,C)   */
    void *dqkv;                 /* (B,T,3C)  */
    void *dfch;                 /* (B,T,4C)  */
    void *dout;                 /* (B,T,F_out) */
} insitra_acts;

/* Called around every unit in forward and backward. begin hands out the
 * unit's parameters (its range of the flat layout, compute type) and, in
 * backward, its fp32 gradient buffer (same range), so a sharded trainer can
 * gather a unit just before it is used; end lets it reduce the unit's
 * gradients as soon as they are final. */
typedef enum { INSITRA_PASS_FORWARD, INSITRA_PASS_BACKWARD } insitra_pass;
typedef struct insitra_model_hooks {
    void *ctx;
    insitra_status (*unit_begin)(void *ctx, int64_t unit, insitra_pass pass, const void **params,
                                 float **grads);
    insitra_status (*unit_end)(void *ctx, int64_t unit, insitra_pass pass);
} insitra_model_hooks;

struct insitra_backend;

typedef struct insitra_model {
    insitra_model_dims dims;
    struct insitra_backend *be;       /* where it computes */
    const insitra_model_hooks *hooks; /* NULL: the full buffers below */
    int64_t max_batch;        /* B the workspace was sized for */
    insitra_param_layout layout;
    void *params;             /* layout.total, compute type, or NULL (hooks hand out units) */
    float *grads;             /* layout.total, or NULL */
    void *act_memory;         /* one buffer for every activation */
    int64_t act_bytes;
    insitra_acts a;
    /* cp > 1: the cp group (the ranks holding one sample's tokens, in token
     * order) and this rank's place in it; it holds tokens [cp_rank Tc, (cp_rank + 1) Tc) */
    struct insitra_group *cp_group;
    int64_t cp_rank;
    /* tp > 1: the tp group, this rank's place in it (its heads and columns) */
    struct insitra_group *tp_group;
    int64_t tp_rank;
    struct insitra_backend *own_be; /* the backend insitra_model_create made, if any */
} insitra_model;

/* Which slice of each sample's tokens the rank holds (insitra_config_token_slices):
 * tokens [slice T', (slice + 1) T') with T' = insitra_model_dims_tokens. */
static inline int64_t insitra_model_token_slice(const insitra_model *m)
{
    return m->cp_rank * insitra_model_dims_tp(&m->dims) + m->tp_rank;
}

/* Tensors of a model of L blocks: embed.{weight,bias}, pos_embed, twelve per
 * block, ln_f.{weight,bias}, head.{weight,bias}. */
static inline int64_t insitra_param_layout_count(int64_t n_layers)
{
    return 3 + INSITRA_BLOCK_NUM_TENSORS * n_layers + 4;
}

/* Tensor table for dims (allocates layout->tensors). */
insitra_status insitra_param_layout_create(insitra_param_layout *layout,
                                           const insitra_model_dims *dims);
void insitra_param_layout_free(insitra_param_layout *layout);

/* Index of a tensor by name, or -1. */
int64_t insitra_param_layout_find(const insitra_param_layout *layout, const char *name);

/* Bytes of the activation buffer for B samples with act_size-byte compute
 * elements, attention state of att_bytes per block, every buffer aligned to
 * align bytes (the planner and insitra_model_create_on share it). */
int64_t insitra_model_act_bytes(const insitra_model_dims *dims, int64_t max_batch, size_t act_size,
                                int64_t att_bytes, size_t align);

/* A model on be with activations for up to max_batch samples per forward,
 * and the full parameter (compute type) and gradient (fp32) buffers when
 * asked for (a sharded trainer leaves them out and hands units out through
 * hooks). Nothing is allocated after this. */
insitra_status insitra_model_create_on(insitra_model *m, struct insitra_backend *be,
                                       const insitra_model_dims *dims, int64_t max_batch,
                                       bool full_params, bool full_grads);
/* A model with full fp32 buffers on a CPU backend of its own (tests, tools). */
insitra_status insitra_model_create(insitra_model *m, const insitra_model_dims *dims,
                                    int64_t max_batch);
void insitra_model_free(insitra_model *m);

/* Deterministic initialisation of unit `unit` into unit_base (the unit's
 * range of the flat layout, host fp32): weights N(0, std) (residual
 * projections scaled by 1/sqrt(2L)), positions N(0, std), biases 0, LN
 * gains 1. Initialising units 0, 1, ... in order with one generator seeded
 * (seed, 0) gives the same parameters at every stage and world size. */
struct insitra_rng;
void insitra_param_init_unit(const insitra_param_layout *layout, int64_t unit, int64_t n_layers,
                             double std, struct insitra_rng *rng, float *unit_base);
/* Unit `unit` of a layout of whole tensors (global, tp = 1) into the slices
 * tp rank tp_rank holds of it (local: the same dims at tp > 1); both host fp32
 * unit ranges. Initialising the whole unit and slicing it gives every tp the
 * parameters tp = 1 starts from. */
void insitra_param_unit_slice(const insitra_param_layout *local, const insitra_param_layout *global, int64_t unit,
                              int64_t tp_rank, const float *global_unit, float *local_unit);
/* The whole layout into params (host fp32). */
void insitra_param_init(const insitra_param_layout *layout, int64_t n_layers, uint64_t seed,
                        double std, float *params);
/* insitra_model_create's models: their fp32 parameters from seed, gradients zeroed. */
void insitra_model_init_params(insitra_model *m, uint64_t seed, double std);
void insitra_model_zero_grads(insitra_model *m);

/* Forward (lib/model_step.c) of B <= max_batch samples from a.x (and a.y)
 * into a.out; B = 0 runs only the hooks, so every rank joins the same
 * collectives. With loss, (*loss is backend memory) += loss_scale x the sum
 * of squared errors. */
insitra_status insitra_model_forward(insitra_model *m, int64_t B, double *loss, double loss_scale);
/* Backward after forward: adds d(loss_scale * mse(a.out, a.y)) to the gradients. */
insitra_status insitra_model_backward(insitra_model *m, int64_t B, float loss_scale);

/* Host conveniences on insitra_model_create's models: x (B,T,F_in) and y
 * (B,T,F_out) copied in, forward; returns the mean squared error (0 without y). */
double insitra_model_forward_host(insitra_model *m, int64_t B, const float *x, const float *y);
void insitra_model_backward_host(insitra_model *m, int64_t B, float loss_scale);

#endif /* INSITRA_MODEL_H */
