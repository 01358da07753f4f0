/*
 * Loading a checkpoint: verify and read one file, or walk a directory from
 * `latest` back to the newest checkpoint that verifies. Each rank reads what
 * its own layout needs, so any rank count and ZeRO stage can resume any
 * checkpoint; CRC32Cs are checked piece by piece and combined across ranks.
 */
#include <dirent.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt.h"
#include "crc32c.h"
#include "error.h"
#include "rng.h"

#define PATH_LEN 4096

/* The stored configuration must describe the same model. */
static insitra_status check_model(const insitra_trainer *t, const char *yaml, const char *file)
{
    static const char *keys[] = {"model.seq_len", "model.in_features", "model.out_features",
                                 "model.d_model", "model.n_layers", "model.n_heads", "model.causal"};
    insitra_config *stored = NULL;
    INSITRA_CHECK(insitra_config_create(&stored));
    insitra_status s = insitra_config_load_yaml_string(stored, yaml);
    if (s != INSITRA_STATUS_OK) {
        insitra_config_free(stored);
        return insitra_error_prefix(INSITRA_STATUS_IO_ERROR, "checkpoint '%s': stored configuration: ", file);
    }
    for (size_t k = 0; k < sizeof keys / sizeof keys[0] && s == INSITRA_STATUS_OK; k++) {
        char theirs[64], mine[64];
        insitra_config_get(stored, keys[k], theirs, sizeof theirs);
        insitra_config_get(&t->cfg, keys[k], mine, sizeof mine);
        if (strcmp(theirs, mine) != 0)
            s = insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                  "checkpoint '%s' holds another model: key '%s' is %s there but %s "
                                  "in this trainer's configuration",
                                  file, keys[k], theirs, mine);
    }
    insitra_config_free(stored);
    return s;
}

/* Reads one group of tensors: whole tensors into full (when full != NULL) or
 * this rank's slots into shard; collects the slot CRCs. */
static insitra_status read_tensors(insitra_trainer *t, hid_t group, hid_t dxpl, const char *gname,
                                   float *full, float *shard, uint32_t *crc, uint64_t *bytes,
                                   uint32_t *stored)
{
    const insitra_param_layout *l = &t->engine.model.layout;
    for (int64_t i = 0; i < l->num_tensors; i++) {
        const insitra_tensor_desc *d = &l->tensors[i];
        hid_t dset = H5Lexists(group, d->name, H5P_DEFAULT) > 0 ? H5Dopen2(group, d->name, H5P_DEFAULT) : -1;
        if (dset < 0)
            return insitra_error_set(INSITRA_STATUS_IO_ERROR, "dataset '/%s/%s' is missing", gname, d->name);
        hid_t space = H5Dget_space(dset);
        hsize_t dims[2] = {0, 1};
        const int ndim = H5Sget_simple_extent_ndims(space);
        H5Sget_simple_extent_dims(space, dims, NULL);
        H5Sclose(space);
        insitra_status s = INSITRA_STATUS_OK;
        if (ndim != d->ndim || (int64_t)dims[0] != d->shape[0] || (ndim == 2 && (int64_t)dims[1] != d->shape[1]))
            s = insitra_error_set(INSITRA_STATUS_IO_ERROR, "dataset '/%s/%s' has the wrong shape", gname,
                                  d->name);
        if (s == INSITRA_STATUS_OK) s = insitra_ckpt_read_attr_u32(dset, "crc32c", &stored[i]);
        const insitra_ckpt_piece p = insitra_ckpt_slot(t, i, full, shard);
        if (s == INSITRA_STATUS_OK) {
            herr_t err;
            if (full) {
                err = H5Dread(dset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, dxpl, full + d->offset);
            } else {
                hid_t fspace, mspace;
                s = insitra_ckpt_select(dset, p.first, p.count, &fspace, &mspace);
                err = s == INSITRA_STATUS_OK ? H5Dread(dset, H5T_NATIVE_FLOAT, mspace, fspace, dxpl, p.data) : -1;
                H5Sclose(fspace);
                H5Sclose(mspace);
            }
            if (err < 0 && s == INSITRA_STATUS_OK)
                s = insitra_error_set(INSITRA_STATUS_IO_ERROR, "cannot read '/%s/%s'", gname, d->name);
        }
        H5Dclose(dset);
        INSITRA_CHECK(s);
        bytes[i] = (uint64_t)p.count * sizeof(float);
        crc[i] = insitra_crc32c(0, p.data, bytes[i]);
    }
    return INSITRA_STATUS_OK;
}

