#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char last_error[INSITRA_ERROR_MAX];

const char *insitra_last_error(void) { return last_error; }

void insitra_error_clear(void) { last_error[0] = '\0'; }

insitra_status insitra_error_set(insitra_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return status;
}

insitra_status insitra_error_prefix(insitra_status status, const char *fmt, ...)
{
    char prefix[INSITRA_ERROR_MAX];
    char old[INSITRA_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, last_error, sizeof old);
    /* Truncation is fine: the message stays NUL-terminated. */
    size_t len = strlen(prefix);
    if (len >= sizeof last_error) len = sizeof last_error - 1;
    memcpy(last_error, prefix, len);
    size_t rest = strlen(old);
    if (rest > sizeof last_error - 1 - len) rest = sizeof last_error - 1 - len;
    memcpy(last_error + len, old, rest);
    last_error[len + rest] = '\0';
    return status;
}

const char *insitra_status_name(insitra_status status)
{
    switch (status) {
    case INSITRA_STATUS_OK: return "INSITRA_STATUS_OK";
    case INSITRA_STATUS_INVALID_ARGUMENT: return "INSITRA_STATUS_INVALID_ARGUMENT";
    case INSITRA_STATUS_CONFIG_ERROR: return "INSITRA_STATUS_CONFIG_ERROR";
    case INSITRA_STATUS_PARSE_ERROR: return "INSITRA_STATUS_PARSE_ERROR";
    case INSITRA_STATUS_IO_ERROR: return "INSITRA_STATUS_IO_ERROR";
    case INSITRA_STATUS_OUT_OF_MEMORY: return "INSITRA_STATUS_OUT_OF_MEMORY";
    case INSITRA_STATUS_MPI_ERROR: return "INSITRA_STATUS_MPI_ERROR";
    case INSITRA_STATUS_NOT_READY: return "INSITRA_STATUS_NOT_READY";
    case INSITRA_STATUS_NUMERICAL_ERROR: return "INSITRA_STATUS_NUMERICAL_ERROR";
    case INSITRA_STATUS_REMOTE_ERROR: return "INSITRA_STATUS_REMOTE_ERROR";
    case INSITRA_STATUS_DEVICE_ERROR: return "INSITRA_STATUS_DEVICE_ERROR";
    }
    return "INSITRA_STATUS_UNKNOWN";
}

#define INSITRA_STR2(x) #x
#define INSITRA_STR(x) INSITRA_STR2(x)
const char *insitra_version(void)
{
    return INSITRA_STR(INSITRA_VERSION_MAJOR) "." INSITRA_STR(INSITRA_VERSION_MINOR) "." INSITRA_STR(
        INSITRA_VERSION_PATCH);
}
