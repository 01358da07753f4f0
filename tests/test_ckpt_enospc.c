/*
 * A disk that fills up during a save (issue #16.1: every rank used to block
 * for ever in H5Fclose). Run on 2 ranks with tests/enospc_shim.c preloaded:
 * at every budget, from 0 bytes to one that runs out inside `latest.tmp`,
 * the save must return IO_ERROR naming the reason on every rank (within the
 * test's timeout), training must go on, the previous checkpoint must stay
 * `latest` and load, and no *.tmp may be left. Then, with the space back, a
 * save must succeed.
 *   LD_PRELOAD=libenospc_shim.so test_ckpt_enospc DIR
 *       budgets of new bytes (tests/enospc_shim.c), from 0 to one that ends
 *       inside latest.tmp
 *   test_ckpt_enospc DIR real
 *       DIR is a small file system of its own (tests/ckpt_fullfs.sh mounts a
 *       tmpfs): rank 0 fills it up to 0 to 600 KiB of free space
 */
#define _GNU_SOURCE /* RTLD_DEFAULT */
#include <dirent.h>
#include <dlfcn.h>
#include <limits.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <fcntl.h>
#include <unistd.h>

#include "insitra.h"
#include "test_util.h"

static insitra_trainer *make(insitra_test *T)
{
    insitra_config *cfg = insitra_test_config(T, "model: {seq_len: 8, in_features: 3, out_features: 2, d_model: 16,\n"
                                         "        n_layers: 2, n_heads: 2}\n"
                                         "training: {batch_size: 4, seed: 7}\n"
                                         "data: {capacity: 16}\n"
                                         "parallel: {zero_stage: 1}\n"
                                         "checkpoint: {include_samples: true, keep_last: 2}\n");
    insitra_trainer *t = NULL;
    if (!cfg || insitra_trainer_create(&t, cfg, MPI_COMM_WORLD) != INSITRA_STATUS_OK) {
        printf("rank %d: create: %s\n", T->rank, insitra_last_error());
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    insitra_config_free(cfg);
    static float x[16][8][3], y[16][8][2];
    for (int i = 0; i < 16 * 24; i++) (&x[0][0][0])[i] = (float)sin(0.1 * i + T->rank);
    for (int i = 0; i < 16 * 16; i++) (&y[0][0][0])[i] = (float)cos(0.2 * i - T->rank);
    insitra_push_samples(t, 16, &x[0][0][0], &y[0][0][0]);
    return t;
}

static void train(insitra_test *T, insitra_trainer *t)
{
    EXPECT_OK(T, insitra_train_step(t, NULL), "train_step");
}

/* What is left in dir: no temporary file, and `latest` names want. */
static void check_dir(insitra_test *T, const char *dir, const char *want, const char *when)
{
    DIR *d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d));) {
        const size_t n = strlen(e->d_name);
        EXPECT(T, n < 4 || strcmp(e->d_name + n - 4, ".tmp") != 0, "%s: '%s' was left behind", when, e->d_name);
    }
    if (d) closedir(d);
    char path[PATH_MAX + 16], line[64] = "";
    snprintf(path, sizeof path, "%s/latest", dir);
    FILE *f = fopen(path, "r");
    if (f && fgets(line, sizeof line, f)) line[strcspn(line, "\n")] = '\0';
    if (f) fclose(f);
    EXPECT(T, strcmp(line, want) == 0, "%s: latest names '%s', expected '%s'", when, line, want);
}

/* How a trial runs out of space: bytes < 0 lifts the limit. */
typedef void (*limit_fn)(insitra_test *T, const char *dir, long long bytes, int trial);

/* The shim's budget, on every rank. */
static void shim_limit(insitra_test *T, const char *dir, long long bytes, int trial)
{
    (void)T, (void)dir;
    char v[64] = "";
    if (bytes >= 0) snprintf(v, sizeof v, "%lld %d", bytes, trial);
    setenv("INSITRA_TEST_ENOSPC_BUDGET", v, 1);
}

/* A real file system: rank 0 fills it with DIR/filler, then gives `bytes`
 * back (whole pages; tmpfs frees them at once). */
static void disk_limit(insitra_test *T, const char *dir, long long bytes, int trial)
{
    (void)trial;
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/filler", dir);
    if (T->rank == 0 && bytes < 0) unlink(path);
    if (T->rank == 0 && bytes >= 0) {
        static char zeros[1 << 16];
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0666);
        long long size = 0;
        for (ssize_t n; fd >= 0 && (n = write(fd, zeros, sizeof zeros)) > 0;) size += n;
        const long long keep = size - bytes > 0 ? size - bytes : 0;
        EXPECT(T, fd >= 0 && ftruncate(fd, (off_t)keep) == 0, "cannot fill %s", dir);
        if (fd >= 0) close(fd);
        struct statvfs v;
        if (statvfs(dir, &v) == 0)
            printf("file system of %s: %llu bytes free\n", dir, (unsigned long long)v.f_bavail * v.f_frsize);
    }
    MPI_Barrier(MPI_COMM_WORLD);
}

