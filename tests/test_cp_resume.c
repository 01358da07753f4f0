/*
 * Checkpoints resumed at another parallel.cp and parallel.dp (docs/checkpoint.md,
 * "Loading and resharding"). On 4 ranks, each case saves on the first n_w
 * ranks at cp_w after SAVE_STEPS steps and loads on the first n_r ranks at
 * cp_r:
 *   A  cp 2 (2 ranks)        -> cp 1 (1 rank)
 *   B  cp 1 (1 rank)         -> cp 4 (4 ranks)
 *   C  dp 2 x cp 2 (4 ranks) -> dp 1 x cp 2 (2 ranks)   fewer data replicas
 *   D  cp 2 (2 ranks)        -> dp 2 x cp 1 (2 ranks)   more data replicas
 *   E  dp 2 x cp 2 (4 ranks) -> dp 2 x cp 1 (2 ranks)   the same replicas
 *   F  dp 2 x cp 2 (4 ranks) -> dp 1 x cp 4 (4 ranks)   at data.capacity 10: the
 *      writers' stores wrap round, the reader keeps 10 of the 20 rows
 * After each load: the step is the saved one; the parameters are the saved
 * bits; every rank's store holds, oldest first, its slice of tokens of the
 * samples its data replica is given (its own replica's with as many
 * replicas, else an even block of all, in replica order; the newest
 * data.capacity of them), bit for bit; the
 * predictions of the same samples equal those before the save to rounding
 * (1e-5 of their scale: only the sums' order differs); with as many
 * replicas the sampler states and cursors are the writer's, and the next
 * MORE steps' losses equal the writer's own next steps to 1e-5 (the same
 * batches at another cp; with data.normalize = running the statistics'
 * counts are converted too, so a wrong conversion shows in the
 * predictions); with another replica count the steps go on from the saved
 * step with finite losses. Also refused, by name: a flipped byte in a
 * cp = 2 file's samples (the CRC of interleaved slices), a cp = 2 file made to
 * look written before format 3 (its samples are token slices), a
 * different model.seq_len, and a save whose cp group's ranks were pushed
 * different counts. The dp 2 x cp 2 file stays in cp_resume_files/ for
 * insitra-ckpt verify (the cp_resume_verify test).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt_damage.h"
#include "test_util.h"
#include "trainer.h"

enum { T = 8, F = 3, BG = 4, SAVE_STEPS = 6, MORE = 5, N_SAMPLES = (SAVE_STEPS + MORE) * BG, N_EVAL = 3 };
#define TOL 1e-5
#define DIR "cp_resume_files"

static float gx[N_SAMPLES][T][F], gy[N_SAMPLES][T][F];
static const char *const YAML = "model: {seq_len: 8, in_features: 3, out_features: 3,\n"
                                "        d_model: 16, n_layers: 2, n_heads: 2, causal: true}\n"
                                "training: {seed: 11}\n"
                                "optimizer: {lr: 1.0e-2, warmup_steps: 2, decay_steps: 20}\n"
                                "data: {capacity: 80, sampler: random, normalize: running}\n"
                                "checkpoint: {include_samples: true}\n";

/* The first n ranks of the world at cp: its communicator (MPI_COMM_NULL
 * off it) and this rank's place. */
typedef struct layout {
    int n, cp;
    MPI_Comm comm;
    int rank, dp, group, slice, Tc, per; /* per: samples each replica is pushed per step */
    int capacity;                        /* data.capacity */
} layout;

static layout make_layout(const insitra_test *tc, int n, int cp, int capacity)
{
    layout l = {.n = n, .cp = cp, .comm = MPI_COMM_NULL, .capacity = capacity};
    MPI_Comm_split(MPI_COMM_WORLD, tc->rank < n ? 0 : MPI_UNDEFINED, tc->rank, &l.comm);
    l.rank = tc->rank, l.dp = n / cp, l.group = tc->rank / cp, l.slice = tc->rank % cp, l.Tc = T / cp;
    l.per = BG / l.dp;
    return l;
}

