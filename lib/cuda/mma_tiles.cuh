/*
 * Tensor-core tile helpers shared by the fused attention (attention.cu) and
 * the context-parallel attention blocks (attention_block.cu): cp.async
 * staging of bf16 row tiles into shared memory (rows padded by 16 bytes so
 * the 8 rows one ldmatrix reads start in different banks), ldmatrix
 * fragment addressing, mma.sync m16n8k16 with fp32 accumulators, and the
 * tile products both use. Device code only; sm_80 and newer.
 */
#ifndef INSITRA_CUDA_MMA_TILES_CUH
#define INSITRA_CUDA_MMA_TILES_CUH

#include <cuda_bf16.h>
#include <stdint.h>

namespace insitra_mma {

typedef __nv_bfloat16 bf16;

/* A block of NW warps owns 16 NW rows (queries, or keys in dK/dV) and walks
 * tiles of kTile rows of the other operand. */
constexpr int kTile = 64;

__device__ __forceinline__ uint32_t smem_addr(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}
/* 16 bytes global -> shared, asynchronously; valid == false writes zeros */
__device__ __forceinline__ void cp_async16(void *dst, const void *src, bool valid)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
/* four 8x8 bf16 matrices; lane l gives the address of row l % 8 of matrix l / 8 */
__device__ __forceinline__ void ldsm4(uint32_t r[4], const bf16 *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm4_t(uint32_t r[4], const bf16 *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
/* c (16x8, fp32) += a (16x16, row) b (16x8, col) */
__device__ __forceinline__ void mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t pack2(float lo, float hi)
{
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(const uint32_t *)&v;
}

/*
 * Fragment addressing, lane l of a warp, for a 16x16 piece at (r0, c0) of a
 * row-major shared tile with leading dimension LD:
 *   a_frag:  the A operand (rows r0.., k = c0..): matrices (r0,c0) (r0+8,c0) (r0,c0+8) (r0+8,c0+8)
 *   b_rows:  B from a tile stored [n][k] (keys or queries as rows): gives the
 *            B operands of n-blocks r0 and r0+8 in r[0..1] and r[2..3]
 *   b_trans: B from a tile stored [k][n] (ldmatrix .trans): n-blocks c0 and
 *            c0+8 in r[0..1] and r[2..3]
 */
template <int LD> __device__ __forceinline__ const bf16 *a_frag(const bf16 *s, int r0, int c0, int l)
{
    return s + (r0 + l % 16) * LD + c0 + (l / 16) * 8;
}
template <int LD> __device__ __forceinline__ const bf16 *b_rows(const bf16 *s, int r0, int c0, int l)
{
    return s + (r0 + l % 8 + (l / 16) * 8) * LD + c0 + ((l / 8) % 2) * 8;
}
template <int LD> __device__ __forceinline__ const bf16 *b_trans(const bf16 *s, int r0, int c0, int l)
{
    return s + (r0 + l % 8 + ((l / 8) % 2) * 8) * LD + c0 + (l / 16) * 8;
}

/* Rows r0 .. r0+ROWS-1 (zeros past T) of a (T, HD) matrix with row stride
 * rs into a shared tile of leading dimension HD + 8, by NT threads. */
template <int HD, int NT, int ROWS = kTile>
__device__ __forceinline__ void load_tile(bf16 *dst, const bf16 *src, int64_t rs, int r0, int Tn)
{
    constexpr int chunks = HD / 8;
    for (int c = threadIdx.x; c < ROWS * chunks; c += NT) {
        const int r = c / chunks, k = (c % chunks) * 8;
        const bool ok = r0 + r < Tn;
        cp_async16(dst + r * (HD + 8) + k, src + (int64_t)(ok ? r0 + r : 0) * rs + k, ok);
    }
}

/* Double buffering: queues the next pair of tiles (rows r0.. of a and b)
 * when there is one; wait_current then blocks until the current pair has
 * landed, leaving the queued one in flight. */
template <int HD, int NT>
__device__ __forceinline__ void queue_pair(bool more, bf16 *da, const bf16 *a, int64_t rsa, bf16 *db,
                                           const bf16 *b, int64_t rsb, int r0, int Tn)
{
    if (!more) return;
    load_tile<HD, NT>(da, a, rsa, r0, Tn);
    load_tile<HD, NT>(db, b, rsb, r0, Tn);
    cp_async_commit();
}
__device__ __forceinline__ void wait_current(bool more)
{
    if (more) cp_async_wait<1>();
    else cp_async_wait<0>();
    __syncthreads();
}

/* acc (16 x kTile, as kTile/8 n-blocks) = A (16 x HD, fragments in registers)
 * times the rows of a shared tile (kTile x HD) transposed */
template <int HD>
__device__ __forceinline__ void tile_dot(float acc[kTile / 8][4], const uint32_t a[HD / 16][4],
                                         const bf16 *tile, int lane)
{
#pragma unroll
    for (int n = 0; n < kTile / 8; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++)
#pragma unroll
        for (int n2 = 0; n2 < kTile / 16; n2++) {
            uint32_t b[4];
            ldsm4(b, b_rows<HD + 8>(tile, n2 * 16, kk * 16, lane));
            mma(acc[2 * n2], a[kk], b[0], b[1]);
            mma(acc[2 * n2 + 1], a[kk], b[2], b[3]);
        }
}

/* acc (16 x HD) += P (16 x kTile, accumulator layout, rounded to bf16)
 * times a shared tile (kTile x HD) */
template <int HD>
__device__ __forceinline__ void tile_accumulate(float acc[HD / 8][4], const float p[kTile / 8][4],
                                                const bf16 *tile, int lane)
{
#pragma unroll
    for (int kk = 0; kk < kTile / 16; kk++) {
        /* two accumulator n-blocks form one A fragment of 16 columns */
        const uint32_t a[4] = {pack2(p[2 * kk][0], p[2 * kk][1]), pack2(p[2 * kk][2], p[2 * kk][3]),
                               pack2(p[2 * kk + 1][0], p[2 * kk + 1][1]),
                               pack2(p[2 * kk + 1][2], p[2 * kk + 1][3])};
#pragma unroll
        for (int n2 = 0; n2 < HD / 16; n2++) {
            uint32_t b[4];
            ldsm4_t(b, b_trans<HD + 8>(tile, kk * 16, n2 * 16, lane));
            mma(acc[2 * n2], a, b[0], b[1]);
            mma(acc[2 * n2 + 1], a, b[2], b[3]);
        }
    }
}

/* One tile of keys into a warp's online softmax (16 rows, base-2 units): s
 * (16 x kTile scores, masked ones -inf) becomes the tile's probabilities
 * against the new running maximum, whose per-lane candidates mx holds (the
 * old maximum m and the tile's); the row sums l and the output accumulators
 * o are rescaled by the change of maximum, s's rows added to l. The caller
 * then adds s times the tile's values to o (tile_accumulate). */
template <int HD>
__device__ __forceinline__ void online_softmax_tile(float s[kTile / 8][4], float mx[2], float m[2], float l[2],
                                                    float o[HD / 8][4])
{
    float base[2], alpha[2], sum[2] = {0.f, 0.f};
#pragma unroll
    for (int r = 0; r < 2; r++) {
        /* the four lanes of a row agree on its maximum */
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        base[r] = mx[r] == -INFINITY ? 0.f : mx[r]; /* a row with no key yet stays all zero */
        alpha[r] = exp2f(m[r] - base[r]);
        m[r] = mx[r];
    }
#pragma unroll
    for (int n = 0; n < kTile / 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            s[n][e] = exp2f(s[n][e] - base[e / 2]);
            sum[e / 2] += s[n][e];
        }
#pragma unroll
    for (int r = 0; r < 2; r++) l[r] = l[r] * alpha[r] + sum[r];
#pragma unroll
    for (int n = 0; n < HD / 8; n++) {
        o[n][0] *= alpha[0], o[n][1] *= alpha[0];
        o[n][2] *= alpha[1], o[n][3] *= alpha[1];
    }
}

/* Writes rows (16 x HD accumulators, times scale) of this warp as bf16 pairs;
 * row0 is the warp's first row, rows at or past Tn are skipped. */
template <int HD>
__device__ __forceinline__ void store_rows(bf16 *dst, int64_t rs, const float acc[HD / 8][4],
                                           const float scale[2], int row0, int Tn, int lane)
{
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int row = row0 + lane / 4 + 8 * r;
        if (row >= Tn) continue;
        bf16 *d = dst + (int64_t)row * rs + 2 * (lane % 4);
#pragma unroll
        for (int n = 0; n < HD / 8; n++)
            *(__nv_bfloat162 *)(d + 8 * n) =
                __floats2bfloat162_rn(acc[n][2 * r] * scale[r], acc[n][2 * r + 1] * scale[r]);
    }
}

/* Stages S rows from r0 of two (T, HD) matrices through shared memory into
 * this warp's A fragments (its 16 rows), leaving the buffers free again. */
template <int HD, int NW>
__device__ __forceinline__ void rows_to_frags(uint32_t fa[HD / 16][4], uint32_t fb[HD / 16][4], bf16 *sa,
                                              bf16 *sb, const bf16 *a, int64_t rsa, const bf16 *b,
                                              int64_t rsb, int r0, int Tn)
{
    constexpr int LD = HD + 8, NT = 32 * NW, BR = 16 * NW;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    load_tile<HD, NT, BR>(sa, a, rsa, r0, Tn);
    load_tile<HD, NT, BR>(sb, b, rsb, r0, Tn);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) {
        ldsm4(fa[kk], a_frag<LD>(sa, warp * 16, kk * 16, lane));
        ldsm4(fb[kk], a_frag<LD>(sb, warp * 16, kk * 16, lane));
    }
    __syncthreads();
}

} // namespace insitra_mma

#endif /* INSITRA_CUDA_MMA_TILES_CUH */
