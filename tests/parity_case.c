/* Reading a parity fixture as a case; see parity_case.h. */
#include "parity_case.h"

#include <stdio.h>
#include <string.h>

enum { MAX_STEPS = 1000 };

int parity_case_read(fixture *f, parity_case *c)
{
    insitra_model_dims *d = &c->dims;
    *d = (insitra_model_dims){0}; /* what the fixture does not set (recompute) is off */
    int64_t causal = 0, n_loss = 0, n_norm = 0, n_lr = 0;
    if (fixture_scalar_i64(f, "dims/batch", &c->batch) ||
        fixture_scalar_i64(f, "dims/seq_len", &d->seq_len) ||
        fixture_scalar_i64(f, "dims/in_features", &d->in_features) ||
        fixture_scalar_i64(f, "dims/out_features", &d->out_features) ||
        fixture_scalar_i64(f, "dims/d_model", &d->d_model) ||
        fixture_scalar_i64(f, "dims/n_layers", &d->n_layers) ||
        fixture_scalar_i64(f, "dims/n_heads", &d->n_heads) || fixture_scalar_i64(f, "dims/causal", &causal) ||
        fixture_scalar_f64(f, "hparams/lr", &c->hp.lr) ||
        fixture_scalar_f64(f, "hparams/min_lr", &c->hp.min_lr) ||
        fixture_scalar_i64(f, "hparams/warmup_steps", &c->hp.warmup_steps) ||
        fixture_scalar_i64(f, "hparams/decay_steps", &c->hp.decay_steps) ||
        fixture_scalar_f64(f, "hparams/beta1", &c->hp.beta1) ||
        fixture_scalar_f64(f, "hparams/beta2", &c->hp.beta2) ||
        fixture_scalar_f64(f, "hparams/eps", &c->hp.eps) ||
        fixture_scalar_f64(f, "hparams/weight_decay", &c->hp.weight_decay) ||
        fixture_scalar_f64(f, "hparams/max_grad_norm", &c->max_grad_norm) ||
        fixture_scalar_i64(f, "hparams/steps", &c->steps))
        return -1;
    if (c->batch < 1 || c->steps < 1 || c->steps > MAX_STEPS || (causal != 0 && causal != 1)) {
        snprintf(f->error, sizeof f->error, "implausible fixture: batch %lld, steps %lld, causal %lld",
                 (long long)c->batch, (long long)c->steps, (long long)causal);
        return -1;
    }
    d->causal = causal != 0;
    const int64_t B = c->batch, T = d->seq_len;
    if (fixture_get_f32(f, "x", 3, (const int64_t[]){B, T, d->in_features}, &c->x) ||
        fixture_get_f32(f, "y", 3, (const int64_t[]){B, T, d->out_features}, &c->y) ||
        fixture_get_f32(f, "out", 3, (const int64_t[]){B, T, d->out_features}, &c->out) ||
        fixture_scalar_f64(f, "loss", &c->loss) ||
        fixture_get_f64(f, "train/loss", &c->train_loss, &n_loss) ||
        fixture_get_f64(f, "train/grad_norm", &c->train_grad_norm, &n_norm) ||
        fixture_get_f64(f, "train/lr", &c->train_lr, &n_lr))
        return -1;
    if (n_loss != c->steps || n_norm != c->steps || n_lr != c->steps) {
        snprintf(f->error, sizeof f->error, "train series hold %lld/%lld/%lld values, expected %lld",
                 (long long)n_loss, (long long)n_norm, (long long)n_lr, (long long)c->steps);
        return -1;
    }
    return 0;
}

int parity_case_load_params(fixture *f, const insitra_param_layout *layout, float *params)
{
    for (int64_t i = 0; i < layout->num_tensors; i++) {
        const insitra_tensor_desc *t = &layout->tensors[i];
        char key[96];
        snprintf(key, sizeof key, "param/%s", t->name);
        const float *src;
        if (fixture_get_f32(f, key, t->ndim, t->shape, &src) != 0) return -1;
        memcpy(params + t->offset, src, (size_t)t->numel * sizeof(float));
    }
    for (int64_t i = 0; i < f->num_records; i++) {
        const char *name = f->records[i].name;
        if (strncmp(name, "param/", 6) == 0 && insitra_param_layout_find(layout, name + 6) < 0) {
            snprintf(f->error, sizeof f->error, "fixture tensor '%.64s' is not in the C layout", name);
            return -1;
        }
    }
    return 0;
}
