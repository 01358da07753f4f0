/*
 * burgers1d: a 1-D viscous Burgers simulation that trains a transformer
 * surrogate of its own time step while it runs (the C twin of heat2d).
 *
 *   mpiexec -n 2 ./burgers1d [--cells=N] [--steps=N] [--config=surrogate.yaml] ...
 *
 * The solver: u_t + (u^2 / 2)_x = nu u_xx + f(x, t) on a periodic domain of
 * length 2 pi, finite volumes with the Rusanov (local Lax-Friedrichs) flux,
 * central diffusion and forward Euler at a fixed dt, on cells split over the
 * ranks of a periodic 1-D Cartesian communicator with one halo cell on each
 * side. f is a few large-scale modes with drifting phases: it keeps feeding
 * the shocks that viscosity dissipates.
 *
 * The surrogate learns one solver step on windows of W cells: a sample is W
 * tokens (cells), each carrying F_in = 4 features, u at the cell and its two
 * neighbours (the stencil of the scheme, so window edges are learnable) and
 * the forcing increment dt f; the target is u(t + dt) at the cell (F_out = 1),
 * learned as the increment of u (model.residual) on standardised features
 * (data.normalize).
 * Every push_every steps each rank pushes windows cut at random places in its
 * own cells and takes one training step. Every output_every steps rank 0
 * prints one line with the surrogate's relative L2 error on windows of the
 * current step, scored before that step is pushed, next to the error of
 * predicting no change; at the end, test_steps further steps (never pushed)
 * are predicted over every cell. Metrics go to a JSON-lines file with the
 * same records as heat2d (examples/heat2d/plot.sh draws either).
 *
 * Checkpoints (--checkpoint-dir): insitra writes step-N.h5 (the surrogate,
 * with its sample stores) every --checkpoint-every training steps and when a
 * stop is requested (SIGUSR1 or SIGTERM, the batch system's warning, or
 * checkpoint.deadline_*). This program adds its own state to the same file
 * (insitra_checkpoint_add_array): the field, the window generators and the
 * solver step, so both commit together and keep_last retires both.
 * SIGUSR1/SIGTERM make it leave the time loop after that checkpoint, say so,
 * and exit with status 0; the same command run again resumes from the
 * newest checkpoint that verifies and finishes with the uninterrupted run's
 * numbers, bit for bit (check_resume.sh checks it).
 */
#include <math.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "burgers1d.h"
#include "insitra.h"

#define CHECK(call)                                                              \
    do {                                                                         \
        insitra_status s_ = (call);                                              \
        if (s_ != INSITRA_STATUS_OK) {                                           \
            fprintf(stderr, "burgers1d: %s failed: %s\n", #call, insitra_last_error()); \
            MPI_Abort(MPI_COMM_WORLD, 1);                                        \
        }                                                                        \
    } while (0)

#define PI 3.141592653589793
enum { F_IN = 4, F_OUT = 1 };

typedef struct {
    long cells, steps, push_every, output_every, window, windows_per_push, eval_windows,
        test_steps, seed, checkpoint_every;
    double nu, cfl, forcing, max_test_error;
    const char *config, *metrics, *checkpoint_dir;
} params;

/* --key=value arguments over the defaults. */
static int parse_args(int argc, char **argv, params *p)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *eq = strchr(a, '=');
        if (strncmp(a, "--", 2) != 0 || !eq) return i;
        const size_t klen = (size_t)(eq - a - 2);
        const char *key = a + 2, *v = eq + 1;
#define INT_ARG(name, field) \
    if (klen == strlen(name) && strncmp(key, name, klen) == 0) { p->field = atol(v); continue; }
#define REAL_ARG(name, field) \
    if (klen == strlen(name) && strncmp(key, name, klen) == 0) { p->field = atof(v); continue; }
#define STR_ARG(name, field) \
    if (klen == strlen(name) && strncmp(key, name, klen) == 0) { p->field = v; continue; }
        INT_ARG("cells", cells) INT_ARG("steps", steps) INT_ARG("push-every", push_every)
        INT_ARG("output-every", output_every) INT_ARG("window", window)
        INT_ARG("windows-per-push", windows_per_push) INT_ARG("eval-windows", eval_windows)
        INT_ARG("test-steps", test_steps) INT_ARG("seed", seed)
        INT_ARG("checkpoint-every", checkpoint_every) STR_ARG("checkpoint-dir", checkpoint_dir)
        REAL_ARG("nu", nu) REAL_ARG("cfl", cfl) REAL_ARG("forcing", forcing)
        REAL_ARG("max-test-error", max_test_error)
        STR_ARG("config", config) STR_ARG("metrics", metrics)
        return i;
    }
    return 0;
}

