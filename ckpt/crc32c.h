/*
 * CRC32C (Castagnoli): reflected polynomial 0x82F63B78, initial value and
 * final xor 0xFFFFFFFF, so crc32c("123456789") = 0xE3069283. Every float32
 * dataset of a checkpoint carries the CRC32C of its bytes; each rank
 * checksums the piece it writes and the pieces' CRCs are combined in order
 * (docs/checkpoint.md), so no rank ever holds a whole tensor to check it.
 *
 * The SSE4.2 crc32 instruction is used when the CPU has it (picked once, at
 * the first call), with a portable slicing-by-8 table loop otherwise. Both
 * give the same result for any buffer, length and alignment.
 */
#ifndef INSITRA_CRC32C_H
#define INSITRA_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* The CRC of the bytes seen so far followed by data[0..len). Start from 0:
 * insitra_crc32c(insitra_crc32c(0, a, n), b, m) is the CRC of a || b. */
uint32_t insitra_crc32c(uint32_t crc, const void *data, size_t len);

/* The CRC of a || b from crc_a = CRC(a), crc_b = CRC(b) and b's length in
 * bytes, in O(log len_b) without the data. combine(crc_a, 0, 0) = crc_a. */
uint32_t insitra_crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);

/* The table-driven implementation alone (the tests compare it with the
 * hardware path; insitra_crc32c picks the fastest by itself). */
uint32_t insitra_crc32c_portable(uint32_t crc, const void *data, size_t len);

/* 1 when insitra_crc32c uses the CPU's crc32 instruction, 0 otherwise. */
int insitra_crc32c_hardware(void);

#endif /* INSITRA_CRC32C_H */
