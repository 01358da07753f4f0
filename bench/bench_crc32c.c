/*
 * CRC32C throughput: the checkpoint checksums every float32 dataset, about
 * 1 GB for a large model, so the rate decides how much of a save or load the
 * CRCs cost.
 *
 *   bench_crc32c [MiB] [reps]      (default 1024 MiB, 3 repetitions)
 *
 * Times insitra_crc32c (the hardware path when the CPU has SSE4.2) and
 * insitra_crc32c_portable (slicing-by-8) over one buffer, best of reps, and
 * insitra_crc32c_combine for a piece of 2^30 - 1 bytes (thirty set bits: the
 * most products a length below 1 GiB needs). The buffer is written first, so
 * page faults are not timed. Prints one line of key=value pairs last.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "crc32c.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Best time of reps runs of fn over the buffer, in seconds; *crc_out its CRC. */
static double best_time(uint32_t (*fn)(uint32_t, const void *, size_t), const unsigned char *buf,
                        size_t n, int reps, uint32_t *crc_out)
{
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        const double t0 = now();
        *crc_out = fn(0, buf, n);
        const double dt = now() - t0;
        if (dt < best) best = dt;
    }
    return best;
}

int main(int argc, char **argv)
{
    const size_t mib = argc > 1 ? (size_t)atol(argv[1]) : 1024;
    const int reps = argc > 2 ? atoi(argv[2]) : 3;
    if (mib == 0 || reps < 1) {
        fprintf(stderr, "usage: bench_crc32c [MiB] [reps]\n");
        return 2;
    }
    const size_t n = mib << 20;
    unsigned char *buf = malloc(n);
    if (!buf) {
        fprintf(stderr, "bench_crc32c: cannot allocate %zu MiB\n", mib);
        return 1;
    }
    uint64_t x = 0x2545F4914F6CDD1Du;
    for (size_t i = 0; i < n; i++) { /* xorshift bytes: incompressible, every page touched */
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[i] = (unsigned char)x;
    }
    uint32_t crc_hw = 0, crc_sw = 0;
    const double t_hw = best_time(insitra_crc32c, buf, n, reps, &crc_hw);
    const double t_sw = best_time(insitra_crc32c_portable, buf, n, reps, &crc_sw);

    enum { COMBINES = 100000 };
    uint32_t c = crc_hw;
    const double t0 = now();
    for (int i = 0; i < COMBINES; i++)
        c = insitra_crc32c_combine(c, (uint32_t)i, ((uint64_t)1 << 30) - 1);
    const double t_combine = (now() - t0) / COMBINES;

    const double gb = (double)n / 1e9;
    printf("buffer %zu MiB, best of %d\n", mib, reps);
    printf("insitra_crc32c (%s): %.3f s, %.2f GB/s\n",
           insitra_crc32c_hardware() ? "SSE4.2" : "table, no SSE4.2", t_hw, gb / t_hw);
    printf("insitra_crc32c_portable (slicing-by-8): %.3f s, %.2f GB/s\n", t_sw, gb / t_sw);
    printf("insitra_crc32c_combine (len_b = 2^30 - 1): %.0f ns\n", t_combine * 1e9);
    printf("RESULT mib=%zu hardware=%d hw_gbps=%.2f portable_gbps=%.2f combine_ns=%.0f match=%d "
           "sink=%08X\n",
           mib, insitra_crc32c_hardware(), gb / t_hw, gb / t_sw, t_combine * 1e9,
           crc_hw == crc_sw, c);
    free(buf);
    return crc_hw == crc_sw ? 0 : 1;
}
