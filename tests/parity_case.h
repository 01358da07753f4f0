/*
 * A parity fixture (tests/reference/make_parity_fixture.py) read as the case
 * it describes: the model and optimizer the reference used, one batch, and
 * what PyTorch computed from them. test_parity (CPU) and test_gpu_parity
 * (CUDA) compare against the same case. The arrays point into the fixture's
 * buffer: they live as long as the fixture.
 */
#ifndef INSITRA_TESTS_PARITY_CASE_H
#define INSITRA_TESTS_PARITY_CASE_H

#include <stdint.h>

#include "fixture.h"
#include "model.h"
#include "optimizer.h"

typedef struct parity_case {
    int64_t batch;           /* B */
    int64_t steps;           /* AdamW steps of the training series */
    insitra_model_dims dims; /* T, F_in, F_out, C, L, H, causal */
    insitra_adamw_hparams hp;
    double max_grad_norm;
    const float *x, *y;            /* (B, T, F_in), (B, T, F_out) */
    const float *out;              /* (B, T, F_out): the forward output */
    double loss;                   /* the forward loss */
    const double *train_loss;      /* [steps] */
    const double *train_grad_norm; /* [steps] */
    const double *train_lr;        /* [steps] */
} parity_case;

/* Reads every record of the case and checks that they fit together (shapes,
 * series lengths, a plausible batch, step count and causal flag). 0, or -1
 * with f->error saying what is wrong. */
int parity_case_read(fixture *f, parity_case *c);

/* Copies every "param/<name>" tensor into params at the offset of the layout
 * tensor of that name. Fails on a missing tensor, a shape mismatch, or a
 * fixture tensor the layout does not have. 0, or -1 with f->error. */
int parity_case_load_params(fixture *f, const insitra_param_layout *layout, float *params);

#endif
