/*
 * Damage to a checkpoint file, for the tests that check it is refused
 * (test_checkpoint, test_ckpt_cli_make). Serial HDF5 or POSIX on one rank.
 * Each returns 0 on success, or prints why and returns 1.
 */
#ifndef INSITRA_TEST_CKPT_DAMAGE_H
#define INSITRA_TEST_CKPT_DAMAGE_H

#include <stdint.h>

/* dst = the first fraction of src's bytes. */
int damage_copy(const char *src, const char *dst, double fraction);
/* Flips bits of the byte in the middle of a dataset's raw data. */
int damage_flip_data(const char *file, const char *dataset);
/* Rewrites the integer root attribute name (in place, its type kept). */
int damage_set_int(const char *file, const char *name, int64_t value);
/* Replaces the first `from` in the stored configuration by `to` (same length). */
int damage_config(const char *file, const char *from, const char *to);
/* Makes the file look written by format 1: insitra_format = 1, no
 * meta_crc32c, no crc32c on the integer tables. */
int damage_downgrade(const char *file);

#endif /* INSITRA_TEST_CKPT_DAMAGE_H */
