/*
 * Checkpoint benchmark of insitra's GPU backend, and a check that a
 * checkpoint resumes on another rank count and ZeRO stage.
 *
 *   mpiexec -n R bench_gpu_ckpt save DIR S|M|L [key=value ...]
 *   mpiexec -n R bench_gpu_ckpt load DIR S|M|L [key=value ...]
 *
 * Both modes build config S, M or L of bench_gpu_step (the same table, with
 * device=cuda and precision=bf16), then apply the key=value arguments with
 * insitra_config_set (e.g. parallel.zero_stage=3), create the trainer on
 * MPI_COMM_WORLD and fill every rank's sample store with 64 synthetic
 * samples, as bench_gpu_step does. Only the public API (include/insitra.h)
 * is used; the library picks each rank's GPU.
 *
 * save: trains 2 steps, then times insitra_checkpoint_save(DIR). Before it,
 *       rank 0 calls sync() so that the save's fsync does not flush other
 *       files' pages, and every rank waits in an MPI_Barrier. The time is
 *       MPI_Wtime around the call, the slowest rank's (MPI_Allreduce MAX).
 *       It includes copying the state from the GPUs to the host copies the
 *       checkpoint writer reads.
 * load: times insitra_checkpoint_load(DIR) the same way (DIR's newest
 *       checkpoint that verifies, CRC32C checks included). Before it, rank 0
 *       drops the page cache of the file DIR/latest names
 *       (posix_fadvise(POSIX_FADV_DONTNEED)), so that the load reads the file
 *       system rather than the pages the save left in memory; set
 *       INSITRA_GPU_CKPT_CACHED=1 to keep them. Then it trains 1 step and
 *       prints that step's loss.
 *
 * Both modes then run insitra_predict on 4 fixed inputs, the same on every
 * rank (x = sin of a function of sample, token and feature), and print on
 * rank 0 the line
 *
 *   checksum config=L sum=%.9e sumsq=%.9e sumabs=%.9e fnv=%016llx ranks_agree=1
 *
 * over all 4 x T x F_out outputs (sums in double, in index order; fnv is the
 * FNV-1a hash of the output floats' bytes; ranks_agree is 1 when every rank
 * got the same hash). A load that resumes the saved model prints the same
 * sums: the fp32 master weights are restored exactly and the bf16 working
 * weights are derived from them, so even the hash should match.
 *
 * The last line, on rank 0, is key=value pairs:
 *
 *   gpu_ckpt op=save|load config=L ranks=R stage=Z bytes=... alloc_bytes=...
 *            seconds=... gbps=... sum=... sumsq=... sumabs=... fnv=...
 *            ranks_agree=1 loss=... step=... params=... file=...
 *
 * bytes is the file's size (stat st_size) and alloc_bytes what it occupies
 * on disk (st_blocks x 512; the file has holes where large datasets are
 * aligned); gbps = bytes / seconds / 1e9. loss is the last training step's
 * (the second for save, the one after the load for load); step is the
 * trainer's step count. Any failed call prints insitra_last_error() and
 * the program exits non-zero.
 */
#define _XOPEN_SOURCE 700 /* sync, posix_fadvise */
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mpi.h>

#include "gpu_bench.h"
#include "insitra.h"

enum {
    SAVE_STEPS = 2,     /* training steps before the save */
    PREDICT_SAMPLES = 4,
};

static int my_rank = 0;

typedef struct run_shape {
    int64_t seq_len, in_features, out_features, zero_stage;
} run_shape;

/* The benchmark's configuration and overrides, and the sizes in effect. Local. */
static int build_config(const gpu_bench_config *gc, int n_overrides, char **overrides,
                        insitra_config **cfg_out, run_shape *shape)
{
    insitra_config *cfg = NULL;
    if (!gpu_bench_build_config(gc, n_overrides, overrides, &cfg)) return 0;
    int ok = gpu_bench_get_int(cfg, "model.seq_len", &shape->seq_len) &&
             gpu_bench_get_int(cfg, "model.in_features", &shape->in_features) &&
             gpu_bench_get_int(cfg, "model.out_features", &shape->out_features) &&
             gpu_bench_get_int(cfg, "parallel.zero_stage", &shape->zero_stage);
    if (!ok) {
        insitra_config_free(cfg);
        return 0;
    }
    *cfg_out = cfg;
    return 1;
}

typedef struct checksum {
    double sum, sumsq, sumabs;
    uint64_t fnv;
    int ranks_agree;
} checksum;

/* Collective: predicts PREDICT_SAMPLES fixed inputs (the same on every rank
 * and in every run) and sums the outputs. */