static insitra_trainer *make(insitra_test *tc, const layout *l, const char *key, const char *value)
{
    insitra_config *cfg = insitra_test_config(tc, YAML);
    if (!cfg) return NULL;
    insitra_test_set(tc, cfg, "parallel.cp", "%d", l->cp);
    insitra_test_set(tc, cfg, "parallel.zero_stage", "1");
    insitra_test_set(tc, cfg, "training.batch_size", "%d", l->per);
    insitra_test_set(tc, cfg, "data.capacity", "%d", l->capacity);
    if (key) insitra_test_set(tc, cfg, key, "%s", value);
    insitra_trainer *t = NULL;
    EXPECT_OK(tc, insitra_trainer_create(&t, cfg, l->comm), "trainer_create");
    insitra_config_free(cfg);
    return t;
}

/* Global samples [first, first + n), this rank's token slice, into x (n, Tc, F). */
static void slice(const layout *l, float src[][T][F], int64_t first, int64_t n, float *x)
{
    for (int64_t s = 0; s < n; s++)
        memcpy(x + s * l->Tc * F, &src[first + s][l->slice * l->Tc][0], (size_t)(l->Tc * F) * sizeof(float));
}

/* Step k's pushes (each replica its share of samples [k BG, (k + 1) BG)), then the step. */
static bool push_and_step(insitra_test *tc, insitra_trainer *t, const layout *l, int k, double *loss)
{
    float x[BG * T * F], y[BG * T * F];
    slice(l, gx, k * BG + l->group * l->per, l->per, x);
    slice(l, gy, k * BG + l->group * l->per, l->per, y);
    insitra_metrics m;
    if (!EXPECT_OK(tc, insitra_push_samples(t, l->per, x, y), "push_samples") ||
        !EXPECT_OK(tc, insitra_train_step(t, &m), "train_step"))
        return false;
    EXPECT(tc, m.step == k + 1, "step %d reported as %lld", k + 1, (long long)m.step);
    *loss = m.loss;
    return true;
}

/* The predictions of samples [0, N_EVAL), whole, on every rank of the layout
 * (replica 0's ranks contribute their slices; x + 0 is exact). */
static bool predict_all(insitra_test *tc, insitra_trainer *t, const layout *l, float pred[N_EVAL][T][F])
{
    float x[N_EVAL * T * F], p[N_EVAL * T * F];
    slice(l, gx, 0, N_EVAL, x);
    if (!EXPECT_OK(tc, insitra_predict(t, N_EVAL, x, p), "predict")) return false;
    memset(pred, 0, sizeof(float) * N_EVAL * T * F);
    for (int s = 0; l->group == 0 && s < N_EVAL; s++)
        memcpy(&pred[s][l->slice * l->Tc][0], p + s * l->Tc * F, (size_t)(l->Tc * F) * sizeof(float));
    MPI_Allreduce(MPI_IN_PLACE, pred, N_EVAL * T * F, MPI_FLOAT, MPI_SUM, l->comm);
    return true;
}

/* What the writer left, known on every world rank. */
typedef struct saved {
    char path[4096];
    float *params;
    int64_t count;
    float pred[N_EVAL][T][F];
    double more[MORE];      /* the writer's own losses of the next MORE steps */
    uint64_t sampler[4][4]; /* by world rank */
    int64_t cursor[4];
} saved;