/* Saves of t under each limit fail on every rank, leaving dir as it was
 * (`latest` naming latest); then, without a limit, a save succeeds. */
static void trials(insitra_test *T, insitra_trainer *t, const char *dir, limit_fn limit, const long long *limits,
                   int n, const char *latest)
{
    char path[PATH_MAX + 64];
    for (int k = 0; k < n; k++) {
        train(T, t); /* training goes on between failed saves */
        limit(T, dir, limits[k], k + 1);
        const double t0 = MPI_Wtime();
        insitra_status s = insitra_checkpoint_save(t, dir, path, sizeof path);
        const double seconds = MPI_Wtime() - t0;
        limit(T, dir, -1, 0);
        EXPECT(T, s == INSITRA_STATUS_IO_ERROR && strstr(insitra_last_error(), "No space left on device"),
               "limit %lld: status %d: %s", limits[k], (int)s, insitra_last_error());
        if (T->rank == 0) printf("limit %8lld bytes: IO_ERROR after %.2f s: %s\n", limits[k], seconds, insitra_last_error());
        MPI_Barrier(MPI_COMM_WORLD);
        char when[64];
        snprintf(when, sizeof when, "after the limit of %lld bytes", limits[k]);
        if (T->rank == 0) check_dir(T, dir, latest, when);
    }
    /* The previous checkpoint is intact, and a save with space succeeds. */
    insitra_trainer *r = make(T);
    EXPECT(T, insitra_checkpoint_load(r, dir, path, sizeof path) == INSITRA_STATUS_OK && strstr(path, latest),
           "the previous checkpoint does not load: %s (%s)", path, insitra_last_error());
    insitra_trainer_free(r);
    EXPECT(T, insitra_checkpoint_save(t, dir, path, sizeof path) == INSITRA_STATUS_OK, "save with space: %s",
           insitra_last_error());
    const char *name = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    if (T->rank == 0) check_dir(T, dir, name, "after the save with space");
}

int main(int argc, char **argv)
{
    insitra_test test = insitra_test_begin(&argc, &argv, "checkpoint on a full disk");
    insitra_test *T = &test;
    int64_t (*spent)(void) = (int64_t (*)(void))dlsym(RTLD_DEFAULT, "insitra_test_enospc_spent");
    const int real = argc > 2 && strcmp(argv[2], "real") == 0;
    if (argc < 2 || (!real && !spent)) {
        EXPECT(T, false, "usage: LD_PRELOAD=libenospc_shim.so test_ckpt_enospc DIR | test_ckpt_enospc DIR real%s",
               argc < 2 ? "" : " (the shim is not loaded)");
        return insitra_test_end(T);
    }
    char dir[PATH_MAX];
    if (T->rank == 0) mkdir(argv[1], 0777);
    MPI_Barrier(MPI_COMM_WORLD);
    if (!realpath(argv[1], dir)) snprintf(dir, sizeof dir, "%s", argv[1]);
    setenv("INSITRA_TEST_ENOSPC_DIR", dir, 1);

    insitra_trainer *t = make(T);
    char path[PATH_MAX + 64];
    for (int k = 0; k < 3; k++) train(T, t);
    EXPECT(T, insitra_checkpoint_save(t, dir, path, sizeof path) == INSITRA_STATUS_OK, "first save: %s",
           insitra_last_error());
    if (real) {
        /* Every free-space level the issue found hanging, 0 to 600 KiB. */
        const long long levels[] = {0, 4096, 100 << 10, 300 << 10, 600 << 10};
        trials(T, t, dir, disk_limit, levels, 5, "step-00000003.h5");
    } else {
        /* What a save costs rank 0 (the file and its reservation, `latest`). */
        shim_limit(T, dir, LLONG_MAX / 2, 0);
        train(T, t);
        EXPECT(T, insitra_checkpoint_save(t, dir, path, sizeof path) == INSITRA_STATUS_OK, "measured save: %s",
               insitra_last_error());
        long long cost = T->rank == 0 ? (long long)spent() : 0;
        MPI_Bcast(&cost, 1, MPI_LONG_LONG, 0, MPI_COMM_WORLD);
        if (T->rank == 0) printf("a save writes %lld new bytes on rank 0\n", cost);
        /* 0 bytes; a few; about half; all but the tail of `latest.tmp`. */
        const long long budgets[] = {0, 1, 512, 4096, 65536, cost / 2, cost - 4096, cost - 3};
        trials(T, t, dir, shim_limit, budgets, 8, "step-00000004.h5");
    }
    insitra_trainer_free(t);
    return insitra_test_end(T);
}
