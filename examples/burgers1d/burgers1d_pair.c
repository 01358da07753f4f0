/* The field half of a burgers1d checkpoint pair; see burgers1d_pair.h. */
#include "burgers1d_pair.h"

#include <dirent.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { HEADER_WORDS = 8, MAX_PAIRS = 4096 };
static const int64_t FIELD_MAGIC = 0x3164736772756221; /* "!burgsd1" little-endian */

static void field_path(char *buf, size_t size, const char *dir, int64_t train_step)
{
    snprintf(buf, size, "%s/burgers1d-%08" PRId64 ".field", dir, train_step);
}

/* Collective: true on every rank when ok is true on every rank. */
static int all_ok(int ok, MPI_Comm comm)
{
    MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_LAND, comm);
    return ok;
}

/* Collective: rank 0's answer to "does dir/name exist". */
static int exists_on_rank0(const char *dir, const char *name, const domain *d)
{
    int yes = 0;
    if (d->rank == 0) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, name);
        yes = access(path, F_OK) == 0;
    }
    MPI_Bcast(&yes, 1, MPI_INT, 0, d->comm);
    return yes;
}

/* Collective: the training steps that have a field file in dir, newest
 * first (rank 0 lists the directory). */
static int list_pairs(const char *dir, const domain *d, int64_t *steps)
{
    int count = 0;
    if (d->rank == 0) {
        DIR *dh = opendir(dir);
        for (struct dirent *e; dh && (e = readdir(dh)) != NULL && count < MAX_PAIRS;) {
            long long n;
            char tail[8];
            if (sscanf(e->d_name, "burgers1d-%lld%7s", &n, tail) == 2 && strcmp(tail, ".field") == 0)
                steps[count++] = n;
        }
        if (dh) closedir(dh);
        for (int i = 1; i < count; i++) /* insertion sort, newest first */
            for (int j = i; j > 0 && steps[j] > steps[j - 1]; j--) {
                const int64_t s = steps[j];
                steps[j] = steps[j - 1];
                steps[j - 1] = s;
            }
    }
    MPI_Bcast(&count, 1, MPI_INT, 0, d->comm);
    MPI_Bcast(steps, count, MPI_INT64_T, 0, d->comm);
    return count;
}

/* Rank 0: deletes field files whose insitra checkpoint was pruned. */
static void prune(const char *dir, const domain *d)
{
    static int64_t steps[MAX_PAIRS];
    const int count = list_pairs(dir, d, steps);
    if (d->rank != 0) return;
    for (int i = 0; i < count; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/step-%08" PRId64 ".h5", dir, steps[i]);
        if (access(path, F_OK) == 0) continue;
        field_path(path, sizeof path, dir, steps[i]);
        remove(path);
    }
}

int burgers_pair_save(const char *dir, const domain *d, const double *u, uint64_t rng,
                      const burgers_pair *info)
{
    char path[4096], tmp[4100];
    field_path(path, sizeof path, dir, info->train_step);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int64_t header[HEADER_WORDS] = {FIELD_MAGIC, 1, d->cells, info->solver_step, info->train_step, d->size};
    memcpy(&header[6], &info->loss, sizeof(double));
    memcpy(&header[7], &info->lr, sizeof(double));
    const MPI_Offset u_at = (MPI_Offset)sizeof header, rng_at = u_at + (MPI_Offset)d->cells * 8;

    /* Every MPI-IO call below is collective or local and returns its error;
     * the ranks agree on the outcome once, at the end. */
    MPI_File fh;
    const int opened =
        MPI_File_open(d->comm, tmp, MPI_MODE_CREATE | MPI_MODE_WRONLY, MPI_INFO_NULL, &fh) == MPI_SUCCESS;
    int ok = all_ok(opened, d->comm);
    if (!ok && opened) MPI_File_close(&fh);
    if (ok) {
        ok = MPI_File_set_size(fh, 0) == MPI_SUCCESS;
        if (d->rank == 0)
            ok &= MPI_File_write_at(fh, 0, header, HEADER_WORDS, MPI_INT64_T, MPI_STATUS_IGNORE) ==
                  MPI_SUCCESS;
        ok &= MPI_File_write_at_all(fh, u_at + (MPI_Offset)d->first * 8, u, (int)d->n, MPI_DOUBLE,
                                    MPI_STATUS_IGNORE) == MPI_SUCCESS;
        ok &= MPI_File_write_at_all(fh, rng_at + (MPI_Offset)d->rank * 8, &rng, 1, MPI_UINT64_T,
                                    MPI_STATUS_IGNORE) == MPI_SUCCESS;
        ok &= MPI_File_sync(fh) == MPI_SUCCESS;
        ok &= MPI_File_close(&fh) == MPI_SUCCESS;
    }
    /* Renamed only once every rank has written and synced its part. */
    if (all_ok(ok, d->comm) && d->rank == 0) ok = rename(tmp, path) == 0;
    if (!all_ok(ok, d->comm)) {
        if (d->rank == 0) fprintf(stderr, "burgers1d: cannot write %s\n", path);
        return -1;
    }
    prune(dir, d);
    return 0;
}

/* Collective. Reads the field file of train_step into d->u and *rng; -1 on
 * every rank (rank 0 says why) when it is missing or does not fit. */
