#include "normalize.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

/* ---- the coefficients ---- */

int64_t insitra_feature_norm_bytes(int64_t f_in, int64_t f_out)
{
    return (2 * f_in + 3 * f_out) * (int64_t)sizeof(float) + f_out * (int64_t)sizeof(int32_t);
}

void insitra_feature_norm_carve(insitra_feature_norm *fm, void *mem, int64_t f_in, int64_t f_out)
{
    float *f = mem;
    fm->f_in = f_in;
    fm->f_out = f_out;
    fm->x_mean = f;
    fm->x_inv_std = f + f_in;
    fm->y_mean = f + 2 * f_in;
    fm->y_std = fm->y_mean + f_out;
    fm->y_inv_std = fm->y_std + f_out;
    fm->residual = (int32_t *)(fm->y_inv_std + f_out);
}

void insitra_feature_norm_inputs(const insitra_feature_norm *fm, int64_t N, const float *x, float *x_out)
{
    const int64_t F = fm->f_in;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < N; t++)
        for (int64_t i = 0; i < F; i++)
            x_out[t * F + i] = (x[t * F + i] - fm->x_mean[i]) * fm->x_inv_std[i];
}

void insitra_feature_norm_targets(const insitra_feature_norm *fm, int64_t N, const float *x, float *y)
{
    const int64_t Fi = fm->f_in, Fo = fm->f_out;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < N; t++)
        for (int64_t o = 0; o < Fo; o++) {
            const int32_t r = fm->residual[o];
            /* the increment first: y and x are close, their difference is exact-ish */
            const float d = r >= 0 ? y[t * Fo + o] - x[t * Fi + r] : y[t * Fo + o];
            y[t * Fo + o] = (d - fm->y_mean[o]) * fm->y_inv_std[o];
        }
}

void insitra_feature_norm_outputs(const insitra_feature_norm *fm, int64_t N, const float *x, float *y)
{
    const int64_t Fi = fm->f_in, Fo = fm->f_out;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < N; t++)
        for (int64_t o = 0; o < Fo; o++) {
            const int32_t r = fm->residual[o];
            const float d = y[t * Fo + o] * fm->y_std[o] + fm->y_mean[o];
            y[t * Fo + o] = r >= 0 ? x[t * Fi + r] + d : d;
        }
}

/* ---- moments ---- */

void insitra_moments_merge(insitra_moments *dst, const insitra_moments *src)
{
    if (src->count == 0) return;
    const double na = (double)dst->count, nb = (double)src->count, n = na + nb;
    for (int64_t f = 0; f < dst->width; f++) {
        const double delta = src->mean[f] - dst->mean[f];
        dst->mean[f] += delta * (nb / n);
        dst->m2[f] += src->m2[f] + delta * delta * (na * nb / n);
    }
    dst->count += src->count;
}

static double value_at(int64_t r, int64_t f, int64_t width, const float *a, const float *b, int64_t b_width,
                       const int32_t *map)
{
    const double v = a[r * width + f];
    return map && map[f] >= 0 ? v - (double)b[r * b_width + map[f]] : v;
}

void insitra_moments_add(insitra_moments *m, int64_t rows, const float *a, const float *b, int64_t b_width,
                         const int32_t *map)
{
    if (rows <= 0) return;
    /* The batch's moments by two passes (exact enough for any batch), one
     * feature at a time so that no scratch is needed; then Chan's merge. */
    for (int64_t f = 0; f < m->width; f++) {
        double sum = 0.0;
        for (int64_t r = 0; r < rows; r++) sum += value_at(r, f, m->width, a, b, b_width, map);
        const double mean = sum / (double)rows;
        double m2 = 0.0;
        for (int64_t r = 0; r < rows; r++) {
            const double d = value_at(r, f, m->width, a, b, b_width, map) - mean;
            m2 += d * d;
        }
        const insitra_moments one = {.width = 1, .count = rows, .mean = (double[]){mean}, .m2 = (double[]){m2}};
        insitra_moments at = {.width = 1, .count = m->count, .mean = &m->mean[f], .m2 = &m->m2[f]};
        insitra_moments_merge(&at, &one);
    }
    m->count += rows;
}

double insitra_moments_std(const insitra_moments *m, int64_t f)
{
    if (m->count == 0) return 1.0;
    double s = sqrt(m->m2[f] / (double)m->count);
    const double floor = 1e-6 * fabs(m->mean[f]);
    if (s < floor) s = floor;
    return s > 0.0 ? s : 1.0;
}

