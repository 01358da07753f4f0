/*
 * The last error of the calling thread. Every public entry point returns a
 * status; a failing path records a message here first. Messages name what
 * was wrong: the key, the value, the allowed range, the rank.
 */
#ifndef INSITRA_ERROR_H
#define INSITRA_ERROR_H

#include "insitra.h"

#define INSITRA_ERROR_MAX 1024

/* Records a formatted message and returns status, so a failure reads
 *   return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR, "...", ...); */
insitra_status insitra_error_set(insitra_status status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Prefixes the current message, e.g. with "loading foo.yaml: ". */
insitra_status insitra_error_prefix(insitra_status status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void insitra_error_clear(void);

#define INSITRA_CHECK(call)                                 \
    do {                                                    \
        insitra_status insitra_check_status_ = (call);      \
        if (insitra_check_status_ != INSITRA_STATUS_OK)     \
            return insitra_check_status_;                   \
    } while (0)

#endif /* INSITRA_ERROR_H */