static void decompose(domain *d, const params *p)
{
    int nranks, dims[1] = {0}, periodic[1] = {1};
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    MPI_Dims_create(nranks, 1, dims);
    MPI_Cart_create(MPI_COMM_WORLD, 1, dims, periodic, 1, &d->comm);
    MPI_Comm_rank(d->comm, &d->rank);
    MPI_Comm_size(d->comm, &d->size);
    MPI_Cart_shift(d->comm, 0, 1, &d->left, &d->right);
    d->cells = p->cells;
    const long base = p->cells / d->size, extra = p->cells % d->size;
    d->n = base + (d->rank < extra);
    d->first = d->rank * base + (d->rank < extra ? d->rank : extra);
    d->dx = 2 * PI / (double)p->cells;
    /* Fixed dt: the advective limit for |u| up to 3 and the diffusive one. */
    const double adv = d->dx / 3.0, diff = d->dx * d->dx / (2 * p->nu);
    d->dt = p->cfl * (adv < diff ? adv : diff);
    d->u = calloc((size_t)d->n + 2, sizeof(double));
    d->u_next = calloc((size_t)d->n + 2, sizeof(double));
    d->f = calloc((size_t)d->n + 2, sizeof(double));
    if (!d->u || !d->u_next || !d->f) MPI_Abort(MPI_COMM_WORLD, 1);
    for (long i = 0; i < d->n; i++) {
        const double x = (double)(d->first + i) * d->dx;
        d->u[i + 1] = sin(x) + 0.5 * sin(2 * x + 1.0);
    }
}

static void exchange_halo(domain *d)
{
    const long n = d->n;
    MPI_Sendrecv(&d->u[n], 1, MPI_DOUBLE, d->right, 1, &d->u[0], 1, MPI_DOUBLE, d->left, 1,
                 d->comm, MPI_STATUS_IGNORE);
    MPI_Sendrecv(&d->u[1], 1, MPI_DOUBLE, d->left, 2, &d->u[n + 1], 1, MPI_DOUBLE, d->right, 2,
                 d->comm, MPI_STATUS_IGNORE);
}

/* Rusanov flux between states a (left) and b (right) of f(u) = u^2 / 2. */
static double flux(double a, double b)
{
    const double s = fmax(fabs(a), fabs(b));
    return 0.25 * (a * a + b * b) - 0.5 * s * (b - a);
}

/* One step u -> u_next; f holds this step's forcing increment dt f. dt is
 * fixed, so a field faster than the bound dt was chosen for stops the run
 * (it would blow up a few steps later). */