/* ---- the statistics ---- */

insitra_status insitra_residual_map_parse(const insitra_config *cfg, int32_t *map)
{
    const int64_t Fi = cfg->model.in_features, Fo = cfg->model.out_features;
    const char *text = cfg->model.residual_inputs;
    if (!cfg->model.residual) {
        for (int64_t o = 0; map && o < Fo; o++) map[o] = -1;
        return INSITRA_STATUS_OK;
    }
    if (text[0] == '\0') { /* output feature o updates input feature o */
        if (Fo > Fi)
            return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                     "config key 'model.residual': true with model.residual_inputs empty "
                                     "maps output feature o to input feature o, but model.out_features = %"
                                     PRId64 " exceeds model.in_features = %" PRId64
                                     "; list the input feature of each output in model.residual_inputs",
                                     Fo, Fi);
        for (int64_t o = 0; map && o < Fo; o++) map[o] = (int32_t)o;
        return INSITRA_STATUS_OK;
    }
    const char *p = text;
    int64_t o = 0;
    while (*p) {
        char *end;
        const long long v = strtoll(p, &end, 10);
        if (end == p || v < 0 || v >= Fi)
            return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                     "config key 'model.residual_inputs': '%s': entry %" PRId64
                                     " is not an input feature index in [0, %" PRId64 ")",
                                     text, o, Fi);
        if (o < Fo && map) map[o] = (int32_t)v;
        o++;
        while (*end == ' ') end++;
        if (*end == ',') end++;
        else if (*end != '\0')
            return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                     "config key 'model.residual_inputs': '%s' is not a comma-separated "
                                     "list of integers",
                                     text);
        p = end;
    }
    if (o != Fo)
        return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                 "config key 'model.residual_inputs': '%s' lists %" PRId64
                                 " input features, one per output feature is needed (model.out_features = %"
                                 PRId64 ")",
                                 text, o, Fo);
    return INSITRA_STATUS_OK;
}

insitra_status insitra_normalize_create(insitra_normalize *n, const insitra_config *cfg, int world)
{
    memset(n, 0, sizeof *n);
    const int64_t Fi = cfg->model.in_features, Fo = cfg->model.out_features;
    n->mode = cfg->data.normalize;
    n->freeze_samples = cfg->data.normalize_samples;
    n->freeze_steps = cfg->data.normalize_steps;
    /* a rank sees its own T / (cp tp) tokens of each sample it is pushed (parallel.cp, parallel.tp) */
    n->slices = insitra_config_token_slices(cfg);
    n->seq_len = cfg->model.seq_len / n->slices;
    n->world = world;
    /* the combination's rows: only when there is anything to combine */
    const int64_t rows = n->mode == INSITRA_NORMALIZE_OFF ? 0 : (int64_t)world + 1;
    const int64_t doubles = 4 * (Fi + Fo) + rows * (1 + 2 * Fi + 2 * Fo);
    const int64_t bytes = doubles * (int64_t)sizeof(double) + insitra_feature_norm_bytes(Fi, Fo);
    n->mem = calloc(1, (size_t)bytes);
    if (!n->mem)
        return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY,
                                 "normalisation: cannot allocate %" PRId64 " bytes of statistics", bytes);
    double *d = n->mem;
    insitra_moments *all[4] = {&n->x, &n->y, &n->x_new, &n->y_new};
    for (int k = 0; k < 4; k++) {
        const int64_t w = k % 2 == 0 ? Fi : Fo;
        *all[k] = (insitra_moments){.width = w, .count = 0, .mean = d, .m2 = d + w};
        d += 2 * w;
    }
    n->send = rows ? d : NULL;
    n->exchange = rows ? d + (1 + 2 * Fi + 2 * Fo) : NULL;
    d += rows * (1 + 2 * Fi + 2 * Fo);
    insitra_feature_norm_carve(&n->coef, d, Fi, Fo);
    insitra_normalize_update_coef(n);
    return insitra_residual_map_parse(cfg, n->coef.residual);
}

void insitra_normalize_free(insitra_normalize *n)
{
    free(n->mem);
    memset(n, 0, sizeof *n);
}

