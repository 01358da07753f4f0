/*
 * HDF5 checkpoints (docs/checkpoint.md): one file per checkpoint, each rank
 * writing and reading only the pieces of each tensor its layout owns, on a
 * plain view of the state (ckpt_state.h).
 */
#ifndef INSITRA_CKPT_H
#define INSITRA_CKPT_H

#include <stddef.h>

#include "ckpt_state.h"

/* Collective: write dir/step-N.h5 with the commit protocol. On any failure
 * every rank returns the same error and the directory is as before. */
insitra_status insitra_ckpt_save(const insitra_ckpt_state *st, const char *dir, char *path_out,
                                 size_t path_size);

/* Collective: load a file, or the newest valid checkpoint of a directory.
 * *touched says what was written into the view, also on failure, so the
 * caller can reset it. */
insitra_status insitra_ckpt_load(const insitra_ckpt_state *st, const char *path, char *path_out,
                                 size_t path_size, insitra_ckpt_touched *touched);

#endif /* INSITRA_CKPT_H */