static insitra_status compare_crcs(const insitra_param_layout *l, const char *gname,
                                   const uint32_t *crc, const uint32_t *stored)
{
    for (int64_t i = 0; i < l->num_tensors; i++)
        if (crc[i] != stored[i])
            return insitra_error_set(INSITRA_STATUS_IO_ERROR,
                                     "CRC32C of '/%s/%s' is %08x, the file says %08x", gname,
                                     l->tensors[i].name, crc[i], stored[i]);
    return INSITRA_STATUS_OK;
}

/* Reads element [row] of a per-rank table of width values. */
static insitra_status read_rank_row(hid_t file, const char *path, hid_t type, int64_t row,
                                    int64_t width, void *out)
{
    hid_t dset = H5Dopen2(file, path, H5P_DEFAULT);
    if (dset < 0) return insitra_error_set(INSITRA_STATUS_IO_ERROR, "dataset '%s' is missing", path);
    hid_t fspace = H5Dget_space(dset);
    const int ndim = H5Sget_simple_extent_ndims(fspace);
    const hsize_t start[2] = {(hsize_t)row, 0}, count[2] = {1, (hsize_t)width};
    H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, NULL, count, NULL);
    const hsize_t n = (hsize_t)width;
    hid_t mspace = H5Screate_simple(1, &n, NULL);
    herr_t err = ndim < 1 ? -1 : H5Dread(dset, type, mspace, fspace, H5P_DEFAULT, out);
    H5Sclose(mspace);
    H5Sclose(fspace);
    H5Dclose(dset);
    return err < 0 ? insitra_error_set(INSITRA_STATUS_IO_ERROR, "cannot read '%s'", path) : INSITRA_STATUS_OK;
}

/* The stored samples: this rank's own when the rank count is the same,
 * otherwise an even block of all of them; the newest data.capacity are kept,
 * older ones only enter the CRC. */
static insitra_status read_samples(insitra_trainer *t, hid_t file, int64_t writers, bool *touched)
{
    const int size = t->comm.size, rank = t->comm.rank;
    int64_t *counts = calloc((size_t)writers, sizeof(int64_t));
    if (!counts) return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "checkpoint: out of memory");
    hid_t cset = H5Dopen2(file, "samples/count", H5P_DEFAULT);
    herr_t err = cset < 0 ? -1 : H5Dread(cset, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, counts);
    if (cset >= 0) H5Dclose(cset);
    int64_t total = 0, first = 0, n = 0;
    for (int64_t r = 0; r < writers; r++) {
        if (writers == size && r == rank) first = total, n = counts[r];
        total += counts[r];
    }
    free(counts);
    if (err < 0) return insitra_error_set(INSITRA_STATUS_IO_ERROR, "cannot read '/samples/count'");
    if (writers != size) {
        first = total * rank / size;
        n = total * (rank + 1) / size - first;
    }
    insitra_sample_store *st = &t->store;
    const int64_t keep = n < st->capacity ? n : st->capacity;
    const char *names[2] = {"samples/x", "samples/y"};
    float *bufs[2] = {st->x, st->y};
    const int64_t widths[2] = {st->x_numel, st->y_numel};
    uint32_t crc[2] = {0, 0}, stored[2] = {0, 0};
    uint64_t bytes[2];
    insitra_status s = INSITRA_STATUS_OK;
    *touched = true;
    for (int p = 0; p < 2 && s == INSITRA_STATUS_OK; p++) {
        hid_t dset = H5Dopen2(file, names[p], H5P_DEFAULT);
        if (dset < 0) { s = insitra_error_set(INSITRA_STATUS_IO_ERROR, "dataset '/%s' is missing", names[p]); break; }
        s = insitra_ckpt_read_attr_u32(dset, "crc32c", &stored[p]);
        /* Older rows pass through the buffer for the CRC, then the kept ones stay. */
        for (int64_t at = first; at < first + n && s == INSITRA_STATUS_OK;) {
            const int64_t rows = at < first + n - keep ? (first + n - keep - at < keep ? first + n - keep - at : keep)
                                                       : first + n - at;
            hid_t fspace, mspace;
            s = insitra_ckpt_select(dset, at * widths[p], rows * widths[p], &fspace, &mspace);
            if (s == INSITRA_STATUS_OK &&
                H5Dread(dset, H5T_NATIVE_FLOAT, mspace, fspace, H5P_DEFAULT, bufs[p]) < 0)
                s = insitra_error_set(INSITRA_STATUS_IO_ERROR, "cannot read '/%s'", names[p]);
            H5Sclose(fspace);
            H5Sclose(mspace);
            crc[p] = insitra_crc32c(crc[p], bufs[p], (size_t)(rows * widths[p]) * sizeof(float));
            at += rows;
        }
        bytes[p] = (uint64_t)(n * widths[p]) * sizeof(float);
        H5Dclose(dset);
    }
    /* Every rank takes part in the combination, even after a local failure. */
    insitra_status c = insitra_ckpt_combine_crcs(&t->comm, crc, bytes, 2);
    INSITRA_CHECK(s);
    INSITRA_CHECK(c);
    for (int p = 0; p < 2; p++)
        if (crc[p] != stored[p])
            return insitra_error_set(INSITRA_STATUS_IO_ERROR, "CRC32C of '/%s' is %08x, the file says %08x",
                                     names[p], crc[p], stored[p]);
    st->count = keep;
    st->next = keep % st->capacity;
    return INSITRA_STATUS_OK;
}