void insitra_normalize_observe(insitra_normalize *n, int64_t count, const float *x, const float *y)
{
    if (n->mode == INSITRA_NORMALIZE_OFF || n->frozen || count <= 0) return;
    const int64_t rows = count * n->seq_len, Fi = n->coef.f_in;
    insitra_moments_add(&n->x_new, rows, x, NULL, 0, NULL);
    const int32_t *map = n->coef.residual;
    bool any = false;
    for (int64_t o = 0; o < n->coef.f_out; o++) any = any || map[o] >= 0;
    insitra_moments_add(&n->y_new, rows, y, x, Fi, any ? map : NULL);
    n->samples_new += count;
}

void insitra_normalize_update_coef(insitra_normalize *n)
{
    insitra_feature_norm *c = &n->coef;
    const bool on = n->mode != INSITRA_NORMALIZE_OFF;
    for (int64_t i = 0; i < c->f_in; i++) {
        c->x_mean[i] = on ? (float)n->x.mean[i] : 0.0f;
        c->x_inv_std[i] = on ? (float)(1.0 / insitra_moments_std(&n->x, i)) : 1.0f;
    }
    for (int64_t o = 0; o < c->f_out; o++) {
        const double s = on ? insitra_moments_std(&n->y, o) : 1.0;
        c->y_mean[o] = on ? (float)n->y.mean[o] : 0.0f;
        c->y_std[o] = (float)s;
        c->y_inv_std[o] = (float)(1.0 / s);
    }
}

static void moments_clear(insitra_moments *m)
{
    m->count = 0;
    memset(m->mean, 0, (size_t)m->width * sizeof(double));
    memset(m->m2, 0, (size_t)m->width * sizeof(double));
}

void insitra_normalize_clear(insitra_normalize *n, bool combined)
{
    moments_clear(&n->x_new);
    moments_clear(&n->y_new);
    n->samples_new = 0;
    if (!combined) return;
    moments_clear(&n->x);
    moments_clear(&n->y);
    n->samples = 0;
    n->frozen = false;
    insitra_normalize_update_coef(n);
}

insitra_status insitra_normalize_combine(insitra_normalize *n, MPI_Comm comm, int64_t steps_done)
{
    if (n->mode == INSITRA_NORMALIZE_OFF || n->frozen) return INSITRA_STATUS_OK;
    const int64_t Fi = n->coef.f_in, Fo = n->coef.f_out, w = 1 + 2 * Fi + 2 * Fo;
    /* this rank's row: samples, then x's and y's mean and m2 (count = samples x T) */
    double *send = n->send;
    send[0] = (double)n->samples_new;
    memcpy(send + 1, n->x_new.mean, (size_t)Fi * sizeof(double));
    memcpy(send + 1 + Fi, n->x_new.m2, (size_t)Fi * sizeof(double));
    memcpy(send + 1 + 2 * Fi, n->y_new.mean, (size_t)Fo * sizeof(double));
    memcpy(send + 1 + 2 * Fi + Fo, n->y_new.m2, (size_t)Fo * sizeof(double));
    const int rc = MPI_Allgather(send, (int)w, MPI_DOUBLE, n->exchange, (int)w, MPI_DOUBLE, comm);
    if (rc != MPI_SUCCESS)
        return insitra_error_set(INSITRA_STATUS_MPI_ERROR, "normalisation: MPI_Allgather of the statistics failed");
    /* rank order: every rank merges the same rows in the same order, the same bits */
    for (int r = 0; r < n->world; r++) {
        const double *p = n->exchange + (int64_t)r * w;
        const int64_t samples = (int64_t)p[0], values = samples * n->seq_len;
        const insitra_moments xr = {.width = Fi, .count = values, .mean = (double *)p + 1, .m2 = (double *)p + 1 + Fi};
        const insitra_moments yr = {.width = Fo, .count = values, .mean = (double *)p + 1 + 2 * Fi,
                                    .m2 = (double *)p + 1 + 2 * Fi + Fo};
        insitra_moments_merge(&n->x, &xr);
        insitra_moments_merge(&n->y, &yr);
        n->samples += samples;
    }
    insitra_normalize_clear(n, false);
    if (n->mode == INSITRA_NORMALIZE_FROZEN &&
        ((n->freeze_samples > 0 && n->samples >= n->freeze_samples * n->slices) ||
         (n->freeze_steps > 0 && steps_done + 1 >= n->freeze_steps)))
        n->frozen = true;
    insitra_normalize_update_coef(n);
    return INSITRA_STATUS_OK;
}
