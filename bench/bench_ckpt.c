/*
 * Checkpoint benchmark for insitra: save and load bandwidth of a ~100M
 * parameter model state, and the step-time overhead of periodic checkpoints.
 *
 *   bench_ckpt io DIR [repeats=3] [zero_stage=3] [load_repeats=repeats] [key=value ...]
 *       Builds a ~100M-parameter model (d_model 1024, 8 layers, 16 heads,
 *       seq_len 16, 8 in/out features, batch 1), pushes a few samples and
 *       takes one training step, so the AdamW moments are not zero. Then
 *       `repeats` times: remove the previous checkpoint file and sync
 *       (untimed), and time insitra_checkpoint_save(DIR) of that state, which
 *       writes a new file each time. Then times
 *       insitra_checkpoint_load of the newest file `load_repeats` times as it
 *       is (its pages are still in the page cache: the save wrote them), and
 *       `load_repeats` times after rank 0 dropped the file's pages with
 *       posix_fadvise(POSIX_FADV_DONTNEED). The figure is
 *       MB/s = file size (stat) / median wall time, MB = 1e6 bytes.
 *       The default ZeRO stage is 3, so that 4 ranks on one machine each hold
 *       a quarter of the model state (the whole state is ~1.2 GB per copy).
 *
 *   bench_ckpt overhead DIR K STEPS [key=value ...]
 *       Config S of bench_step (d_model 128, 4 layers, 4 heads, seq_len 256,
 *       batch 16, 16 features): two trainers, one without checkpoints and one
 *       with checkpoint.every_steps=K into DIR, stepped alternately (so load
 *       from other processes hits both alike), 2 untimed warmup steps, then
 *       STEPS timed steps each. Each step of the checkpointing trainer is
 *       compared with the plain trainer's step just before it. Reports the
 *       median step time of both, the cost of a save (the save steps'
 *       difference minus the median difference of the other steps), and the
 *       mean overhead per step, save steps included (the median difference
 *       plus the saves' cost spread over all steps). The plain difference of
 *       the two means is printed as well (mean_diff_ms); one step slowed by
 *       another process moves it.
 *
 * Times are MPI_Wtime between two barriers, so they are the slowest rank's.
 * Extra key=value arguments go to insitra_config_set after the mode's keys.
 * Each mode prints one line of key=value pairs last, starting with "ckpt";
 * bench/run_ckpt_bench.sh reads it.
 */
#define _GNU_SOURCE /* mincore */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <mpi.h>

#include "insitra.h"

typedef struct model_config {
    int64_t seq_len, in_features, out_features, d_model, n_layers, n_heads, batch_size;
} model_config;

/* ~100.8M parameters: 8 blocks of 12 C^2 + 13 C with C = 1024, plus embeddings. */
static const model_config config_io = {16, 8, 8, 1024, 8, 16, 1};
/* Config S of bench_step.c. */
static const model_config config_s = {256, 16, 16, 128, 4, 4, 16};

enum { IO_SAMPLES = 8, OVERHEAD_SAMPLES = 64, OVERHEAD_WARMUP = 2 };

static int rank_ = 0, nranks_ = 1;

static int compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of n values, from a sorted copy (v keeps its order). */
static double median(const double *v, int n)
{
    double *s = malloc((size_t)n * sizeof *s);
    if (!s)
        return NAN;
    memcpy(s, v, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, compare_double);
    double m = n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
    free(s);
    return m;
}

static double min_of(const double *v, int n)
{
    double m = v[0];
    for (int i = 1; i < n; i++)
        m = v[i] < m ? v[i] : m;
    return m;
}

static double max_of(const double *v, int n)
{
    double m = v[0];
    for (int i = 1; i < n; i++)
        m = v[i] > m ? v[i] : m;
    return m;
}

/* "a,b,c" with 3 decimals, for the per-repeat times. */
static void join(char *buf, size_t size, const double *v, int n)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < n && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, "%s%.3f", i ? "," : "", v[i]);
}

static float next_uniform(uint64_t *state)
{
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((*state >> 40) * (1.0 / 8388608.0) - 1.0);
}

static int check(insitra_status st, const char *what)
{
    if (st == INSITRA_STATUS_OK)
        return 0;
    fprintf(stderr, "bench_ckpt: %s failed: %s: %s\n", what, insitra_status_name(st),
            insitra_last_error());
    return 1;
}

