/*
 * CRC32C, two ways: the SSE4.2 crc32 instruction on three interleaved
 * streams, and a portable slicing-by-8 table loop. Combining CRCs (and the
 * interleaved streams) uses the algebra of CRCs over GF(2):
 *
 *   CRC(a || b) = CRC(a) * x^(8 |b|) mod P  xor  CRC(b)
 *
 * where the product is polynomial multiplication modulo the CRC polynomial,
 * in the reflected bit order (bit 31 is x^0). x^(8n) is built from a table of
 * x^(2^k), one product per set bit of n: O(log n).
 */
#include "crc32c.h"

#include <pthread.h>
#include <string.h>

#define CRC32C_POLY 0x82F63B78u /* reflected Castagnoli polynomial */

/* The crc32 instruction of SSE4.2 (x86-64), called through GCC/Clang builtins
 * from functions compiled for it, and used only when the CPU reports it. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define CRC32C_HAVE_SSE42 1
#endif

/* The hardware path runs three streams of LANE_LONG bytes each (the crc32
 * instruction has a latency of three cycles and a throughput of one), then
 * of LANE_SHORT bytes for the rest of a buffer, then one stream. */
enum { LANE_LONG = 8192, LANE_SHORT = 256 };

static struct {
    uint32_t slice[8][256];    /* slice[k][b]: byte b followed by k zero bytes */
    uint32_t x2n[67];          /* x^(2^k) mod P; combine needs k up to 3 + 63 */
    uint32_t shift_long[4][256];  /* the operator "times x^(8 LANE_LONG)", a byte at a time */
    uint32_t shift_short[4][256]; /* the same for LANE_SHORT */
    int hardware;
} tables;

static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

/* a * b mod P, both in reflected order. */
static uint32_t multmodp(uint32_t a, uint32_t b)
{
    uint32_t p = 0;
    for (int i = 0; i < 32 && a; i++, a <<= 1) {
        if (a & 0x80000000u) p ^= b;
        b = (b >> 1) ^ (CRC32C_POLY & (0u - (b & 1u)));
    }
    return p;
}

/* x^(8 n) mod P: the factor that appends n zero bytes to a CRC register. */
static uint32_t x8nmodp(uint64_t n)
{
    uint32_t p = 0x80000000u; /* x^0 */
    for (int k = 3; n; n >>= 1, k++)
        if (n & 1) p = multmodp(tables.x2n[k], p);
    return p;
}

static void shift_table_init(uint32_t table[4][256], uint64_t bytes)
{
    const uint32_t factor = x8nmodp(bytes);
    for (int k = 0; k < 4; k++)
        for (uint32_t b = 0; b < 256; b++) table[k][b] = multmodp(factor, b << (8 * k));
}

#ifdef CRC32C_HAVE_SSE42
static int cpu_has_sse42(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse4.2");
}
#else
static int cpu_has_sse42(void) { return 0; }
#endif

static void tables_init(void)
{
    for (uint32_t b = 0; b < 256; b++) {
        uint32_t c = b;
        for (int i = 0; i < 8; i++) c = (c >> 1) ^ (CRC32C_POLY & (0u - (c & 1u)));
        tables.slice[0][b] = c;
    }
    for (int k = 1; k < 8; k++)
        for (int b = 0; b < 256; b++) {
            const uint32_t prev = tables.slice[k - 1][b];
            tables.slice[k][b] = (prev >> 8) ^ tables.slice[0][prev & 0xff];
        }
    tables.x2n[0] = 0x40000000u; /* x^1 */
    for (int k = 1; k < 67; k++) tables.x2n[k] = multmodp(tables.x2n[k - 1], tables.x2n[k - 1]);
    shift_table_init(tables.shift_long, LANE_LONG);
    shift_table_init(tables.shift_short, LANE_SHORT);
    tables.hardware = cpu_has_sse42() != 0;
}

/* Eight bytes as a little-endian word, whatever the host's byte order and
 * the pointer's alignment (compilers turn this into one load). */
