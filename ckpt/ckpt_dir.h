/*
 * The checkpoint directory on rank 0 (POSIX): preparing it, reserving a new
 * file's space before any rank writes, and the commit (docs/checkpoint.md,
 * "Commit protocol"). Every function returns IO_ERROR naming the path and
 * the operating system's reason.
 */
#ifndef INSITRA_CKPT_DIR_H
#define INSITRA_CKPT_DIR_H

#include <stdint.h>

#include "insitra.h"

/* mkdir -p dir, then remove what an interrupted save left: *.h5.tmp, latest.tmp. */
insitra_status insitra_ckpt_dir_prepare(const char *dir);

/* Creates tmp as an empty HDF5 file with bytes reserved for it (POSIX
 * only), so the collective writes that follow cannot run out of space. On
 * failure nothing is left. */
insitra_status insitra_ckpt_dir_reserve(const char *tmp, int64_t bytes);
/* Grows the reservation of tmp to bytes (when the estimate was short). */
insitra_status insitra_ckpt_dir_extend(const char *tmp, int64_t bytes);

/* Cuts tmp to its real size, fsyncs it, writes latest.tmp, renames tmp to
 * dir/name and latest.tmp to latest with the directory fsynced in between,
 * and then retires checkpoints beyond keep (older than step). Every write
 * that can run out of space comes before the first rename: on failure the
 * directory holds what it held before (the caller removes tmp). */
insitra_status insitra_ckpt_dir_commit(const char *dir, const char *tmp, const char *name, int64_t step,
                                       int64_t keep);

#endif /* INSITRA_CKPT_DIR_H */
