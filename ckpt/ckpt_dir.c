/* The checkpoint directory on rank 0: prepare, reserve, commit (ckpt_dir.h). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt_dir.h"
#include "ckpt_format.h"
#include "ckpt_io.h"
#include "error.h"

#define PATH_LEN 4200

static insitra_status os_error(int err, const char *what, const char *path)
{
    return insitra_error_set(INSITRA_STATUS_IO_ERROR, "checkpoint: %s '%s': %s", what, path, strerror(err));
}

static insitra_status fsync_path(const char *path, int flags)
{
    int fd = open(path, flags);
    if (fd < 0) return os_error(errno, "cannot open", path);
    const int rc = fsync(fd), err = errno;
    close(fd);
    return rc == 0 ? INSITRA_STATUS_OK : os_error(err, "cannot fsync", path);
}

/* mkdir -p */
static insitra_status make_dirs(const char *dir)
{
    char path[PATH_LEN];
    snprintf(path, sizeof path, "%s", dir);
    for (char *c = path + 1;; c++) {
        const char saved = *c;
        if (saved != '/' && saved != '\0') continue;
        *c = '\0';
        if (mkdir(path, 0777) != 0 && errno != EEXIST) return os_error(errno, "cannot create directory", path);
        *c = saved;
        if (saved == '\0') return INSITRA_STATUS_OK;
    }
}

insitra_status insitra_ckpt_dir_prepare(const char *dir)
{
    INSITRA_CHECK(make_dirs(dir));
    DIR *d = opendir(dir);
    if (!d) return os_error(errno, "cannot open directory", dir);
    char path[PATH_LEN];
    for (struct dirent *e; (e = readdir(d));) {
        if (insitra_ckpt_step_of(e->d_name, ".h5.tmp") < 0 && strcmp(e->d_name, INSITRA_CKPT_LATEST_TMP) != 0)
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    return INSITRA_STATUS_OK;
}

insitra_status insitra_ckpt_dir_extend(const char *tmp, int64_t bytes)
{
    int fd = open(tmp, O_WRONLY);
    if (fd < 0) return os_error(errno, "cannot open", tmp);
    int err = posix_fallocate(fd, 0, (off_t)bytes);
    /* A file system that cannot reserve (EOPNOTSUPP, EINVAL) is written
     * without a reservation, as before. */
    if (err == EOPNOTSUPP || err == EINVAL) err = 0;
    if (close(fd) != 0 && err == 0) err = errno;
    return err == 0 ? INSITRA_STATUS_OK : os_error(err, "cannot reserve space for", tmp);
}

insitra_status insitra_ckpt_dir_reserve(const char *tmp, int64_t bytes)
{
    /* HDF5 truncates a file it creates: the reservation must be made in a file
     * it opens instead, so rank 0 creates it serially first (a superblock and
     * an empty root group, well under a page). */
    hid_t file = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    insitra_status s = INSITRA_STATUS_OK;
    if (file < 0 || H5Fclose(file) < 0) s = insitra_ckpt_h5_error("cannot create '%s'", tmp);
    if (s == INSITRA_STATUS_OK) s = insitra_ckpt_dir_extend(tmp, bytes);
    if (s != INSITRA_STATUS_OK) unlink(tmp);
    return s;
}

/* Writes "name\n" to dir/latest.tmp and fsyncs it; removes it on failure. */
static insitra_status write_latest_tmp(const char *path, const char *name)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0666);
    if (fd < 0) return os_error(errno, "cannot create", path);
    char line[128];
    const size_t len = (size_t)snprintf(line, sizeof line, "%s\n", name);
    const ssize_t done = write(fd, line, len);
    int err = done < 0 ? errno : (size_t)done != len ? ENOSPC : 0;
    if (err == 0 && fsync(fd) != 0) err = errno;
    if (close(fd) != 0 && err == 0) err = errno;
    if (err != 0) {
        unlink(path);
        return os_error(err, "cannot write", path);
    }
    return INSITRA_STATUS_OK;
}

/* The checkpoint just written and the keep - 1 newest before it stay. Files
 * of later steps (a run that was abandoned, for one, after resuming from an
 * older checkpoint) are not this save's to delete. */
static void apply_retention(const char *dir, int64_t current, int64_t keep)
{
    int64_t *steps = NULL;
    const int64_t n = insitra_ckpt_list_steps(dir, ".h5", &steps);
    char name[64], path[PATH_LEN];
    for (int64_t i = 0, older = 0; i < n; i++) {
        if (steps[i] >= current || ++older < keep) continue;
        insitra_ckpt_file_name(name, sizeof name, steps[i]);
        snprintf(path, sizeof path, "%s/%s", dir, name);
        unlink(path);
    }
    free(steps);
}

/* Cuts the reservation's unused tail: the file ends where HDF5's allocated
 * space does (read from the file itself, with the serial driver). */
static insitra_status trim(const char *tmp)
{
    hid_t file = H5Fopen(tmp, H5F_ACC_RDONLY, H5P_DEFAULT);
    haddr_t eoa = HADDR_UNDEF;
    if (file < 0 || H5Fget_eoa(file, &eoa) < 0 || eoa == HADDR_UNDEF) {
        if (file >= 0) H5Fclose(file);
        return insitra_ckpt_h5_error("cannot read the end of '%s'", tmp);
    }
    H5Fclose(file);
    return truncate(tmp, (off_t)eoa) == 0 ? INSITRA_STATUS_OK : os_error(errno, "cannot truncate", tmp);
}

insitra_status insitra_ckpt_dir_commit(const char *dir, const char *tmp, const char *name, int64_t step,
                                       int64_t keep)
{
    char final_path[PATH_LEN], latest_tmp[PATH_LEN], latest[PATH_LEN];
    snprintf(final_path, sizeof final_path, "%s/%s", dir, name);
    snprintf(latest_tmp, sizeof latest_tmp, "%s/" INSITRA_CKPT_LATEST_TMP, dir);
    snprintf(latest, sizeof latest, "%s/" INSITRA_CKPT_LATEST, dir);
    INSITRA_CHECK(trim(tmp));
    INSITRA_CHECK(fsync_path(tmp, O_RDONLY));
    INSITRA_CHECK(write_latest_tmp(latest_tmp, name));
    if (rename(tmp, final_path) != 0) {
        const int err = errno;
        unlink(latest_tmp);
        return os_error(err, "cannot rename", tmp);
    }
    insitra_status s = fsync_path(dir, O_RDONLY | O_DIRECTORY);
    if (s == INSITRA_STATUS_OK && rename(latest_tmp, latest) != 0) s = os_error(errno, "cannot rename", latest_tmp);
    if (s != INSITRA_STATUS_OK) {
        /* `latest` still names the previous checkpoint, which stays valid; the
         * new file is complete and loads by name. */
        unlink(latest_tmp);
        return s;
    }
    INSITRA_CHECK(fsync_path(dir, O_RDONLY | O_DIRECTORY));
    apply_retention(dir, step, keep);
    return INSITRA_STATUS_OK;
}