static int predict_checksum(insitra_trainer *trainer, const run_shape *sh, checksum *cs)
{
    size_t tokens = (size_t)PREDICT_SAMPLES * (size_t)sh->seq_len;
    size_t nx = tokens * (size_t)sh->in_features, ny = tokens * (size_t)sh->out_features;
    float *x = malloc(nx * sizeof *x);
    float *y = malloc(ny * sizeof *y);
    int ok = x && y;
    if (!ok)
        fprintf(stderr, "bench_gpu_ckpt: rank %d: out of host memory for the inputs\n", my_rank);
    if (gpu_bench_any_rank(!ok)) {
        free(x);
        free(y);
        return 0;
    }
    for (int64_t s = 0; s < PREDICT_SAMPLES; s++)
        for (int64_t t = 0; t < sh->seq_len; t++)
            for (int64_t f = 0; f < sh->in_features; f++) {
                size_t i = ((size_t)s * (size_t)sh->seq_len + (size_t)t) *
                               (size_t)sh->in_features + (size_t)f;
                x[i] = (float)(0.9 * sin(0.37 * (double)(f + 1) +
                                         0.011 * (double)(t + 1) * (double)(s + 1)));
            }
    /* Collective: fails on every rank or none. */
    ok = gpu_bench_ok(insitra_predict(trainer, PREDICT_SAMPLES, x, y), "insitra_predict");
    if (ok) {
        memset(cs, 0, sizeof *cs);
        cs->fnv = 0xcbf29ce484222325ULL;
        const unsigned char *bytes = (const unsigned char *)y;
        for (size_t i = 0; i < ny * sizeof *y; i++)
            cs->fnv = (cs->fnv ^ bytes[i]) * 0x100000001b3ULL;
        for (size_t i = 0; i < ny; i++) {
            double v = y[i];
            cs->sum += v;
            cs->sumsq += v * v;
            cs->sumabs += fabs(v);
        }
        /* Every rank predicted the same inputs: they must agree. */
        unsigned long long mine = (unsigned long long)cs->fnv, lo = mine, hi = mine;
        MPI_Allreduce(&mine, &lo, 1, MPI_UNSIGNED_LONG_LONG, MPI_MIN, MPI_COMM_WORLD);
        MPI_Allreduce(&mine, &hi, 1, MPI_UNSIGNED_LONG_LONG, MPI_MAX, MPI_COMM_WORLD);
        cs->ranks_agree = lo == hi;
    }
    free(x);
    free(y);
    return ok;
}

/* Rank 0: the path of the checkpoint DIR/latest names, or "" when it cannot
 * be read. */
static void latest_path(const char *dir, char *path, size_t size)
{
    char latest[4096], name[1024];
    path[0] = '\0';
    snprintf(latest, sizeof latest, "%s/latest", dir);
    FILE *f = fopen(latest, "r");
    if (!f)
        return;
    if (fgets(name, sizeof name, f)) {
        name[strcspn(name, "\r\n")] = '\0';
        if (name[0] == '/')
            snprintf(path, size, "%s", name);
        else if (name[0])
            snprintf(path, size, "%s/%s", dir, name);
    }
    fclose(f);
}

/* Rank 0: drops the page cache of the file at path (best effort). */
static const char *drop_cache(const char *path)
{
    if (!path[0])
        return "unknown";
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return "unknown";
    int rc = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
    return rc == 0 ? "dropped" : "unknown";
}