static int load_field(const char *dir, int64_t train_step, domain *d, uint64_t *rng, burgers_pair *info)
{
    char path[4096];
    field_path(path, sizeof path, dir, train_step);
    MPI_File fh;
    const int opened = MPI_File_open(d->comm, path, MPI_MODE_RDONLY, MPI_INFO_NULL, &fh) == MPI_SUCCESS;
    if (!all_ok(opened, d->comm)) {
        if (opened) MPI_File_close(&fh);
        if (d->rank == 0) printf("burgers1d: cannot open %s; trying an older checkpoint\n", path);
        return -1;
    }
    int64_t h[HEADER_WORDS] = {0};
    MPI_Offset size = 0;
    int ok = MPI_File_read_at_all(fh, 0, h, HEADER_WORDS, MPI_INT64_T, MPI_STATUS_IGNORE) == MPI_SUCCESS;
    ok = all_ok(ok && MPI_File_get_size(fh, &size) == MPI_SUCCESS, d->comm);
    const MPI_Offset u_at = (MPI_Offset)sizeof h, rng_at = u_at + (MPI_Offset)d->cells * 8;
    const char *why = !ok                                   ? "unreadable"
                      : h[0] != FIELD_MAGIC || h[1] != 1    ? "not a burgers1d field file (version 1)"
                      : h[2] != d->cells                    ? "written for another --cells"
                      : h[4] != train_step                  ? "for another training step"
                      : size != rng_at + (MPI_Offset)h[5] * 8 ? "truncated"
                                                            : NULL;
    if (why) { /* every rank read the same header: the verdict agrees */
        if (d->rank == 0) printf("burgers1d: %s is %s; trying an older checkpoint\n", path, why);
        MPI_File_close(&fh);
        return -1;
    }
    ok = MPI_File_read_at_all(fh, u_at + (MPI_Offset)d->first * 8, d->u + 1, (int)d->n, MPI_DOUBLE,
                              MPI_STATUS_IGNORE) == MPI_SUCCESS;
    info->train_step = h[4];
    info->solver_step = h[3];
    memcpy(&info->loss, &h[6], sizeof(double));
    memcpy(&info->lr, &h[7], sizeof(double));
    if (h[5] == d->size) {
        ok &= MPI_File_read_at_all(fh, rng_at + (MPI_Offset)d->rank * 8, rng, 1, MPI_UINT64_T,
                                   MPI_STATUS_IGNORE) == MPI_SUCCESS;
    } else {
        /* Another rank count: the windows differ from here on anyway; a
         * generator that depends on the step keeps them fresh. */
        *rng += (uint64_t)info->solver_step * 0x9E3779B97F4A7C15ull;
    }
    MPI_File_close(&fh);
    if (!all_ok(ok, d->comm)) {
        if (d->rank == 0) printf("burgers1d: cannot read %s; trying an older checkpoint\n", path);
        return -1;
    }
    return 0;
}

int burgers_pair_resume(const char *dir, insitra_trainer *t, domain *d, uint64_t *rng, burgers_pair *info)
{
    if (exists_on_rank0(dir, "burgers1d-finished", d)) {
        if (d->rank == 0)
            fprintf(stderr, "burgers1d: %s holds a finished run; remove it (or set another "
                            "--checkpoint-dir) to start a new one\n", dir);
        return -1;
    }
    if (!exists_on_rank0(dir, "latest", d)) return 0; /* a new run */

    /* The newest checkpoint that verifies, then the newest field that pairs
     * with a checkpoint that loads (a crash can come between the two writes). */
    char loaded[4096];
    if (insitra_checkpoint_load(t, dir, loaded, sizeof loaded) != INSITRA_STATUS_OK) {
        if (d->rank == 0) fprintf(stderr, "burgers1d: cannot resume from %s: %s\n", dir, insitra_last_error());
        return -1;
    }
    const char *name = strrchr(loaded, '/');
    long long newest = -1;
    if (!name || sscanf(name, "/step-%lld.h5", &newest) != 1) newest = -1;
    static int64_t steps[MAX_PAIRS];
    const int count = list_pairs(dir, d, steps);
    for (int i = 0; i < count; i++) {
        if (steps[i] > newest) continue; /* its step-N.h5 did not verify */
        if (steps[i] < newest) {
            char path[4096];
            snprintf(path, sizeof path, "%s/step-%08" PRId64 ".h5", dir, steps[i]);
            if (insitra_checkpoint_load(t, path, NULL, 0) != INSITRA_STATUS_OK) continue;
            newest = steps[i];
        }
        if (load_field(dir, steps[i], d, rng, info) == 0) return 1;
    }
    if (d->rank == 0)
        fprintf(stderr, "burgers1d: no field in %s pairs with a checkpoint that loads; remove the "
                        "directory to start over\n", dir);
    return -1;
}

void burgers_pair_finish(const char *dir, const domain *d)
{
    if (d->rank == 0) {
        char path[4096];
        snprintf(path, sizeof path, "%s/burgers1d-finished", dir);
        FILE *f = fopen(path, "w");
        if (f) fclose(f);
    }
    MPI_Barrier(d->comm);
}