/* One file, all ranks together. On failure the trainer's state may be
 * partly overwritten; the caller loads another checkpoint or resets. */
static insitra_status try_load(insitra_trainer *t, const char *file, bool *state_touched,
                               bool *samples_touched)
{
    insitra_zero *z = &t->engine.zero;
    const insitra_param_layout *l = &t->engine.model.layout;
    const int64_t nt = l->num_tensors;
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_fapl_mpio(fapl, t->comm.comm, MPI_INFO_NULL);
    H5Pset_all_coll_metadata_ops(fapl, 1);
    hid_t f = H5Fopen(file, H5F_ACC_RDONLY, fapl);
    H5Pclose(fapl);
    if (f < 0) return insitra_error_set(INSITRA_STATUS_IO_ERROR, "cannot open it as HDF5 (truncated or not a checkpoint)");

    int64_t format = 0, complete = 0, step = 0, writers = 0;
    char *yaml = NULL;
    insitra_status s = insitra_ckpt_read_attr_i64(f, "insitra_format", &format);
    if (s == INSITRA_STATUS_OK && format != INSITRA_CKPT_FORMAT)
        s = insitra_error_set(INSITRA_STATUS_IO_ERROR, "format %" PRId64 ", this library reads %d", format,
                              INSITRA_CKPT_FORMAT);
    if (s == INSITRA_STATUS_OK && (insitra_ckpt_read_attr_i64(f, "complete", &complete) != INSITRA_STATUS_OK || complete != 1))
        s = insitra_error_set(INSITRA_STATUS_IO_ERROR, "incomplete: the writer did not finish it");
    if (s == INSITRA_STATUS_OK) s = insitra_ckpt_read_attr_i64(f, "step", &step);
    if (s == INSITRA_STATUS_OK) s = insitra_ckpt_read_attr_i64(f, "world_size", &writers);
    if (s == INSITRA_STATUS_OK) s = insitra_ckpt_read_attr_str(f, "config", &yaml);
    if (s == INSITRA_STATUS_OK) s = check_model(t, yaml, file);
    free(yaml);

    uint32_t *crc = calloc((size_t)(6 * nt), sizeof(uint32_t));
    uint64_t *bytes = calloc((size_t)(3 * nt), sizeof(uint64_t));
    if (s == INSITRA_STATUS_OK && (!crc || !bytes))
        s = insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "checkpoint: out of memory");
    hid_t dxpl = H5Pcreate(H5P_DATASET_XFER);
    H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_INDEPENDENT); /* disjoint pieces: see ckpt_write.c */
    /* Collective reads need every rank: agree before starting them. */
    s = insitra_comm_agree(&t->comm, s);
    if (s == INSITRA_STATUS_OK) {
        *state_touched = true; /* from here a failure leaves the trainer's state mixed */
        uint32_t *stored = crc + 3 * nt;
        const bool full_moments = z->stage == 0;
        hid_t gm = H5Gopen2(f, "model", H5P_DEFAULT);
        hid_t go_m = H5Gopen2(f, "optim/m", H5P_DEFAULT), go_v = H5Gopen2(f, "optim/v", H5P_DEFAULT);
        if (gm < 0 || go_m < 0 || go_v < 0)
            s = insitra_error_set(INSITRA_STATUS_IO_ERROR, "the /model or /optim group is missing");
        if (s == INSITRA_STATUS_OK)
            s = read_tensors(t, gm, dxpl, "model", z->host_params_full ? z->host_params : NULL, z->host_params,
                             crc, bytes, stored);
        if (s == INSITRA_STATUS_OK)
            s = read_tensors(t, go_m, dxpl, "optim/m", full_moments ? z->host_m : NULL, z->host_m, crc + nt,
                             bytes + nt, stored + nt);
        if (s == INSITRA_STATUS_OK)
            s = read_tensors(t, go_v, dxpl, "optim/v", full_moments ? z->host_v : NULL, z->host_v, crc + 2 * nt,
                             bytes + 2 * nt, stored + 2 * nt);
        if (gm >= 0) H5Gclose(gm);
        if (go_m >= 0) H5Gclose(go_m);
        if (go_v >= 0) H5Gclose(go_v);
        s = insitra_comm_agree(&t->comm, s);
        if (s == INSITRA_STATUS_OK) s = insitra_ckpt_combine_crcs(&t->comm, crc, bytes, 3 * nt);
        /* Every rank sees the same combined CRCs: a mismatch is the same everywhere. */
        if (s == INSITRA_STATUS_OK) s = compare_crcs(l, "model", crc, stored);
        if (s == INSITRA_STATUS_OK) s = compare_crcs(l, "optim/m", crc + nt, stored + nt);
        if (s == INSITRA_STATUS_OK) s = compare_crcs(l, "optim/v", crc + 2 * nt, stored + 2 * nt);
    }
    H5Pclose(dxpl);
    free(crc);
    free(bytes);

    /* The samplers: exact when the rank count matches, else fresh streams. */
    const bool agreed_so_far = s == INSITRA_STATUS_OK;
    if (agreed_so_far) {
        if (writers == t->comm.size) {
            s = read_rank_row(f, "ranks/sampler_state", H5T_NATIVE_UINT64, t->comm.rank, 4, t->sampler.s);
            if (s == INSITRA_STATUS_OK)
                s = read_rank_row(f, "ranks/sample_cursor", H5T_NATIVE_INT64, t->comm.rank, 1, &t->sample_cursor);
            if (s == INSITRA_STATUS_OK)
                s = read_rank_row(f, "ranks/samples_pushed", H5T_NATIVE_INT64, t->comm.rank, 1, &t->store.pushed);
        } else {
            insitra_rng_seed(&t->sampler, (uint64_t)t->cfg.training.seed ^ (uint64_t)step * 0x9e3779b97f4a7c15ull,
                             1 + (uint64_t)t->comm.rank);
            t->sample_cursor = 0;
        }
    }
    if (agreed_so_far) s = insitra_comm_agree(&t->comm, s);
    if (s == INSITRA_STATUS_OK && H5Lexists(f, "samples", H5P_DEFAULT) > 0)
        s = insitra_comm_agree(&t->comm, read_samples(t, f, writers, samples_touched));
    H5Fclose(f);
    if (s == INSITRA_STATUS_OK) t->step = step; /* the trainer imports the state into its backend */
    return s;
}