static uint64_t load_le64(const unsigned char *p)
{
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24 |
           (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 | (uint64_t)p[6] << 48 |
           (uint64_t)p[7] << 56;
}

/* The raw register (no initial or final xor) over len bytes, slicing-by-8. */
static uint32_t register_portable(uint32_t c, const unsigned char *p, size_t len)
{
    uint32_t(*t)[256] = tables.slice;
    for (; len >= 8; p += 8, len -= 8) {
        const uint64_t w = load_le64(p) ^ c;
        c = t[7][w & 0xff] ^ t[6][(w >> 8) & 0xff] ^ t[5][(w >> 16) & 0xff] ^
            t[4][(w >> 24) & 0xff] ^ t[3][(w >> 32) & 0xff] ^ t[2][(w >> 40) & 0xff] ^
            t[1][(w >> 48) & 0xff] ^ t[0][w >> 56];
    }
    for (; len; p++, len--) c = (c >> 8) ^ t[0][(c ^ *p) & 0xff];
    return c;
}

#ifdef CRC32C_HAVE_SSE42
/* The register times x^(8 lane) mod P, by table: the operator is linear. */
static uint32_t shift(uint32_t table[4][256], uint32_t crc)
{
    return table[0][crc & 0xff] ^ table[1][(crc >> 8) & 0xff] ^ table[2][(crc >> 16) & 0xff] ^
           table[3][crc >> 24];
}

/* Three streams of lane bytes each from c0: b = p[lane..2 lane) and
 * c = p[2 lane..3 lane) start from a zero register, and
 * R(a || b || c) = (R(a) * x^(8 lane) ^ R0(b)) * x^(8 lane) ^ R0(c). */
__attribute__((target("sse4.2"))) static uint64_t
register_sse42_lanes(uint64_t c0, const unsigned char *p, size_t lane,
                     uint32_t table[4][256])
{
    uint64_t c1 = 0, c2 = 0;
    for (size_t i = 0; i < lane; i += 8) {
        uint64_t w0, w1, w2;
        memcpy(&w0, p + i, 8);
        memcpy(&w1, p + lane + i, 8);
        memcpy(&w2, p + 2 * lane + i, 8);
        c0 = __builtin_ia32_crc32di(c0, w0);
        c1 = __builtin_ia32_crc32di(c1, w1);
        c2 = __builtin_ia32_crc32di(c2, w2);
    }
    c0 = shift(table, (uint32_t)c0) ^ c1;
    return shift(table, (uint32_t)c0) ^ c2;
}

/* The crc32 instruction reads its operand little-endian, as the CRC wants:
 * this path exists only on x86, so memcpy into a word is the right order. */
__attribute__((target("sse4.2"))) static uint32_t register_sse42(uint32_t crc,
                                                                const unsigned char *p,
                                                                size_t len)
{
    uint64_t c = crc;
    for (; len >= 3 * (size_t)LANE_LONG; p += 3 * LANE_LONG, len -= 3 * LANE_LONG)
        c = register_sse42_lanes(c, p, LANE_LONG, tables.shift_long);
    for (; len >= 3 * (size_t)LANE_SHORT; p += 3 * LANE_SHORT, len -= 3 * LANE_SHORT)
        c = register_sse42_lanes(c, p, LANE_SHORT, tables.shift_short);
    for (; len >= 8; p += 8, len -= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = __builtin_ia32_crc32di(c, w);
    }
    uint32_t c32 = (uint32_t)c;
    for (; len; p++, len--) c32 = __builtin_ia32_crc32qi(c32, *p);
    return c32;
}
#endif

uint32_t insitra_crc32c_portable(uint32_t crc, const void *data, size_t len)
{
    pthread_once(&tables_once, tables_init);
    return ~register_portable(~crc, data, len);
}

uint32_t insitra_crc32c(uint32_t crc, const void *data, size_t len)
{
    pthread_once(&tables_once, tables_init);
#ifdef CRC32C_HAVE_SSE42
    if (tables.hardware) return ~register_sse42(~crc, data, len);
#endif
    return ~register_portable(~crc, data, len);
}

uint32_t insitra_crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b)
{
    pthread_once(&tables_once, tables_init);
    return multmodp(x8nmodp(len_b), crc_a) ^ crc_b;
}

int insitra_crc32c_hardware(void)
{
    pthread_once(&tables_once, tables_init);
    return tables.hardware;
}