static int set_int(insitra_config *cfg, const char *key, int64_t value)
{
    char text[32];
    snprintf(text, sizeof text, "%lld", (long long)value);
    return check(insitra_config_set(cfg, key, text), key);
}

static int set_str(insitra_config *cfg, const char *key, const char *value)
{
    return check(insitra_config_set(cfg, key, value), key);
}

static int apply_overrides(insitra_config *cfg, int n, char **kv)
{
    for (int i = 0; i < n; i++) {
        char key[128];
        const char *eq = strchr(kv[i], '=');
        size_t len = eq ? (size_t)(eq - kv[i]) : 0;
        if (!eq || len == 0 || len >= sizeof key) {
            fprintf(stderr, "bench_ckpt: expected key=value, got '%s'\n", kv[i]);
            return 1;
        }
        memcpy(key, kv[i], len);
        key[len] = '\0';
        if (check(insitra_config_set(cfg, key, eq + 1), kv[i]))
            return 1;
    }
    return 0;
}

static int set_model(insitra_config *cfg, const model_config *mc, int64_t capacity)
{
    int err = set_int(cfg, "model.seq_len", mc->seq_len);
    err = err || set_int(cfg, "model.in_features", mc->in_features);
    err = err || set_int(cfg, "model.out_features", mc->out_features);
    err = err || set_int(cfg, "model.d_model", mc->d_model);
    err = err || set_int(cfg, "model.n_layers", mc->n_layers);
    err = err || set_int(cfg, "model.n_heads", mc->n_heads);
    err = err || set_int(cfg, "training.batch_size", mc->batch_size);
    err = err || set_int(cfg, "data.capacity", capacity);
    /* The benchmark sends no signals; leave the process's handlers alone. */
    err = err || set_str(cfg, "checkpoint.signals", "false");
    return err;
}

/* n synthetic samples: x uniform in [-1, 1), y = sin(3x) feature-wise. */
static int push_synthetic(insitra_trainer *t, int64_t n, uint64_t seed)
{
    int64_t T, fi, fo;
    if (check(insitra_trainer_sample_shape(t, &T, &fi, &fo), "insitra_trainer_sample_shape"))
        return 1;
    float *x = malloc((size_t)(n * T * fi) * sizeof *x);
    float *y = malloc((size_t)(n * T * fo) * sizeof *y);
    int err = 1;
    if (x && y) {
        uint64_t state = seed;
        for (int64_t i = 0; i < n * T * fi; i++)
            x[i] = next_uniform(&state);
        for (int64_t s = 0; s < n * T; s++)
            for (int64_t f = 0; f < fo; f++)
                y[s * fo + f] = sinf(3.0f * x[s * fi + f % fi]);
        err = check(insitra_push_samples(t, n, x, y), "insitra_push_samples");
    } else {
        fprintf(stderr, "bench_ckpt: out of memory for samples\n");
    }
    free(x);
    free(y);
    return err;
}