/* Rank 0: the files to try, best first: what `latest` names, then every
 * step-*.h5 from the newest down. Stale .tmp files are removed on the way. */
static int list_candidates(const char *path, char (*out)[PATH_LEN], int max)
{
    struct stat stbuf;
    if (stat(path, &stbuf) != 0 || !S_ISDIR(stbuf.st_mode)) {
        snprintf(out[0], PATH_LEN, "%s", path);
        return 1;
    }
    int n = 0;
    char latest[PATH_LEN] = "", line[256] = "";
    snprintf(latest, sizeof latest, "%s/latest", path);
    FILE *f = fopen(latest, "r");
    if (f) {
        if (fgets(line, sizeof line, f)) line[strcspn(line, "\r\n")] = '\0';
        fclose(f);
        if (insitra_ckpt_step_of(line, ".h5") >= 0) snprintf(out[n++], PATH_LEN, "%s/%s", path, line);
    }
    int64_t steps[4096];
    int ns = 0;
    DIR *d = opendir(path);
    for (struct dirent *e; d && (e = readdir(d)) && ns < 4096;) {
        char full[PATH_LEN];
        snprintf(full, sizeof full, "%s/%s", path, e->d_name);
        if (insitra_ckpt_step_of(e->d_name, ".h5.tmp") >= 0) unlink(full);
        const int64_t s = insitra_ckpt_step_of(e->d_name, ".h5");
        if (s >= 0 && strcmp(e->d_name, line) != 0) steps[ns++] = s;
    }
    if (d) closedir(d);
    for (int i = 0; i < ns; i++) /* newest first */
        for (int j = i + 1; j < ns; j++)
            if (steps[j] > steps[i]) { int64_t x = steps[i]; steps[i] = steps[j]; steps[j] = x; }
    for (int i = 0; i < ns && n < max; i++)
        snprintf(out[n++], PATH_LEN, "%s/step-%08" PRId64 ".h5", path, steps[i]);
    return n;
}

