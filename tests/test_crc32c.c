/*
 * CRC32C: the published check values; chaining; combine against the CRC of
 * the concatenation for random splits into pieces (empty ones included), the
 * way a checkpoint's ranks combine the CRCs of their shards; and the hardware
 * path against the table path and a bit-at-a-time reference on random
 * buffers of every length class, at every alignment.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crc32c.h"
#include "test_util.h"

/* One bit at a time, straight from the definition: the reference. */
static uint32_t crc32c_bitwise(uint32_t crc, const unsigned char *p, size_t len)
{
    crc = ~crc;
    for (size_t i = 0; i < len; i++) {
        crc ^= p[i];
        for (int b = 0; b < 8; b++) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
    }
    return ~crc;
}

/* splitmix64: a reproducible stream of test data. */
static uint64_t rng_state = 0x9E3779B97F4A7C15u;
static uint64_t next_u64(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15u);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
    return z ^ (z >> 31);
}
static size_t below(size_t n) { return n ? (size_t)(next_u64() % n) : 0; }
static void fill(unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)next_u64();
}

static void test_check_values(insitra_test *tc)
{
    const char *digits = "123456789";
    EXPECT(tc, insitra_crc32c(0, digits, 9) == 0xE3069283u, "crc32c(\"123456789\") = %08X",
           insitra_crc32c(0, digits, 9));
    EXPECT(tc, insitra_crc32c_portable(0, digits, 9) == 0xE3069283u, "portable crc32c(\"123456789\") = %08X",
           insitra_crc32c_portable(0, digits, 9));
    EXPECT(tc, insitra_crc32c(0, NULL, 0) == 0, "the CRC of nothing is 0");
    EXPECT(tc, insitra_crc32c(0x12345678u, NULL, 0) == 0x12345678u, "no bytes leave a CRC as it was");

    /* The iSCSI test vectors of RFC 3720, B.4: 32 bytes each. */
    unsigned char zeros[32], ones[32], up[32], down[32];
    for (int i = 0; i < 32; i++) {
        zeros[i] = 0;
        ones[i] = 0xFF;
        up[i] = (unsigned char)i;
        down[i] = (unsigned char)(31 - i);
    }
    const struct {
        const unsigned char *data;
        uint32_t crc;
        const char *name;
    } vectors[] = {{zeros, 0x8A9136AAu, "32 zero bytes"},
                   {ones, 0x62A8AB43u, "32 bytes 0xFF"},
                   {up, 0x46DD794Eu, "bytes 0..31"},
                   {down, 0x113FDB5Cu, "bytes 31..0"}};
    for (size_t v = 0; v < sizeof vectors / sizeof vectors[0]; v++) {
        const uint32_t hw = insitra_crc32c(0, vectors[v].data, 32);
        const uint32_t sw = insitra_crc32c_portable(0, vectors[v].data, 32);
        EXPECT(tc, hw == vectors[v].crc && sw == vectors[v].crc, "%s: %08X and %08X, expected %08X",
               vectors[v].name, hw, sw, vectors[v].crc);
    }
}

