// Fused INT4 MoE layer for the draft: one launch computes gate and up (dequantized in registers), SiLU,
// down and the gate-weighted sum for T <= 16 tokens whose top-k ids and weights live on the device.
// The machinery (routing, item tickets, deterministic reduction) is in moe_common.cuh.
//
// Packed layout (runtime/int4_pack.py writes it), for a weight [O, I] (out, in) of expert e:
//   codes   uint4  [E, O/16, I/64, 32 lanes]: lane (g, c) of 16-row tile r and 64-wide chunk kc holds one
//           32-bit word per k-tile j = 0..3, 8 nibbles of q + 8: nibble p is row g + 8*(p%2) at position
//           i = 2*((p/2)%2) + p/4, so that (w >> 4s) & 0x000F000F gives fragment register s as two values.
//   scales  uint32 [E, O/16, I/128, 8]: the bf16 scales of rows g (low half) and g + 8 (high half).
// A warp reads 512 contiguous bytes per chunk: 16 bytes a lane, coalesced.
//
// Dequantization is exact: (nibble | 0x4300) is the bf16 number 128 + nibble, and one bf16x2 FMA subtracts
// 136, giving q in [-8, 7] exactly. The unscaled products of a 128-wide group accumulate in fp32 and are
// scaled by the group's (row) scale in fp32 afterwards, so no rounding enters besides fp32 accumulation.

#include "moe_common.cuh"

#ifndef MOE_INT4_STAGES
#define MOE_INT4_STAGES 4  // shared-memory stages per warp in phase 1 (twice as many in phase 2); -D to change
#endif

struct Int4Weights {
    const uint4* gate_q;
    const unsigned* gate_s;
    const uint4* up_q;
    const unsigned* up_s;
    const uint4* down_q;
    const unsigned* down_s;

    __device__ int resolve(int e) const { return e; }  // every INT4 expert is resident, indexed by id

    // fragment registers of one k-tile from its packed word
    static __device__ __forceinline__ void dequant(unsigned w, unsigned (&a)[4]) {
        const unsigned MAGIC = 0x43004300u, ONE = 0x3f803f80u, MINUS_136 = 0xc308c308u;
#pragma unroll
        for (int s = 0; s < 4; ++s) a[s] = bf16x2_fma(((w >> (4 * s)) & 0x000f000fu) | MAGIC, ONE, MINUS_136);
    }