static int run(int save, const char *dir, const gpu_bench_config *gc, int n_overrides,
               char **overrides)
{
    int nranks = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);

    insitra_config *cfg = NULL;
    run_shape sh;
    memset(&sh, 0, sizeof sh);
    int ok = build_config(gc, n_overrides, overrides, &cfg, &sh);
    if (gpu_bench_any_rank(!ok)) {
        insitra_config_free(cfg);
        return 0;
    }
    insitra_trainer *trainer = NULL;
    ok = gpu_bench_ok(insitra_trainer_create(&trainer, cfg, MPI_COMM_WORLD),
                    "insitra_trainer_create");
    insitra_config_free(cfg);
    if (!ok) /* collective: every rank has failed */
        return 0;

    int64_t params = 0;
    ok = gpu_bench_ok(insitra_trainer_num_parameters(trainer, &params),
                    "insitra_trainer_num_parameters");
    /* load: the samples come after the checkpoint, which restores the store's
     * counters, so that the step after the load has samples to draw. */
    if (save)
        ok = ok && gpu_bench_push_store(trainer, GPU_BENCH_STORE_SAMPLES, sh.seq_len, sh.in_features, sh.out_features);
    if (gpu_bench_any_rank(!ok)) {
        insitra_trainer_free(trainer);
        return 0;
    }

    insitra_metrics m;
    memset(&m, 0, sizeof m);
    for (int i = 0; save && ok && i < SAVE_STEPS; i++)
        ok = gpu_bench_ok(insitra_train_step(trainer, &m), "insitra_train_step");
    if (!ok) { /* collective: every rank has failed */
        insitra_trainer_free(trainer);
        return 0;
    }

    char path[4096] = "";
    const char *cache = "written";
    if (save) {
        if (my_rank == 0)
            sync();
    } else if (my_rank == 0) {
        char file[4096];
        latest_path(dir, file, sizeof file);
        const char *keep = getenv("INSITRA_GPU_CKPT_CACHED");
        cache = keep && strcmp(keep, "1") == 0 ? "cached" : drop_cache(file);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    if (save)
        ok = gpu_bench_ok(insitra_checkpoint_save(trainer, dir, path, sizeof path),
                        "insitra_checkpoint_save");
    else
        ok = gpu_bench_ok(insitra_checkpoint_load(trainer, dir, path, sizeof path),
                        "insitra_checkpoint_load");
    double seconds = MPI_Wtime() - t0;
    MPI_Allreduce(MPI_IN_PLACE, &seconds, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (!ok) { /* collective */
        insitra_trainer_free(trainer);
        return 0;
    }

    checksum cs;
    memset(&cs, 0, sizeof cs);
    ok = predict_checksum(trainer, &sh, &cs);
    if (ok && !save) {
        ok = gpu_bench_push_store(trainer, GPU_BENCH_STORE_SAMPLES, sh.seq_len, sh.in_features, sh.out_features);
        if (gpu_bench_any_rank(!ok))
            ok = 0;
        else
            ok = gpu_bench_ok(insitra_train_step(trainer, &m), "insitra_train_step after the load");
    }
    if (!ok) {
        insitra_trainer_free(trainer);
        return 0;
    }

    if (my_rank == 0) {
        struct stat st;
        long long bytes = -1, alloc = -1;
        if (stat(path, &st) == 0) {
            bytes = (long long)st.st_size;
            alloc = (long long)st.st_blocks * 512;
        } else {
            fprintf(stderr, "bench_gpu_ckpt: cannot stat '%s'\n", path);
        }
        double gbps = bytes > 0 && seconds > 0 ? (double)bytes / seconds / 1e9 : NAN;
        printf("checksum config=%s sum=%.9e sumsq=%.9e sumabs=%.9e fnv=%016llx ranks_agree=%d\n",
               gc->name, cs.sum, cs.sumsq, cs.sumabs, (unsigned long long)cs.fnv,
               cs.ranks_agree);
        printf("gpu_ckpt op=%s config=%s ranks=%d stage=%lld bytes=%lld alloc_bytes=%lld "
               "seconds=%.3f gbps=%.3f sum=%.9e sumsq=%.9e sumabs=%.9e fnv=%016llx "
               "ranks_agree=%d loss=%.6g step=%lld params=%lld cache=%s file=%s\n",
               save ? "save" : "load", gc->name, nranks, (long long)sh.zero_stage, bytes, alloc,
               seconds, gbps, cs.sum, cs.sumsq, cs.sumabs, (unsigned long long)cs.fnv,
               cs.ranks_agree, m.loss, (long long)m.step, (long long)params, cache, path);
        fflush(stdout);
    }
    ok = isfinite(m.loss) && cs.ranks_agree;
    if (my_rank == 0 && !isfinite(m.loss))
        fprintf(stderr, "bench_gpu_ckpt: the loss is %g\n", m.loss);
    if (my_rank == 0 && !cs.ranks_agree)
        fprintf(stderr, "bench_gpu_ckpt: the ranks' predictions of the same inputs differ\n");
    return gpu_bench_ok(insitra_trainer_free(trainer), "insitra_trainer_free") && ok;
}

static void usage(void)
{
    if (my_rank == 0)
        fprintf(stderr, "usage: mpiexec -n R bench_gpu_ckpt save|load DIR S|M|L [key=value ...]\n");
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    gpu_bench_init("bench_gpu_ckpt");
    my_rank = gpu_bench_rank();
    int save = argc > 1 && strcmp(argv[1], "save") == 0;
    int load = argc > 1 && strcmp(argv[1], "load") == 0;
    const gpu_bench_config *gc = argc > 3 ? gpu_bench_find(argv[3]) : NULL;
    int ok = 0;
    if ((!save && !load) || !gc || !argv[2][0])
        usage();
    else
        ok = run(save, argv[2], gc, argc - 4, argv + 4);
    MPI_Finalize();
    return ok ? EXIT_SUCCESS : EXIT_FAILURE;
}