/* 1 on every rank if err is set on any rank: all ranks take the same branch. */
static int agree(int err)
{
    int any = 0;
    MPI_Allreduce(&err, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return any;
}

/* Rank 0: the fraction of the file's pages in the page cache. */
static double resident_fraction(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return NAN;
    struct stat st;
    double resident = NAN;
    if (fstat(fd, &st) == 0 && st.st_size > 0) {
        void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
        if (map != MAP_FAILED) {
            const long page = sysconf(_SC_PAGESIZE);
            const size_t pages = ((size_t)st.st_size + (size_t)page - 1) / (size_t)page;
            unsigned char *vec = malloc(pages);
            if (vec && mincore(map, (size_t)st.st_size, vec) == 0) {
                size_t in = 0;
                for (size_t i = 0; i < pages; i++)
                    in += vec[i] & 1;
                resident = (double)in / (double)pages;
            }
            free(vec);
            munmap(map, (size_t)st.st_size);
        }
    }
    close(fd);
    return resident;
}

/* Rank 0: drops the file's pages from the page cache (they are clean: the
 * save fsynced them). Returns the fraction of pages still resident after. */
static double drop_cached_pages(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return NAN;
    int rc = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    if (rc != 0)
        fprintf(stderr, "bench_ckpt: posix_fadvise('%s'): %s\n", path, strerror(rc));
    close(fd);
    return resident_fraction(path);
}

/* Rank 0: 1 if dir holds checkpoint files already. Retention keeps the
 * highest step numbers, so an older run's files would change what a save
 * keeps; the benchmark wants a directory of its own. */
static int has_checkpoints(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int found = 0;
    for (struct dirent *e; !found && (e = readdir(d));)
        found = strncmp(e->d_name, "step-", 5) == 0 || strcmp(e->d_name, "latest") == 0;
    closedir(d);
    return found;
}

/* With INSITRA_BENCH_CKPT_VERBOSE set, rank 0 prints CLOCK_MONOTONIC at the
 * edges of each phase (for `perf record -k CLOCK_MONOTONIC` and
 * `perf report --time`). */
static void mark(const char *what)
{
    if (rank_ != 0 || !getenv("INSITRA_BENCH_CKPT_VERBOSE"))
        return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    fprintf(stderr, "bench_ckpt: %s at %lld.%06ld\n", what, (long long)ts.tv_sec, ts.tv_nsec / 1000);
}

static double mb_per_s(double bytes, double seconds)
{
    return seconds > 0 ? bytes / seconds * 1e-6 : 0.0;
}

static int bench_io(const char *dir, int repeats, int stage, int loads, int n_over, char **over)
{
    insitra_config *cfg = NULL;
    insitra_trainer *t = NULL;
    if (agree(rank_ == 0 && has_checkpoints(dir))) {
        if (rank_ == 0)
            fprintf(stderr, "bench_ckpt: '%s' holds checkpoint files already; give a new or "
                            "empty directory\n", dir);
        return 1;
    }
    int err = check(insitra_config_create(&cfg), "insitra_config_create");
    err = err || set_model(cfg, &config_io, IO_SAMPLES);
    err = err || set_int(cfg, "parallel.zero_stage", stage);
    /* Only the newest file is kept; the benchmark also removes the previous
     * one itself, untimed, before each save. */
    err = err || set_int(cfg, "checkpoint.keep_last", 1);
    err = err || apply_overrides(cfg, n_over, over);
    double t0 = MPI_Wtime();
    err = err || check(insitra_trainer_create(&t, cfg, MPI_COMM_WORLD), "insitra_trainer_create");
    const double create_s = MPI_Wtime() - t0;
    insitra_config_free(cfg);
    int64_t params = 0;
    insitra_memory_usage mem = {0};
    err = err || check(insitra_trainer_num_parameters(t, &params), "insitra_trainer_num_parameters");
    err = err || check(insitra_memory_report(t, &mem), "insitra_memory_report");
    err = err || push_synthetic(t, IO_SAMPLES, 1000u + (uint64_t)rank_);
    if (agree(err)) {
        insitra_trainer_free(t);
        return 1;
    }
    int64_t state_local = mem.parameter_bytes + mem.optimizer_bytes, state_max = 0, total_max = 0;
    MPI_Allreduce(&state_local, &state_max, 1, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD);
    MPI_Allreduce(&mem.total_bytes, &total_max, 1, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD);
    if (rank_ == 0)
        fprintf(stderr,
                "bench_ckpt: %lld parameters, ZeRO stage %d on %d ranks; per rank (max): "
                "parameters+moments %.1f MB, everything %.1f MB; trainer created in %.1f s\n",
                (long long)params, stage, nranks_, state_max * 1e-6, total_max * 1e-6, create_s);

    /* Held-out inputs to check that a load restores the saved model. */
    int64_t T, fi, fo;
    insitra_trainer_sample_shape(t, &T, &fi, &fo);
    const int64_t n_eval = 2;
    float *ex = malloc((size_t)(n_eval * T * fi) * sizeof *ex);
    float *ey = malloc((size_t)(n_eval * T * fo) * sizeof *ey);
    double *save_s = malloc((size_t)repeats * sizeof *save_s);
    double *cached_s = malloc((size_t)loads * sizeof *cached_s);
    double *dropped_s = malloc((size_t)loads * sizeof *dropped_s);
    double *resident = malloc((size_t)loads * sizeof *resident);
    if (!ex || !ey || !save_s || !cached_s || !dropped_s || !resident) {
        fprintf(stderr, "bench_ckpt: out of memory\n");
        err = 1;
    }
    if (!err) {
        uint64_t state = 99u;
        for (int64_t i = 0; i < n_eval * T * fi; i++)
            ex[i] = next_uniform(&state);
        for (int64_t i = 0; i < n_eval * T * fo; i++)
            ey[i] = 0.5f * next_uniform(&state);
    }

    /* One step, so the AdamW moments hold real values. */
    insitra_metrics m;
    t0 = MPI_Wtime();
    err = agree(err) || check(insitra_train_step(t, &m), "insitra_train_step");
    const double step_s = MPI_Wtime() - t0;

    /* Saves of that state. A training step of this model takes seconds here,
     * so instead of a step between saves the previous file is removed
     * (untimed): every save creates a new file of new blocks, and no save
     * pays for unlinking an older one. */
    char path[4096] = "";
    for (int r = 0; r < repeats && !err; r++) {
        if (rank_ == 0) {
            if (path[0])
                unlink(path);
            sync(); /* start every save with no dirty pages anywhere */
        }
        MPI_Barrier(MPI_COMM_WORLD);
        mark("save begins");
        t0 = MPI_Wtime();
        err = check(insitra_checkpoint_save(t, dir, path, sizeof path), "insitra_checkpoint_save");
        MPI_Barrier(MPI_COMM_WORLD);
        save_s[r] = MPI_Wtime() - t0;
        mark("save ends");
    }
    double loss_saved = NAN, loss_loaded = NAN;
    err = err || check(insitra_evaluate(t, n_eval, ex, ey, &loss_saved), "insitra_evaluate");

    double bytes = 0.0, allocated = 0.0;
    if (!err && rank_ == 0) {
        struct stat st;
        if (stat(path, &st) != 0) {
            fprintf(stderr, "bench_ckpt: stat('%s'): %s\n", path, strerror(errno));
            err = 1;
        } else {
            bytes = (double)st.st_size;
            allocated = 512.0 * (double)st.st_blocks;
        }
    }
    err = agree(err);
    MPI_Bcast(&bytes, 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);

    /* Loads from the page cache: the save just wrote these pages. */
    double resident_cached = rank_ == 0 && !err ? resident_fraction(path) : NAN;
    for (int r = 0; r < loads && !err; r++) {
        MPI_Barrier(MPI_COMM_WORLD);
        mark("cached load begins");
        t0 = MPI_Wtime();
        err = check(insitra_checkpoint_load(t, path, NULL, 0), "insitra_checkpoint_load");
        MPI_Barrier(MPI_COMM_WORLD);
        cached_s[r] = MPI_Wtime() - t0;
        mark("cached load ends");
    }
    /* Loads after dropping the file's pages (rank 0 drops them for every rank:
     * one machine, one page cache). */
    for (int r = 0; r < loads && !err; r++) {
        resident[r] = rank_ == 0 ? drop_cached_pages(path) : NAN;
        MPI_Barrier(MPI_COMM_WORLD);
        mark("dropped load begins");
        t0 = MPI_Wtime();
        err = check(insitra_checkpoint_load(t, path, NULL, 0), "insitra_checkpoint_load");
        MPI_Barrier(MPI_COMM_WORLD);
        dropped_s[r] = MPI_Wtime() - t0;
        mark("dropped load ends");
    }
    err = err || check(insitra_evaluate(t, n_eval, ex, ey, &loss_loaded), "insitra_evaluate");

    if (!err && rank_ == 0) {
        const double save_med = median(save_s, repeats), cached_med = median(cached_s, loads);
        const double dropped_med = median(dropped_s, loads);
        char save_all[256], cached_all[256], dropped_all[256];
        join(save_all, sizeof save_all, save_s, repeats);
        join(cached_all, sizeof cached_all, cached_s, loads);
        join(dropped_all, sizeof dropped_all, dropped_s, loads);
        const int verified = loss_saved == loss_loaded;
        fprintf(stderr,
                "bench_ckpt: saves end with fsync (the library's commit); cached loads read pages "
                "the save left in the page cache (%.0f%% resident); dropped loads follow "
                "posix_fadvise(DONTNEED) on the file (at most %.0f%% still resident), but a "
                "virtual disk may still be cached by its host\n",
                100.0 * resident_cached, 100.0 * max_of(resident, loads));
        printf("ckpt mode=io ranks=%d stage=%d params=%lld bytes=%.0f allocated_bytes=%.0f "
               "tensor_bytes=%lld repeats=%d load_repeats=%d "
               "state_bytes_per_rank=%lld train_step_s=%.3f "
               "save_s=%.3f save_s_min=%.3f save_s_all=%s save_MBps=%.1f "
               "load_cached_s=%.3f load_cached_s_all=%s load_cached_MBps=%.1f "
               "load_dropped_s=%.3f load_dropped_s_all=%s load_dropped_MBps=%.1f "
               "resident_cached=%.3f resident_after_drop=%.3f "
               "loss_saved=%.9g loss_loaded=%.9g verified=%d file=%s\n",
               nranks_, stage, (long long)params, bytes, allocated, (long long)(12 * params),
               repeats, loads, (long long)state_max, step_s,
               save_med, min_of(save_s, repeats), save_all, mb_per_s(bytes, save_med), cached_med,
               cached_all, mb_per_s(bytes, cached_med), dropped_med, dropped_all,
               mb_per_s(bytes, dropped_med), resident_cached, max_of(resident, loads),
               loss_saved, loss_loaded, verified, path);
        if (!verified) {
            fprintf(stderr, "bench_ckpt: the loaded model's loss differs from the saved one's\n");
            err = 1;
        }
    }
    err = agree(err);
    free(ex);
    free(ey);
    free(save_s);
    free(cached_s);
    free(dropped_s);
    free(resident);
    err |= check(insitra_trainer_free(t), "insitra_trainer_free");
    return err;
}

static int make_s_trainer(insitra_trainer **t, const char *dir, int every, int n_over, char **over)
{
    insitra_config *cfg = NULL;
    int err = check(insitra_config_create(&cfg), "insitra_config_create");
    err = err || set_model(cfg, &config_s, OVERHEAD_SAMPLES);
    if (every > 0) {
        err = err || set_str(cfg, "checkpoint.dir", dir);
        err = err || set_int(cfg, "checkpoint.every_steps", every);
        err = err || set_int(cfg, "checkpoint.keep_last", 2);
    }
    err = err || apply_overrides(cfg, n_over, over);
    err = err || check(insitra_trainer_create(t, cfg, MPI_COMM_WORLD), "insitra_trainer_create");
    insitra_config_free(cfg);
    err = err || push_synthetic(*t, OVERHEAD_SAMPLES, 12345u + (uint64_t)rank_);
    return err;
}

static int bench_overhead(const char *dir, int every, int steps, int n_over, char **over)
{
    insitra_trainer *plain = NULL, *ckpt = NULL;
    int err = make_s_trainer(&plain, dir, 0, n_over, over);
    err = agree(err) || make_s_trainer(&ckpt, dir, every, n_over, over);
    double *tp = malloc((size_t)steps * sizeof *tp), *tc = malloc((size_t)steps * sizeof *tc);
    int *saved = calloc((size_t)steps, sizeof *saved);
    if (!tp || !tc || !saved)
        err = 1;
    err = agree(err);
    insitra_metrics m;
    for (int i = 0; i < OVERHEAD_WARMUP + steps && !err; i++) {
        /* Alternate the two trainers, so both see the same background load. */
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = MPI_Wtime();
        err = check(insitra_train_step(plain, &m), "insitra_train_step (no checkpoints)");
        MPI_Barrier(MPI_COMM_WORLD);
        const double dp = MPI_Wtime() - t0;
        if (err)
            break;
        t0 = MPI_Wtime();
        err = check(insitra_train_step(ckpt, &m), "insitra_train_step (checkpoints)");
        MPI_Barrier(MPI_COMM_WORLD);
        const double dc = MPI_Wtime() - t0;
        if (i >= OVERHEAD_WARMUP) {
            tp[i - OVERHEAD_WARMUP] = dp;
            tc[i - OVERHEAD_WARMUP] = dc;
            saved[i - OVERHEAD_WARMUP] = m.step % every == 0;
        }
    }
    int64_t params = 0;
    err = err || check(insitra_trainer_num_parameters(plain, &params), "num_parameters");
    if (!err && rank_ == 0) {
        /* d[i]: the checkpointing trainer's step minus the plain trainer's
         * step right before it, so both saw the same background load. */
        double *d = malloc((size_t)steps * sizeof *d), *rest = malloc((size_t)steps * sizeof *rest);
        double mean_p = 0, mean_c = 0, save_d = 0, save_step = 0;
        int n_saves = 0, n_rest = 0;
        for (int i = 0; i < steps && d && rest; i++) {
            mean_p += tp[i] / steps;
            mean_c += tc[i] / steps;
            d[i] = tc[i] - tp[i];
            if (saved[i]) {
                save_d += d[i];
                save_step += tc[i];
                n_saves++;
            } else {
                rest[n_rest++] = d[i];
            }
        }
        /* The cost of a save: its step's difference over the usual (median)
         * difference of the steps that did not save. The overhead per step:
         * the usual difference plus the saves' cost spread over all steps.
         * mean_diff is the plain difference of the means, which one step
         * slowed by another process moves. */
        const double usual = d && rest && n_rest ? median(rest, n_rest) : 0.0;
        const double save_cost = n_saves ? save_d / n_saves - usual : NAN;
        const double over_s = usual + (n_saves ? save_cost * n_saves / steps : 0.0);
        const double med_p = median(tp, steps), med_c = median(tc, steps);
        if (getenv("INSITRA_BENCH_CKPT_VERBOSE"))
            for (int i = 0; i < steps; i++)
                fprintf(stderr, "bench_ckpt: step %d: %.3f ms plain, %.3f ms with checkpoints%s\n",
                        OVERHEAD_WARMUP + i + 1, 1e3 * tp[i], 1e3 * tc[i], saved[i] ? " (saved)" : "");
        printf("ckpt mode=overhead ranks=%d params=%lld every=%d steps=%d saves=%d "
               "step_ms_plain=%.3f step_ms_ckpt=%.3f save_step_ms=%.3f save_ms=%.3f "
               "usual_diff_ms=%.3f overhead_ms_per_step=%.3f overhead_pct=%.2f "
               "mean_ms_plain=%.3f mean_ms_ckpt=%.3f mean_diff_ms=%.3f max_ms_plain=%.3f "
               "max_ms_ckpt=%.3f\n",
               nranks_, (long long)params, every, steps, n_saves, 1e3 * med_p, 1e3 * med_c,
               n_saves ? 1e3 * save_step / n_saves : NAN, 1e3 * save_cost, 1e3 * usual,
               1e3 * over_s, 100.0 * over_s / med_p, 1e3 * mean_p, 1e3 * mean_c,
               1e3 * (mean_c - mean_p), 1e3 * max_of(tp, steps), 1e3 * max_of(tc, steps));
        free(d);
        free(rest);
    }
    free(tp);
    free(tc);
    free(saved);
    err |= check(insitra_trainer_free(ckpt), "insitra_trainer_free");
    err |= check(insitra_trainer_free(plain), "insitra_trainer_free");
    return err;
}

static int parse_int(const char *text, int min, const char *what, int *out)
{
    char *end = NULL;
    long v = strtol(text, &end, 10);
    if (end == text || *end != '\0' || v < min || v > 1000000) {
        fprintf(stderr, "bench_ckpt: %s must be an integer >= %d, got '%s'\n", what, min, text);
        return 1;
    }
    *out = (int)v;
    return 0;
}

static void usage(void)
{
    if (rank_ == 0)
        fprintf(stderr, "usage: bench_ckpt io DIR [repeats=3] [zero_stage=3] [load_repeats=repeats] "
                        "[key=value ...]\n"
                        "       bench_ckpt overhead DIR K STEPS [key=value ...]\n");
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks_);
    int err = 1;
    if (argc >= 3 && strcmp(argv[1], "io") == 0) {
        int repeats = 3, stage = 3, loads = -1;
        /* Positional numbers first, then key=value pairs. */
        int next = 3;
        if (argc > next && !strchr(argv[next], '='))
            err = parse_int(argv[next++], 1, "repeats", &repeats);
        else
            err = 0;
        if (!err && argc > next && !strchr(argv[next], '='))
            err = parse_int(argv[next++], 0, "zero_stage", &stage);
        if (!err && argc > next && !strchr(argv[next], '='))
            err = parse_int(argv[next++], 1, "load_repeats", &loads);
        if (!err && stage > 3) {
            fprintf(stderr, "bench_ckpt: zero_stage must be 0-3, got %d\n", stage);
            err = 1;
        }
        if (err)
            usage();
        else
            err = bench_io(argv[2], repeats, stage, loads > 0 ? loads : repeats, argc - next,
                           argv + next);
    } else if (argc >= 5 && strcmp(argv[1], "overhead") == 0) {
        int every = 0, steps = 0;
        if (parse_int(argv[3], 1, "K", &every) || parse_int(argv[4], 1, "STEPS", &steps))
            usage();
        else
            err = bench_overhead(argv[2], every, steps, argc - 5, argv + 5);
    } else {
        usage();
    }
    MPI_Finalize();
    return err ? EXIT_FAILURE : EXIT_SUCCESS;
}
