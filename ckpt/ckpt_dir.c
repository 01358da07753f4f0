/* The checkpoint directory on rank 0: prepare, reserve, commit (ckpt_dir.h). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdint.h>
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

/* Reserves [0, bytes) of fd: 0 or an errno value. A file system that
 * cannot reserve (EOPNOTSUPP, EINVAL) is written without a reservation. */
static int reserve_fd(int fd, int64_t bytes)
{
    const int err = posix_fallocate(fd, 0, (off_t)bytes);
    return err == EOPNOTSUPP || err == EINVAL ? 0 : err;
}

insitra_status insitra_ckpt_dir_extend(const char *tmp, int64_t bytes)
{
    int fd = open(tmp, O_WRONLY);
    if (fd < 0) return os_error(errno, "cannot open", tmp);
    int err = reserve_fd(fd, bytes);
    if (close(fd) != 0 && err == 0) err = errno;
    return err == 0 ? INSITRA_STATUS_OK : os_error(err, "cannot reserve space for", tmp);
}

/* An empty HDF5 file (a superblock and an empty root group, under a page),
 * made in memory: a malloc'd image and its size. */
static insitra_status empty_image(void **image, ssize_t *size)
{
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_fapl_core(fapl, 1 << 16, 0); /* no backing store: nothing touches the disk */
    hid_t file = H5Fcreate("insitra-empty", H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    H5Pclose(fapl);
    *image = NULL;
    *size = file < 0 || H5Fflush(file, H5F_SCOPE_LOCAL) < 0 ? -1 : H5Fget_file_image(file, NULL, 0);
    if (*size > 0 && (*image = malloc((size_t)*size)))
        *size = H5Fget_file_image(file, *image, (size_t)*size);
    if (file >= 0) H5Fclose(file);
    if (*image && *size > 0) return INSITRA_STATUS_OK;
    free(*image);
    return insitra_ckpt_h5_error("cannot make an empty HDF5 file in memory");
}

insitra_status insitra_ckpt_dir_reserve(const char *tmp, int64_t bytes)
{
    /* HDF5 truncates a file it creates, which would drop a reservation: the
     * ranks open an existing one instead, which rank 0 writes here with
     * POSIX calls, reservation first, so a full disk fails here, cleanly. */
    void *image;
    ssize_t size;
    INSITRA_CHECK(empty_image(&image, &size));
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0666);
    int err = fd < 0 ? errno : reserve_fd(fd, bytes > size ? bytes : size);
    const char *what = fd < 0 ? "cannot create" : "cannot reserve space for";
    if (err == 0) {
        const ssize_t done = pwrite(fd, image, (size_t)size, 0);
        err = done == size ? 0 : done < 0 ? errno : ENOSPC;
        what = "cannot write";
    }
    if (fd >= 0 && close(fd) != 0 && err == 0) err = errno, what = "cannot write";
    free(image);
    if (err == 0) return INSITRA_STATUS_OK;
    unlink(tmp);
    return os_error(err, what, tmp);
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