static void advance(domain *d, const params *p, long step)
{
    exchange_halo(d);
    double umax = 0;
    for (long i = 0; i <= d->n + 1; i++) umax = fmax(umax, fabs(d->u[i]));
    if (umax * d->dt / d->dx > 1.0) {
        fprintf(stderr, "burgers1d: rank %d, step %ld: |u| = %.3g breaks the CFL condition of "
                        "dt = %.3e; lower --forcing or --cfl\n", d->rank, step, umax, d->dt);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    const double t = (double)step * d->dt, c = d->dt / d->dx, v = p->nu * d->dt / (d->dx * d->dx);
    for (long i = 1; i <= d->n; i++) {
        const double x = (double)(d->first + i - 1) * d->dx;
        d->f[i] = d->dt * p->forcing *
                  (sin(x + 0.7 * t) + 0.6 * sin(2 * x - 1.3 * t + 0.5) + 0.3 * sin(3 * x + 2.1 * t));
    }
    for (long i = 1; i <= d->n; i++) {
        const double *u = d->u;
        d->u_next[i] = u[i] - c * (flux(u[i], u[i + 1]) - flux(u[i - 1], u[i])) +
                       v * (u[i + 1] - 2 * u[i] + u[i - 1]) + d->f[i];
    }
}

/* Samples 0..count-1: x [count][W][F_IN], y [count][W][F_OUT]; windows start
 * at random cells (rng), or tile this rank's cells when rng is NULL. */
static void cut_windows(const domain *d, long W, long count, uint64_t *rng, float *x, float *y)
{
    for (long s = 0; s < count; s++) {
        long start = s * W;
        if (rng) {
            *rng = *rng * 6364136223846793005ull + 1442695040888963407ull;
            start = (long)((*rng >> 33) % (uint64_t)(d->n - W + 1));
        }
        for (long j = 0; j < W; j++) {
            const long i = start + j + 1;
            float *xt = x + (s * W + j) * F_IN;
            xt[0] = (float)d->u[i - 1];
            xt[1] = (float)d->u[i];
            xt[2] = (float)d->u[i + 1];
            xt[3] = (float)d->f[i];
            y[s * W + j] = (float)d->u_next[i];
        }
    }
}

/* Collective: sums over every rank's samples of the squared surrogate error,
 * the squared target and the squared change u(t + dt) - u(t). */
static void squared_sums(insitra_trainer *t, const domain *d, long count, long W, const float *x,
                         const float *y, float *pred, double sums[3])
{
    CHECK(insitra_predict(t, count, x, pred));
    sums[0] = sums[1] = sums[2] = 0;
    for (long k = 0; k < count * W; k++) {
        sums[0] += ((double)pred[k] - y[k]) * ((double)pred[k] - y[k]);
        sums[1] += (double)y[k] * y[k];
        sums[2] += ((double)x[k * F_IN + 1] - y[k]) * ((double)x[k * F_IN + 1] - y[k]);
    }
    MPI_Allreduce(MPI_IN_PLACE, sums, 3, MPI_DOUBLE, MPI_SUM, d->comm);
}

/* The surrogate's configuration: built in, then the user's YAML, then the
 * sample shape this program makes. */
static insitra_config *make_config(const params *p)
{
    insitra_config *cfg = NULL;
    CHECK(insitra_config_create(&cfg));
    CHECK(insitra_config_load_yaml_string(cfg,
        /* the target u(t + dt) is learned as the increment of input feature 1,
         * u(t), on features standardised with the first 2048 samples' statistics */
        "model: {d_model: 32, n_layers: 2, n_heads: 4, residual: true, residual_inputs: '1'}\n"
        "training: {batch_size: 16}\n"
        "optimizer: {lr: 4.0e-3, min_lr: 1.0e-4, weight_decay: 0.0}\n"
        "data: {capacity: 2048, normalize: frozen, normalize_samples: 2048}\n"
        /* a resumed run trains on the samples it had, not on an empty store */
        "checkpoint: {keep_last: 2, include_samples: true}\n"));
    char text[32];
    const long train_steps = p->steps / p->push_every;
    snprintf(text, sizeof text, "%ld", train_steps > 0 ? train_steps : 1);
    CHECK(insitra_config_set(cfg, "optimizer.decay_steps", text));
    snprintf(text, sizeof text, "%ld", train_steps / 10);
    CHECK(insitra_config_set(cfg, "optimizer.warmup_steps", text));
    if (p->checkpoint_dir) {
        CHECK(insitra_config_set(cfg, "checkpoint.dir", p->checkpoint_dir));
        snprintf(text, sizeof text, "%ld", p->checkpoint_every);
        CHECK(insitra_config_set(cfg, "checkpoint.every_steps", text));
    }
    if (p->config) CHECK(insitra_config_load_yaml(cfg, p->config));
    snprintf(text, sizeof text, "%ld", p->window);
    CHECK(insitra_config_set(cfg, "model.seq_len", text));
    CHECK(insitra_config_set(cfg, "model.in_features", "4"));
    CHECK(insitra_config_set(cfg, "model.out_features", "1"));
    return cfg;
}

/* The simulation's state in every checkpoint of the trainer: u_next's cells
 * as this rank's piece of the global field (the field after solver step
 * *solver_step), this rank's window generator as its element of all ranks',
 * and the solver step (rank 0's). */
static void add_state(insitra_trainer *t, const domain *d, uint64_t *rng, int64_t *solver_step, int with_rng)
{
    const int64_t cells = d->cells, first = d->first, n = d->n, mem = d->n + 2, one = 1;
    CHECK(insitra_checkpoint_add_array(t, "u", INSITRA_TYPE_FLOAT64, 1, &cells, &first, &n, &mem, &one, d->u_next));
    CHECK(insitra_checkpoint_add_scalar(t, "solver_step", INSITRA_TYPE_INT64, solver_step));
    if (with_rng) {
        const int64_t ranks = d->size, rank = d->rank, count = 1;
        CHECK(insitra_checkpoint_add_array(t, "generators", INSITRA_TYPE_INT64, 1, &ranks, &rank, &count, NULL, NULL,
                                           rng));
    }
}

/* Collective: rank 0's answer to "does dir/name exist". */
static int exists_on_rank0(const char *dir, const char *name, const domain *d)
{
    int yes = 0;
    if (d->rank == 0) {
        char path[4200];
        snprintf(path, sizeof path, "%s/%s", dir, name);
        FILE *f = fopen(path, "r");
        yes = f != NULL;
        if (f) fclose(f);
    }
    MPI_Bcast(&yes, 1, MPI_INT, 0, d->comm);
    return yes;
}

/* Collective. If dir holds a run of this program, loads its newest
 * checkpoint that verifies (the surrogate, the field, the generators, the
 * solver step) and returns 1; 0 for a new run; -1 on every rank when the run
 * cannot continue (rank 0 says why). */
static int resume(const char *dir, insitra_trainer *t, domain *d, uint64_t *rng, int64_t *solver_step,
                  int64_t *train_step)
{
    if (exists_on_rank0(dir, "burgers1d-finished", d)) {
        if (d->rank == 0)
            fprintf(stderr, "burgers1d: %s holds a finished run; remove it (or set another "
                            "--checkpoint-dir) to start a new one\n", dir);
        return -1;
    }
    if (!exists_on_rank0(dir, "latest", d)) return 0; /* a new run */
    char loaded[4096];
    insitra_status s = insitra_checkpoint_load(t, dir, loaded, sizeof loaded);
    if (s != INSITRA_STATUS_OK && strstr(insitra_last_error(), "'/user/generators' has shape")) {
        /* Written on another rank count: the windows differ from here on
         * anyway; a generator that depends on the step keeps them fresh. */
        CHECK(insitra_checkpoint_clear_arrays(t));
        add_state(t, d, rng, solver_step, 0);
        s = insitra_checkpoint_load(t, dir, loaded, sizeof loaded);
        add_state(t, d, rng, solver_step, 1);
        *rng += (uint64_t)*solver_step * 0x9E3779B97F4A7C15ull;
    }
    if (s != INSITRA_STATUS_OK) {
        if (d->rank == 0) fprintf(stderr, "burgers1d: cannot resume from %s: %s\n", dir, insitra_last_error());
        return -1;
    }
    memcpy(d->u + 1, d->u_next + 1, (size_t)d->n * sizeof(double));
    const char *name = strrchr(loaded, '/');
    long long step = -1;
    if (name && sscanf(name, "/step-%lld.h5", &step) == 1) *train_step = step;
    return 1;
}

/* Collective. Marks the run in dir finished, so that running the same
 * command again does not append to it. */
static void finish(const char *dir, const domain *d)
{
    if (d->rank == 0) {
        char path[4200];
        snprintf(path, sizeof path, "%s/burgers1d-finished", dir);
        FILE *f = fopen(path, "w");
        if (f) fclose(f);
    }
    MPI_Barrier(d->comm);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    params p = {.cells = 512, .steps = 4000, .push_every = 2, .output_every = 250, .window = 32,
                .windows_per_push = 8, .eval_windows = 64, .test_steps = 20, .seed = 2024,
                .checkpoint_every = 250, .nu = 0.004, .cfl = 0.8, .forcing = 1.0, .max_test_error = 0,
                .config = NULL, .metrics = "burgers1d.jsonl", .checkpoint_dir = NULL};
    const int bad = parse_args(argc, argv, &p);
    domain d;
    decompose(&d, &p);
    if (bad || d.n < p.window || p.push_every < 1 || p.output_every < 1 || p.test_steps < 1 ||
        p.checkpoint_every < 0) {
        if (d.rank == 0) {
            if (bad) fprintf(stderr, "burgers1d: cannot use argument '%s'\n", argv[bad]);
            fprintf(stderr, "usage: burgers1d [--cells=N] [--steps=N] [--push-every=N] "
                            "[--output-every=N] [--window=W] [--windows-per-push=N] "
                            "[--eval-windows=N] [--test-steps=N] [--nu=X] [--cfl=X] "
                            "[--forcing=X] [--seed=N] [--config=YAML] [--metrics=FILE] "
                            "[--max-test-error=X] [--checkpoint-dir=DIR] [--checkpoint-every=N]\n"
                            "(every rank needs at least --window cells; --test-steps at least 1;\n"
                            "--checkpoint-every counts training steps, 0 = only on SIGUSR1/SIGTERM)\n");
        }
        MPI_Finalize();
        return 1;
    }
    const long W = p.window;
    insitra_config *cfg = make_config(&p);
    insitra_trainer *t = NULL;
    CHECK(insitra_trainer_create(&t, cfg, d.comm));
    /* What the configuration says in the end (the YAML may set these too). */
    char ckpt_dir[4096] = "", every_text[32] = "0";
    CHECK(insitra_config_get(cfg, "checkpoint.dir", ckpt_dir, sizeof ckpt_dir));
    CHECK(insitra_config_get(cfg, "checkpoint.every_steps", every_text, sizeof every_text));
    const long ckpt_every = atol(every_text);

    const long per_push = p.windows_per_push, eval = p.eval_windows, tiles = d.n / W;
    long cap = per_push > eval ? per_push : eval;
    if (tiles > cap) cap = tiles;
    float *x = malloc((size_t)(cap * W * F_IN) * sizeof *x);
    float *y = malloc((size_t)(cap * W) * sizeof *y), *pred = malloc((size_t)(cap * W) * sizeof *pred);
    if (!x || !y || !pred) MPI_Abort(MPI_COMM_WORLD, 1);
    uint64_t rng = (uint64_t)p.seed * 7919u + (uint64_t)d.rank * 104729u + 1;

    /* A run stopped earlier continues from its newest checkpoint. */
    insitra_metrics m = {0};
    int64_t solver_step = 0; /* what u_next holds in a checkpoint train_step writes */
    long first_step = 1;
    if (ckpt_dir[0]) {
        add_state(t, &d, &rng, &solver_step, 1);
        const int resumed = resume(ckpt_dir, t, &d, &rng, &solver_step, &m.step);
        if (resumed < 0) MPI_Abort(MPI_COMM_WORLD, 1);
        if (resumed) first_step = solver_step + 1;
    }

    FILE *out = NULL;
    if (d.rank == 0) {
        printf("burgers1d with insitra %s: %ld cells on %d ranks, windows of %ld cells, "
               "dt = %.3e\n", insitra_version(), p.cells, d.size, W, d.dt);
        /* The metrics of the earlier part of a resumed run stay. */
        out = fopen(p.metrics, first_step > 1 ? "a" : "w");
        if (!out) {
            fprintf(stderr, "burgers1d: cannot open %s\n", p.metrics);
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        if (ckpt_dir[0])
            printf("checkpoints: %s, every %ld training steps and on SIGUSR1/SIGTERM\n", ckpt_dir,
                   ckpt_every);
        if (first_step > 1) {
            printf("resuming after solver step %ld (training step %lld)\n", first_step - 1,
                   (long long)m.step);
            fprintf(out, "{\"event\": \"resumed\", \"step\": %ld, \"train_steps\": %lld}\n", first_step - 1,
                    (long long)m.step);
        }
    }

    double sums[3], err[2] = {0, 0};
    int32_t stop = 0;
    long step = first_step;
    const double t0 = MPI_Wtime();
    for (; step <= p.steps; step++) {
        advance(&d, &p, step);

        if (step % p.output_every == 0) {
            /* Held out: windows of this step, scored before it is pushed. */
            cut_windows(&d, W, eval, &rng, x, y);
            squared_sums(t, &d, eval, W, x, y, pred, sums);
            err[0] = sqrt(sums[0] / sums[1]);
            err[1] = sqrt(sums[2] / sums[1]);
        }

        if (step % p.push_every == 0) {
            cut_windows(&d, W, per_push, &rng, x, y);
            CHECK(insitra_push_samples(t, per_push, x, y));
            /* train_step writes step-N.h5 if N is a multiple of
             * checkpoint.every_steps or a stop was requested: with the field
             * after this solver step (u_next) and the generators as they are. */
            solver_step = step;
            CHECK(insitra_train_step(t, &m));
            CHECK(insitra_should_stop(t, &stop));
        }

        if (step % p.output_every == 0 && d.rank == 0) {
            const double wall = MPI_Wtime() - t0;
            printf("step %6ld  train steps %5lld  loss %9.2e  lr %9.2e  surrogate rel L2 %9.2e  "
                   "(no change %9.2e)  %6.1f s\n", step, (long long)m.step, m.loss, m.lr, err[0],
                   err[1], wall);
            fprintf(out, "{\"event\": \"interval\", \"step\": %ld, \"train_steps\": %lld, "
                         "\"loss\": %.5e, \"lr\": %.5e, \"rel_l2\": %.5e, "
                         "\"no_change_rel_l2\": %.5e, \"wall_s\": %.3f}\n",
                    step, (long long)m.step, m.loss, m.lr, err[0], err[1], wall);
            fflush(out);
        }
        if (stop) break;

        memcpy(d.u + 1, d.u_next + 1, (size_t)d.n * sizeof(double));
    }

    double rel = 0;
    if (stop) {
        /* Status 0: the batch script requeues the job, which resumes here. */
        if (d.rank == 0) {
            printf("\nburgers1d: stop requested (SIGUSR1, SIGTERM or the deadline) after solver step "
                   "%ld; checkpoint at training step %lld in %s\n", step, (long long)m.step, ckpt_dir);
            fprintf(out, "{\"event\": \"stopped\", \"step\": %ld, \"train_steps\": %lld}\n", step,
                    (long long)m.step);
        }
    } else {
        /* Held-out test: further steps, never pushed, every cell of every rank. */
        double test[3] = {0, 0, 0};
        for (long k = p.steps + 1; k <= p.steps + p.test_steps; k++) {
            advance(&d, &p, k);
            cut_windows(&d, W, tiles, NULL, x, y);
            squared_sums(t, &d, tiles, W, x, y, pred, sums);
            for (int j = 0; j < 3; j++) test[j] += sums[j];
            memcpy(d.u + 1, d.u_next + 1, (size_t)d.n * sizeof(double));
        }
        rel = sqrt(test[0] / test[1]);
        const double still = sqrt(test[2] / test[1]);
        if (ckpt_dir[0]) finish(ckpt_dir, &d);
        if (d.rank == 0) {
            printf("\nheld-out relative L2 error over %ld steps (every cell): %.3e\n", p.test_steps, rel);
            printf("relative L2 error of predicting 'no change': %.3e\n", still);
            printf("relative L2 = ||prediction - solver|| / ||solver|| over every cell of the held-out "
                   "steps; 'no change' predicts u(t + dt) = u(t), the bar to beat: the surrogate is %.1fx "
                   "better\n",
                   still / (rel > 0 ? rel : 1e-300));
            printf("training steps %lld, wall time %.1f s\nmetrics: %s\n", (long long)m.step,
                   MPI_Wtime() - t0, p.metrics);
            /* Full precision: a resumed run is compared with an uninterrupted one by these. */
            fprintf(out, "{\"event\": \"held_out\", \"step\": %ld, \"test_steps\": %ld, \"rel_l2\": %.17g, "
                         "\"no_change_rel_l2\": %.17g, \"train_steps\": %lld, \"loss\": %.17g}\n",
                    p.steps, p.test_steps, rel, still, (long long)m.step, m.loss);
        }
    }
    if (out) fclose(out);

    free(x), free(y), free(pred);
    free(d.u), free(d.u_next), free(d.f);
    CHECK(insitra_trainer_free(t));
    CHECK(insitra_config_free(cfg));
    MPI_Comm_free(&d.comm);
    MPI_Finalize();
    if (stop) return 0;
    if (!isfinite(rel)) {
        fprintf(stderr, "burgers1d: the held-out error is not finite\n");
        return 1;
    }
    if (p.max_test_error > 0 && rel > p.max_test_error) {
        fprintf(stderr, "burgers1d: the held-out error %.3e is above --max-test-error=%g\n", rel,
                p.max_test_error);
        return 1;
    }
    return 0;
}
