/*
 * A full disk, for tests (LD_PRELOAD): writes and space reservations under
 * the directory INSITRA_TEST_ENOSPC_DIR fail with ENOSPC once they would
 * take more than INSITRA_TEST_ENOSPC_BUDGET new bytes ("<bytes> <tag>";
 * the count restarts whenever the value changes; unset or empty: no limit).
 * New bytes are those beyond what the file has allocated (st_blocks), so a
 * write into space reserved by posix_fallocate costs nothing, as on a real
 * file system (allocation is taken to grow from the file's start, which is
 * how a reserved checkpoint file grows). Each process keeps its own count; insitra_test_enospc_spent() reports it.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static char last_budget[128];
static int64_t spent;

int64_t insitra_test_enospc_spent(void);
int64_t insitra_test_enospc_spent(void) { return spent; }

/* The file under the watched directory? */
static int watched(int fd)
{
    const char *dir = getenv("INSITRA_TEST_ENOSPC_DIR");
    if (!dir || !dir[0]) return 0;
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    const ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) return 0;
    path[n] = '\0';
    return strncmp(path, dir, strlen(dir)) == 0;
}

/* 0 if the bytes [off, off + len) of fd fit the budget (and are charged),
 * else -1 with errno = ENOSPC. */
static int charge(int fd, int64_t off, int64_t len)
{
    const char *budget = getenv("INSITRA_TEST_ENOSPC_BUDGET");
    if (!budget || !budget[0] || len <= 0 || !watched(fd)) return 0;
    if (strncmp(budget, last_budget, sizeof last_budget) != 0) {
        snprintf(last_budget, sizeof last_budget, "%s", budget);
        spent = 0;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return 0;
    const int64_t allocated = (int64_t)st.st_blocks * 512;
    const int64_t start = off > allocated ? off : allocated;
    const int64_t fresh = off + len > start ? off + len - start : 0;
    if (spent + fresh > atoll(budget)) {
        errno = ENOSPC;
        return -1;
    }
    spent += fresh;
    return 0;
}

#define REAL(name) ((__typeof__(&name))dlsym(RTLD_NEXT, #name))

ssize_t write(int fd, const void *buf, size_t n)
{
    if (charge(fd, (int64_t)lseek(fd, 0, SEEK_CUR), (int64_t)n) != 0) return -1;
    return REAL(write)(fd, buf, n);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
    if (charge(fd, (int64_t)off, (int64_t)n) != 0) return -1;
    return REAL(pwrite)(fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off)
{
    if (charge(fd, (int64_t)off, (int64_t)n) != 0) return -1;
    return REAL(pwrite64)(fd, buf, n, off);
}

static int64_t iov_bytes(const struct iovec *iov, int cnt)
{
    int64_t n = 0;
    for (int i = 0; i < cnt; i++) n += (int64_t)iov[i].iov_len;
    return n;
}

ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
    if (charge(fd, (int64_t)lseek(fd, 0, SEEK_CUR), iov_bytes(iov, cnt)) != 0) return -1;
    return REAL(writev)(fd, iov, cnt);
}

ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
    if (charge(fd, (int64_t)off, iov_bytes(iov, cnt)) != 0) return -1;
    return REAL(pwritev)(fd, iov, cnt, off);
}

int posix_fallocate(int fd, off_t off, off_t len)
{
    if (charge(fd, (int64_t)off, (int64_t)len) != 0) return ENOSPC;
    return REAL(posix_fallocate)(fd, off, len);
}

int posix_fallocate64(int fd, off_t off, off_t len)
{
    if (charge(fd, (int64_t)off, (int64_t)len) != 0) return ENOSPC;
    return REAL(posix_fallocate64)(fd, off, len);
}

int fallocate(int fd, int mode, off_t off, off_t len)
{
    if (charge(fd, (int64_t)off, (int64_t)len) != 0) return -1;
    return REAL(fallocate)(fd, mode, off, len);
}