/* Trains SAVE_STEPS steps on w, saves into dir, goes on MORE steps. */
static bool write_case(insitra_test *tc, const layout *w, const char *dir, saved *out)
{
    memset(out, 0, sizeof *out);
    bool ok = true;
    uint64_t sampler[4] = {0, 0, 0, 0};
    int64_t cursor = 0;
    if (w->comm != MPI_COMM_NULL) {
        insitra_trainer *t = make(tc, w, NULL, NULL);
        ok = t != NULL;
        double loss;
        for (int k = 0; ok && k < SAVE_STEPS; k++) ok = push_and_step(tc, t, w, k, &loss);
        ok = ok && predict_all(tc, t, w, out->pred);
        if (ok) {
            out->count = t->engine.model.layout.total;
            out->params = malloc((size_t)out->count * sizeof(float));
            insitra_zero_gather_params(&t->engine.zero, out->params);
            memcpy(sampler, t->sampler.s, sizeof sampler);
            cursor = t->sample_cursor;
            ok = EXPECT_OK(tc, insitra_checkpoint_save(t, dir, out->path, sizeof out->path),
                           "checkpoint_save");
        }
        for (int k = 0; ok && k < MORE; k++) ok = push_and_step(tc, t, w, SAVE_STEPS + k, &out->more[k]);
        if (t) insitra_trainer_free(t);
    }
    /* every world rank learns the outcome and what it needs to compare */
    int all = ok ? 1 : 0;
    MPI_Allreduce(MPI_IN_PLACE, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    MPI_Allgather(sampler, 4, MPI_UINT64_T, out->sampler, 4, MPI_UINT64_T, MPI_COMM_WORLD);
    MPI_Allgather(&cursor, 1, MPI_INT64_T, out->cursor, 1, MPI_INT64_T, MPI_COMM_WORLD);
    MPI_Bcast(&out->count, 1, MPI_INT64_T, 0, MPI_COMM_WORLD);
    if (!out->params) out->params = calloc((size_t)(out->count > 0 ? out->count : 1), sizeof(float));
    MPI_Bcast(out->params, (int)out->count, MPI_FLOAT, 0, MPI_COMM_WORLD);
    MPI_Bcast(out->pred, N_EVAL * T * F, MPI_FLOAT, 0, MPI_COMM_WORLD);
    MPI_Bcast(out->more, MORE, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    MPI_Bcast(out->path, sizeof out->path, MPI_CHAR, 0, MPI_COMM_WORLD);
    return all == 1;
}

/* Samples each of the writer's replicas held at the save: its newest. */
static int64_t held(const layout *w)
{
    const int64_t pushed = (int64_t)SAVE_STEPS * w->per;
    return pushed < w->capacity ? pushed : w->capacity;
}

/* The global sample index of row `row` of the writer's file: replica h's
 * held samples, oldest first, replica after replica. */
static int64_t file_row_sample(const layout *w, int64_t row)
{
    const int64_t pushed = (int64_t)SAVE_STEPS * w->per, h = row / held(w);
    const int64_t j = pushed - held(w) + row % held(w); /* replica h's j-th push */
    return j / w->per * BG + h * w->per + j % w->per;
}

/* This rank's store after the load against the samples its replica is
 * given (the newest data.capacity of them). */
static void check_store(insitra_test *tc, const insitra_trainer *t, const layout *w, const layout *r,
                        const char *name)
{
    const int64_t total = (int64_t)w->dp * held(w);
    int64_t first = total * r->group / r->dp, n = total * (r->group + 1) / r->dp - first;
    if (w->dp == r->dp) first = (int64_t)r->group * held(w), n = held(w);
    if (n > r->capacity) first += n - r->capacity, n = r->capacity;
    if (!EXPECT(tc, t->store.count == n && t->store.x_numel == r->Tc * F,
                "%s: rank %d holds %lld samples of %lld floats, want %lld of %d", name, tc->rank,
                (long long)t->store.count, (long long)t->store.x_numel, (long long)n, r->Tc * F))
        return;
    int64_t wrong = -1;
    for (int64_t j = 0; j < n && wrong < 0; j++) {
        const int64_t s = file_row_sample(w, first + j);
        const size_t bytes = (size_t)(r->Tc * F) * sizeof(float);
        if (memcmp(t->store.x + j * r->Tc * F, &gx[s][r->slice * r->Tc][0], bytes) != 0 ||
            memcmp(t->store.y + j * r->Tc * F, &gy[s][r->slice * r->Tc][0], bytes) != 0)
            wrong = j;
    }
    EXPECT(tc, wrong < 0, "%s: rank %d: stored sample %lld is not its token slice %d of sample %lld", name,
           tc->rank, (long long)wrong, r->slice,
           wrong < 0 ? -1LL : (long long)file_row_sample(w, first + wrong));
}

/* Loads sv on r, checks what the header says, trains MORE steps. */
static void read_case(insitra_test *tc, const char *name, const layout *w, const layout *r, const saved *sv)
{
    if (r->comm == MPI_COMM_NULL) return;
    insitra_trainer *t = make(tc, r, NULL, NULL);
    if (!t) return;
    bool ok = EXPECT_OK(tc, insitra_checkpoint_load(t, sv->path, NULL, 0), name);
    ok = ok && EXPECT(tc, t->step == SAVE_STEPS, "%s: step %lld after the load", name, (long long)t->step);
    float *params = ok ? malloc((size_t)sv->count * sizeof(float)) : NULL;
    if (params) {
        insitra_zero_gather_params(&t->engine.zero, params);
        EXPECT(tc,
               t->engine.model.layout.total == sv->count &&
                   memcmp(params, sv->params, (size_t)sv->count * sizeof(float)) == 0,
               "%s: parameters after the load are not the saved bits", name);
        free(params);
    }
    if (ok) check_store(tc, t, w, r, name);
    const bool same_replicas = w->dp == r->dp;
    if (ok &&
        same_replicas) { /* the replica's sampler goes on: from the first rank of the writer's replica */
        const int from = r->group * w->cp;
        EXPECT(tc,
               memcmp(t->sampler.s, sv->sampler[from], sizeof t->sampler.s) == 0 &&
                   t->sample_cursor == sv->cursor[from],
               "%s: rank %d's sampler is not that of writer rank %d", name, tc->rank, from);
    }
    float pred[N_EVAL][T][F];
    if (ok && predict_all(tc, t, r, pred)) {
        const double e = insitra_test_max_error(&pred[0][0][0], &sv->pred[0][0][0], N_EVAL * T * F);
        EXPECT(tc, e <= TOL, "%s: predictions after the load differ from those before the save by %.3e", name,
               e);
        if (tc->rank == 0) printf("%s: predictions after the load vs before the save: %.2e\n", name, e);
    }
    double loss[MORE] = {0}, dl = 0;
    for (int k = 0; ok && k < MORE; k++) {
        ok = push_and_step(tc, t, r, SAVE_STEPS + k, &loss[k]);
        ok = ok &&
             EXPECT(tc, isfinite(loss[k]), "%s: step %d's loss is %g", name, SAVE_STEPS + k + 1, loss[k]);
        dl = fmax(dl, insitra_test_rel_error(loss[k], sv->more[k]));
    }
    if (ok && same_replicas) { /* the same batches: the writer's own next losses, to rounding */
        EXPECT(tc, dl <= TOL, "%s: the %d steps after the load differ from the writer's by %.3e", name, MORE,
               dl);
        if (tc->rank == 0) printf("%s: %d more steps vs the writer's: %.2e\n", name, MORE, dl);
    } else if (ok && tc->rank == 0) {
        printf("%s: %d more steps from step %d, finite (another replica count: fresh sampler streams)\n",
               name, MORE, SAVE_STEPS);
    }
    insitra_trainer_free(t);
}

/* A load that must fail on every rank of l, the message naming `want`. */
static void expect_refused(insitra_test *tc, const layout *l, const char *path, const char *key,
                           const char *value, const char *want, const char *what)
{
    if (l->comm == MPI_COMM_NULL) return;
    insitra_trainer *t = make(tc, l, key, value);
    if (!t) return;
    const insitra_status s = insitra_checkpoint_load(t, path, NULL, 0);
    if (EXPECT(tc, s != INSITRA_STATUS_OK && strstr(insitra_last_error(), want), "%s: status %d, '%s'", what,
               (int)s, insitra_last_error()) &&
        tc->rank == 0)
        printf("%s: %s\n", what, insitra_last_error());
    EXPECT(tc, t->step == 0, "%s: the trainer's step is %lld after a refused load", what, (long long)t->step);
    insitra_trainer_free(t);
}

/* At cp 2, the ranks of the cp group pushed 1 and 2 samples: the save fails
 * on both, naming parallel.cp, and leaves no file. */
static void check_save_mismatch(insitra_test *tc, const layout *l, const char *dir)
{
    if (l->comm == MPI_COMM_NULL) return;
    insitra_trainer *t = make(tc, l, NULL, NULL);
    if (!t) return;
    float x[2 * T * F], y[2 * T * F];
    slice(l, gx, 0, 2, x);
    slice(l, gy, 0, 2, y);
    EXPECT_OK(tc, insitra_push_samples(t, 1 + l->slice, x, y), "push_samples");
    char path[4096] = "";
    const insitra_status s = insitra_checkpoint_save(t, dir, path, sizeof path);
    if (EXPECT(tc, s != INSITRA_STATUS_OK && strstr(insitra_last_error(), "parallel.cp"),
               "save after pushes differing in a cp group: status %d, '%s'", (int)s, insitra_last_error()) &&
        tc->rank == 0)
        printf("save after pushes differing in a cp group: %s\n", insitra_last_error());
    insitra_trainer_free(t);
}

static void free_layout(layout *l)
{
    if (l->comm != MPI_COMM_NULL) MPI_Comm_free(&l->comm);
}

int main(int argc, char **argv)
{
    insitra_test tc = insitra_test_begin(&argc, &argv, "cp_resume");
    for (int i = 0; i < N_SAMPLES * T * F; i++) {
        const float v = (float)sin(0.29 * i);
        (&gx[0][0][0])[i] = 1.5f + 2.0f * v; /* off-centre, so the normalisation matters */
        (&gy[0][0][0])[i] = 0.5f * v + 0.2f * v * v;
    }
    if (!EXPECT(&tc, tc.size == 4, "run on 4 ranks, not %d", tc.size)) return insitra_test_end(&tc);
    if (tc.rank == 0) { /* a fresh directory per run: its files stay for insitra-ckpt verify */
        if (system("rm -rf " DIR) != 0) fprintf(stderr, "could not clear " DIR "\n");
        mkdir(DIR, 0755);
    }
    MPI_Barrier(MPI_COMM_WORLD);

    /* F: each writer replica's store wraps round (12 pushes, capacity 10),
     * and the reader keeps the newest 10 of the 20 stored rows */
    const struct {
        const char *name;
        int n_w, cp_w, n_r, cp_r, capacity;
    } cases[] = {
        {"A", 2, 2, 1, 1, 80}, {"B", 1, 1, 4, 4, 80}, {"C", 4, 2, 2, 2, 80},
        {"D", 2, 2, 2, 1, 80}, {"E", 4, 2, 2, 1, 80}, {"F", 4, 2, 4, 4, 10},
    };
    char a_path[4096] = "";
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        layout w = make_layout(&tc, cases[c].n_w, cases[c].cp_w, cases[c].capacity),
               r = make_layout(&tc, cases[c].n_r, cases[c].cp_r, cases[c].capacity);
        char dir[64], name[160];
        snprintf(dir, sizeof dir, DIR "/%s", cases[c].name);
        snprintf(name, sizeof name, "%s: dp %d x cp %d -> dp %d x cp %d", cases[c].name, w.dp, w.cp, r.dp,
                 r.cp);
        saved sv;
        if (write_case(&tc, &w, dir, &sv)) read_case(&tc, name, &w, &r, &sv);
        MPI_Barrier(MPI_COMM_WORLD);
        if (c == 0) snprintf(a_path, sizeof a_path, "%s", sv.path);
        free(sv.params);
        free_layout(&w);
        free_layout(&r);
    }

    /* refusals, on the first two ranks at cp 2 and one rank at cp 1 */
    layout two = make_layout(&tc, 2, 2, 80), one = make_layout(&tc, 1, 1, 80);
    expect_refused(&tc, &one, a_path, "model.seq_len", "16", "model.seq_len",
                   "seq_len 16 loading a seq_len 8 file");
    char old[4200], flipped[4200];
    snprintf(old, sizeof old, DIR "/A-format1.h5");
    snprintf(flipped, sizeof flipped, DIR "/A-flipped.h5");
    int made = 0, made_flip = 0;
    if (tc.rank ==
        0) { /* a cp 2 file made to look older than format 3, and one with a byte of a sample flipped */
        char cmd[8600];
        snprintf(cmd, sizeof cmd, "cp '%s' '%s'", a_path, old);
        made = system(cmd) == 0 && damage_downgrade(old) == 0;
        snprintf(cmd, sizeof cmd, "cp '%s' '%s'", a_path, flipped);
        made_flip = system(cmd) == 0 && damage_flip_data(flipped, "/samples/x") == 0;
    }
    MPI_Bcast(&made, 1, MPI_INT, 0, MPI_COMM_WORLD);
    MPI_Bcast(&made_flip, 1, MPI_INT, 0, MPI_COMM_WORLD);
    if (EXPECT(&tc, made_flip, "could not flip a byte of a copy of %s", a_path)) {
        expect_refused(&tc, &two, flipped, NULL, NULL, "CRC32C of '/samples/x'",
                       "a sample's byte flipped, at cp 2");
        expect_refused(&tc, &one, flipped, NULL, NULL, "CRC32C of '/samples/x'",
                       "a sample's byte flipped, at cp 1");
    }
    if (EXPECT(&tc, made, "could not make a format 1 copy of %s", a_path)) {
        expect_refused(&tc, &two, old, NULL, NULL, "token slices",
                       "format 1 file of cp 2 with samples, at cp 2");
        expect_refused(&tc, &one, old, NULL, NULL, "token slices",
                       "format 1 file of cp 2 with samples, at cp 1");
    }
    check_save_mismatch(&tc, &two, DIR "/mismatch");
    free_layout(&two);
    free_layout(&one);
    return insitra_test_end(&tc);
}