    // acc[NT][4] += scale-per-row * (q @ b) over the two chunks of one 128-wide group
    template <int NT>
    static __device__ __forceinline__ void group_mma(float* acc, const uint4 (&w)[2], unsigned scales,
                                                     const bf16_t* const* rows, int grp, int c, bool two) {
        float t[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) t[nt][i] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < 2; ++kk) {
            unsigned a[4][4];
#pragma unroll
            for (int j = 0; j < 4; ++j) dequant(word(w[kk], j), a[j]);
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                if (nt == 0 || two) {
                    uint4 xb[2];
                    load_b(xb, rows[nt], 2 * grp + kk, c);
                    mma_chunk(t[nt], a, xb);
                }
            }
        }
        const float s_lo = bf16_lo(scales), s_hi = bf16_hi(scales);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            acc[nt * 4 + 0] += s_lo * t[nt][0];
            acc[nt * 4 + 1] += s_lo * t[nt][1];
            acc[nt * 4 + 2] += s_hi * t[nt][2];
            acc[nt * 4 + 3] += s_hi * t[nt][3];
        }
    }

    // Each warp streams its weights through a ring of MOE_INT4_STAGES shared-memory stages (cp.async), so
    // the loads in flight cost no registers. A phase-1 stage holds one 128-wide group of gate and of up for
    // the warp's 16 rows, a phase-2 stage one group of down; phase 2 has twice the stages in the same bytes.
    // Each lane reads back exactly the 16-byte chunks it copied; the scale words are copied once per row
    // pair (lanes with c == 0) and read by 4 lanes.
    static constexpr int STAGE1_WORDS = 4 * 32 + 4;  // uint4: gate chunks 2x32, up chunks 2x32, 8+8 scale words
    static constexpr int STAGE2_WORDS = STAGE1_WORDS / 2;  // down chunks 2x32, 8 scale words
    static constexpr int RING_WORDS = MOE_INT4_STAGES * STAGE1_WORDS;  // per warp

    static __device__ __forceinline__ uint4* ring() {
        extern __shared__ uint4 moe_int4_rings[];  // [warps, RING_WORDS], launched with that much dynamic smem
        return moe_int4_rings + (threadIdx.x >> 5) * RING_WORDS;
    }

    template <int NT>
    __device__ void gate_up(float* acc, int e, int r, const bf16_t* const* xrow, int cnt, const MoeArgs& p,
                            int warp, int nwarps, int lane) const {
        const int KC = p.D / 64, G = p.D / 128, c = lane & 3, g = lane >> 2;
        const size_t tile = (size_t)e * (p.F / 16) + r;
        const uint4* gq = gate_q + tile * KC * 32 + lane;
        const uint4* uq = up_q + tile * KC * 32 + lane;
        const unsigned* gs = gate_s + tile * G * 8 + g;
        const unsigned* us = up_s + tile * G * 8 + g;
        const bool two = NT == 2 && cnt > 8;
        uint4* base = ring();
        pipelined_async<MOE_INT4_STAGES>(warp, G, nwarps,
            [&](int grp, int stage) {
                uint4* st = base + stage * STAGE1_WORDS;
                cp_async16(st + lane, gq + (2 * grp) * 32);
                cp_async16(st + 32 + lane, gq + (2 * grp + 1) * 32);
                cp_async16(st + 64 + lane, uq + (2 * grp) * 32);
                cp_async16(st + 96 + lane, uq + (2 * grp + 1) * 32);
                if (c == 0) {
                    unsigned* sc = reinterpret_cast<unsigned*>(st + 128);
                    cp_async4(sc + g, gs + grp * 8);
                    cp_async4(sc + 8 + g, us + grp * 8);
                }
            },
            [&](int stage, int grp) {
                const uint4* st = base + stage * STAGE1_WORDS;
                const unsigned* sc = reinterpret_cast<const unsigned*>(st + 128);
                const uint4 wg[2] = {st[lane], st[32 + lane]}, wu[2] = {st[64 + lane], st[96 + lane]};
                group_mma<NT>(acc, wg, sc[g], xrow, grp, c, two);
                group_mma<NT>(acc + NT * 4, wu, sc[8 + g], xrow, grp, c, two);
            });
    }

    // split j of J over the chunks of F, in whole 128-wide groups (a group shares its scales)
    static __device__ __forceinline__ void split(int chunks, int J, int j, int& lo, int& hi) {
        const int groups = chunks / 2, per = (groups + J - 1) / J;
        lo = min(groups, j * per) * 2;
        hi = min(groups, (j + 1) * per) * 2;
    }

    template <int NT>
    __device__ void down(float* acc, int e, int r, int lo_chunk, int hi_chunk, const bf16_t* const* hrow, int cnt,
                         const MoeArgs& p, int warp, int nwarps, int lane) const {
        const int KC = p.F / 64, G = p.F / 128, c = lane & 3, g = lane >> 2;
        const size_t tile = (size_t)e * (p.D / 16) + r;
        const uint4* dq = down_q + tile * KC * 32 + lane;
        const unsigned* ds = down_s + tile * G * 8 + g;
        const bool two = NT == 2 && cnt > 8;
        uint4* base = ring();
        pipelined_async<2 * MOE_INT4_STAGES>(lo_chunk / 2 + warp, hi_chunk / 2, nwarps,
            [&](int grp, int stage) {
                uint4* st = base + stage * STAGE2_WORDS;
                cp_async16(st + lane, dq + (2 * grp) * 32);
                cp_async16(st + 32 + lane, dq + (2 * grp + 1) * 32);
                if (c == 0) cp_async4(reinterpret_cast<unsigned*>(st + 64) + g, ds + grp * 8);
            },
            [&](int stage, int grp) {
                const uint4* st = base + stage * STAGE2_WORDS;
                const uint4 w[2] = {st[lane], st[32 + lane]};
                group_mma<NT>(acc, w, reinterpret_cast<const unsigned*>(st + 64)[g], hrow, grp, c, two);
            });
    }
};

template <int NT>
__device__ __forceinline__ void moe_int4(const bf16_t* x, const int* ids, const float* gw, const uint4* gate_q,
                                         const unsigned* gate_s, const uint4* up_q, const unsigned* up_s,
                                         const uint4* down_q, const unsigned* down_s, bf16_t* y, bf16_t* hbuf,
                                         float* partial, int* counters, int T, int K, int E, int D, int F, int J,
                                         int u_cap) {
    const MoeArgs p{x, ids, gw, y, hbuf, partial, counters, T, K, E, D, F, J, u_cap};
    const Int4Weights w{gate_q, gate_s, up_q, up_s, down_q, down_s};
    moe_layer<NT>(p, w);
}

// T <= 8 tokens (one n-tile) and T <= 16 (two)
#define MOE_INT4_ENTRY(NAME, NT)                                                                                  \
    extern "C" __global__ void __launch_bounds__(MOE_MAX_WARPS * 32) NAME(                                      \
        const bf16_t* x, const int* ids, const float* gw, const uint4* gate_q, const unsigned* gate_s,           \
        const uint4* up_q, const unsigned* up_s, const uint4* down_q, const unsigned* down_s, bf16_t* y,          \
        bf16_t* hbuf, float* partial, int* counters, int T, int K, int E, int D, int F, int J, int u_cap) {      \
        moe_int4<NT>(x, ids, gw, gate_q, gate_s, up_q, up_s, down_q, down_s, y, hbuf, partial, counters, T, K, E, \
                     D, F, J, u_cap);                                                                             \
    }

MOE_INT4_ENTRY(moe_int4_t8, 1)
MOE_INT4_ENTRY(moe_int4_t16, 2)