/* Chaining, and combine, over random splits of one buffer into pieces. */
static void test_chaining_and_combine(insitra_test *tc)
{
    enum { N = 200000, TRIALS = 300, MAX_PIECES = 9 };
    unsigned char *buf = malloc(N);
    fill(buf, N);
    const uint32_t whole = insitra_crc32c(0, buf, N);
    EXPECT(tc, whole == crc32c_bitwise(0, buf, N), "whole buffer: %08X vs reference %08X", whole,
           crc32c_bitwise(0, buf, N));
    int bad_chain = 0, bad_combine = 0;
    for (int trial = 0; trial < TRIALS; trial++) {
        /* A prefix of random length cut into pieces at random points; equal
         * cut points make empty pieces, and some trials force them. */
        const size_t len = trial < 10 ? (size_t)trial : below(N + 1);
        const int pieces = 1 + (int)below(MAX_PIECES);
        size_t cuts[MAX_PIECES + 1];
        cuts[0] = 0;
        cuts[pieces] = len;
        for (int i = 1; i < pieces; i++) cuts[i] = (trial % 3 == 0) ? cuts[i - 1] : below(len + 1);
        for (int i = 1; i < pieces; i++) /* insertion sort of the inner cuts */
            for (int j = i; j > 1 && cuts[j] < cuts[j - 1]; j--) {
                const size_t t = cuts[j];
                cuts[j] = cuts[j - 1];
                cuts[j - 1] = t;
            }
        const uint32_t direct = insitra_crc32c(0, buf, len);
        uint32_t chained = 0, combined = 0;
        for (int i = 0; i < pieces; i++) {
            const size_t n = cuts[i + 1] - cuts[i];
            chained = insitra_crc32c(chained, buf + cuts[i], n);
            combined = insitra_crc32c_combine(combined, insitra_crc32c(0, buf + cuts[i], n), n);
        }
        if (chained != direct && bad_chain++ < 5)
            EXPECT(tc, false, "chaining %d pieces of %zu bytes: %08X, direct %08X", pieces, len, chained,
                   direct);
        if (combined != direct && bad_combine++ < 5)
            EXPECT(tc, false, "combining %d pieces of %zu bytes: %08X, direct %08X", pieces, len, combined,
                   direct);
    }
    EXPECT(tc, insitra_crc32c_combine(whole, 0, 0) == whole, "combine with an empty b");
    EXPECT(tc, insitra_crc32c_combine(0, whole, N) == whole, "combine with an empty a");

    /* Lengths beyond any buffer (a 1 TiB tensor): combine stays associative,
     * (a || b) || c = a || (b || c), for 64-bit lengths. */
    const uint32_t a = insitra_crc32c(0, buf, 1000), b = insitra_crc32c(0, buf + 1000, 3000);
    const uint32_t ab = insitra_crc32c_combine(a, b, 3000);
    EXPECT(tc, ab == insitra_crc32c(0, buf, 4000), "combine of 1000 + 3000 bytes");
    const uint64_t big = (uint64_t)1 << 40 | 12345u;
    const uint32_t z1 = 0x0BADF00Du, z2 = 0x600DCAFEu;
    const uint32_t left = insitra_crc32c_combine(insitra_crc32c_combine(ab, z1, big), z2, 17);
    const uint32_t right = insitra_crc32c_combine(ab, insitra_crc32c_combine(z1, z2, 17), big + 17);
    EXPECT(tc, left == right, "combine is associative at 2^40-byte lengths: %08X vs %08X", left, right);
    free(buf);
}

/* The hardware path, the table path and the reference agree for every
 * length class (the tails, one and several short lanes, long lanes) at
 * every alignment and for any starting CRC. */
static void test_hardware_equals_portable(insitra_test *tc)
{
    enum { MAX = 3 * 8192 * 3 + 3 * 256 * 2 + 64 };
    unsigned char *storage = malloc(MAX + 16);
    fill(storage, MAX + 16);
    const size_t lengths[] = {0,     1,     7,     8,     9,     15,    63,    255,   767,
                              768,   769,   1535,  1537,  2303,  24575, 24576, 24577, 24583,
                              49151, 49159, 50000, 73727, 73728, MAX - 1, MAX};
    int bad = 0, checked = 0;
    for (size_t li = 0; li < sizeof lengths / sizeof lengths[0]; li++)
        for (size_t align = 0; align < 16; align++) {
            const unsigned char *p = storage + align;
            const size_t len = lengths[li];
            const uint32_t seed = align & 1 ? (uint32_t)next_u64() : 0;
            const uint32_t hw = insitra_crc32c(seed, p, len);
            const uint32_t sw = insitra_crc32c_portable(seed, p, len);
            const uint32_t ref = len <= 4096 || align == 3 ? crc32c_bitwise(seed, p, len) : sw;
            checked++;
            if ((hw != sw || sw != ref) && bad++ < 5)
                EXPECT(tc, false,
                       "length %zu at offset %zu from %08X: hardware %08X, portable %08X, "
                       "reference %08X",
                       len, align, seed, hw, sw, ref);
        }
    /* Random odd lengths at random offsets. */
    for (int trial = 0; trial < 200; trial++) {
        const size_t len = below(MAX) | 1, align = below(16);
        const unsigned char *p = storage + align;
        const uint32_t hw = insitra_crc32c(0, p, len > MAX - align ? MAX - align : len);
        const uint32_t sw = insitra_crc32c_portable(0, p, len > MAX - align ? MAX - align : len);
        checked++;
        if (hw != sw && bad++ < 5)
            EXPECT(tc, false, "random length %zu at offset %zu: hardware %08X, portable %08X", len, align, hw,
                   sw);
    }
    printf("crc32c: %s path; %d buffers compared with the table path, %d differ\n",
           insitra_crc32c_hardware() ? "SSE4.2 hardware" : "no hardware (table)", checked, bad);
    free(storage);
}

int main(int argc, char **argv)
{
    insitra_test tc = insitra_test_begin(&argc, &argv, "crc32c");
    test_check_values(&tc);
    test_chaining_and_combine(&tc);
    test_hardware_equals_portable(&tc);
    return insitra_test_end(&tc);
}