/* No checkpoint loaded: back to the state trainer_create made. */
static void reset(insitra_trainer *t, bool samples_touched)
{
    insitra_zero_init_host(&t->engine.zero, (uint64_t)t->cfg.training.seed, t->cfg.model.init_std);
    t->step = 0;
    t->sample_cursor = 0;
    insitra_rng_seed(&t->sampler, (uint64_t)t->cfg.training.seed, 1 + (uint64_t)t->comm.rank);
    if (samples_touched) t->store.count = t->store.next = 0;
}

insitra_status insitra_ckpt_load(insitra_trainer *t, const char *path, char *path_out, size_t path_size)
{
    enum { MAX_CANDIDATES = 64 };
    char (*cand)[PATH_LEN] = malloc(MAX_CANDIDATES * PATH_LEN);
    if (!cand) return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "checkpoint: out of memory");
    int n = t->comm.rank == 0 ? list_candidates(path, cand, MAX_CANDIDATES) : 0;
    MPI_Bcast(&n, 1, MPI_INT, 0, t->comm.comm);
    char failures[INSITRA_ERROR_MAX] = "";
    insitra_status s = insitra_error_set(INSITRA_STATUS_IO_ERROR, "no checkpoint found in '%s'", path);
    bool state_touched = false, samples_touched = false;
    insitra_ckpt_quiet quiet;
    insitra_ckpt_quiet_begin(&quiet);
    for (int i = 0; i < n; i++) {
        MPI_Bcast(cand[i], PATH_LEN, MPI_CHAR, 0, t->comm.comm);
        s = try_load(t, cand[i], &state_touched, &samples_touched);
        if (s == INSITRA_STATUS_OK) {
            if (path_out && path_size) snprintf(path_out, path_size, "%s", cand[i]);
            if (failures[0] && t->comm.rank == 0 && t->cfg.log.every_steps > 0)
                printf("insitra: loaded %s after skipping:%s\n", cand[i], failures);
            break;
        }
        /* Another model: no older file fits either. */
        if (strstr(insitra_last_error(), "holds another model")) break;
        size_t used = strlen(failures);
        snprintf(failures + used, sizeof failures - used, " %s (%s);", cand[i], insitra_last_error());
        /* MPI or memory failures are not the file's fault: trying older files would not help. */
        if (s == INSITRA_STATUS_MPI_ERROR || s == INSITRA_STATUS_OUT_OF_MEMORY) break;
    }
    insitra_ckpt_quiet_end(&quiet);
    free(cand);
    if (s != INSITRA_STATUS_OK && !strstr(insitra_last_error(), "holds another model") && n > 0) {
        /* A half-read checkpoint must not pass for trained state. */
        if (state_touched) reset(t, samples_touched);
        s = insitra_error_set(INSITRA_STATUS_IO_ERROR, "no valid checkpoint in '%s'%s. Tried:%s", path,
                              state_touched ? "; the trainer is back at its initial state"
                                            : "; the trainer is unchanged",
                              failures);
    }
    return s;
}
