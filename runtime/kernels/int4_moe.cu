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

#define MOE_L2_PREFETCH 1  // phase-2 items prefetch their down weights while they wait (faster at T = 16)
#include "moe_common.cuh"

#ifndef MOE_INT4_DEPTH1
#define MOE_INT4_DEPTH1 2  // register stages of gate+up groups per warp (T <= 8); -D to change. Deeper
#endif                     // stages cost occupancy, which measured worse (runtime/results/README.md)
#ifndef MOE_INT4_DEPTH2
#define MOE_INT4_DEPTH2 2  // register stages of down groups (T <= 8)
#endif

struct Int4Weights {
    const uint4* gate_q;
    const unsigned* gate_s;
    const uint4* up_q;
    const unsigned* up_s;
    const uint4* down_q;
    const unsigned* down_s;

    __device__ int resolve(int e) const { return e; }  // every INT4 expert is resident, indexed by id

    // L2 prefetch of down's chunks [lo, hi) of n <= 8 row tiles from r: codes (lanes 0-7), scales (8-15)
    __device__ void prefetch_down(int e, int r, int n, int lo, int hi, const MoeArgs& p, int lane) const {
        const int KC = p.F / 64, G = p.F / 128, i = lane & 7;
        const size_t tile = (size_t)e * (p.D / 16) + r + i;
        if (i >= n || lo >= hi) return;
        if (lane < 8) prefetch_l2(down_q + (tile * KC + lo) * 32, (hi - lo) * 512);
        else if (lane < 16) prefetch_l2(down_s + (tile * G + lo / 2) * 8, (hi - lo) / 2 * 32);
    }

    // fragment registers of one k-tile from its packed word
    static __device__ __forceinline__ void dequant(unsigned w, unsigned (&a)[4]) {
        const unsigned MAGIC = 0x43004300u, ONE = 0x3f803f80u, MINUS_136 = 0xc308c308u;
#pragma unroll
        for (int s = 0; s < 4; ++s) a[s] = bf16x2_fma(and_or(w >> (4 * s), 0x000f000fu, MAGIC), ONE, MINUS_136);
    }

    // acc[m][NT][4] += scale-per-row * (q_m @ b) for the M matrices (gate and up, or down) of one 128-wide
    // group, two chunks. The B rows of a chunk are loaded once for all M (L1 hits: prefetch_rows); loading
    // them per chunk rather than all up front keeps the kernel at <= 128 registers, and occupancy mattered
    // more than the hoist in measurements (runtime/results/README.md).
    template <int NT, int M>
    static __device__ __forceinline__ void group_mma(float* acc, const uint4 (&w)[M][2], const unsigned (&scales)[M],
                                                     const bf16_t* const* rows, int grp, int c, bool two) {
        float t[M][NT][4];
#pragma unroll
        for (int m = 0; m < M; ++m)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i) t[m][nt][i] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < 2; ++kk) {
            uint4 b[NT][2];
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                if (nt == 0 || two) load_b(b[nt], rows[nt], 2 * grp + kk, c);
            }
#pragma unroll
            for (int m = 0; m < M; ++m) {
                unsigned a[4][4];
#pragma unroll
                for (int j = 0; j < 4; ++j) dequant(word(w[m][kk], j), a[j]);
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
                    if (nt == 0 || two) mma_chunk(t[m][nt], a, b[nt]);
                }
            }
        }
#pragma unroll
        for (int m = 0; m < M; ++m) {
            const float s_lo = bf16_lo(scales[m]), s_hi = bf16_hi(scales[m]);
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                float* o = acc + (m * NT + nt) * 4;
                o[0] += s_lo * t[m][nt][0];
                o[1] += s_lo * t[m][nt][1];
                o[2] += s_hi * t[m][nt][2];
                o[3] += s_hi * t[m][nt][3];
            }
        }
    }

    // Register pipeline depth (weights only; B rows come from L1).
    template <int NT> static constexpr int DEPTH1 = NT == 1 ? MOE_INT4_DEPTH1 : 2;
    template <int NT> static constexpr int DEPTH2 = NT == 1 ? MOE_INT4_DEPTH2 : 2;

    template <int M> struct Stage { uint4 w[M][2]; unsigned s[M]; };  // one group of M matrices

    // ks-th of KS slices of the D reduction of row tile r: groups ks, ks + KS, ...
    template <int NT>
    __device__ void gate_up(float* acc, int e, int r, const bf16_t* const* xrow, int cnt, const MoeArgs& p,
                            int ks, int KS, int lane) const {
        const int KC = p.D / 64, G = p.D / 128, c = lane & 3;
        const size_t tile = (size_t)e * (p.F / 16) + r;
        const uint4* gq = gate_q + tile * KC * 32 + lane;
        const uint4* uq = up_q + tile * KC * 32 + lane;
        const unsigned* gs = gate_s + tile * G * 8 + (lane >> 2);
        const unsigned* us = up_s + tile * G * 8 + (lane >> 2);
        const bool two = NT == 2 && cnt > 8;
        pipelined<DEPTH1<NT>, Stage<2>>(ks, G, KS,
            [&](int grp) {
                Stage<2> s;
                s.w[0][0] = ld_stream(gq + (2 * grp) * 32);
                s.w[0][1] = ld_stream(gq + (2 * grp + 1) * 32);
                s.w[1][0] = ld_stream(uq + (2 * grp) * 32);
                s.w[1][1] = ld_stream(uq + (2 * grp + 1) * 32);
                s.s[0] = ld_stream32(gs + grp * 8);
                s.s[1] = ld_stream32(us + grp * 8);
                return s;
            },
            [&](const Stage<2>& s, int grp) { group_mma<NT, 2>(acc, s.w, s.s, xrow, grp, c, two); });
    }

    // split j of J over the chunks of F, in whole 128-wide groups (a group shares its scales)
    static __device__ __forceinline__ void split(int chunks, int J, int j, int& lo, int& hi) {
        const int groups = chunks / 2, per = (groups + J - 1) / J;
        lo = min(groups, j * per) * 2;
        hi = min(groups, (j + 1) * per) * 2;
    }

    template <int NT>
    __device__ void down(float* acc, int e, int r, int lo_chunk, int hi_chunk, const bf16_t* const* hrow, int cnt,
                         const MoeArgs& p, int ks, int KS, int lane) const {
        const int KC = p.F / 64, G = p.F / 128, c = lane & 3;
        const size_t tile = (size_t)e * (p.D / 16) + r;
        const uint4* dq = down_q + tile * KC * 32 + lane;
        const unsigned* ds = down_s + tile * G * 8 + (lane >> 2);
        const bool two = NT == 2 && cnt > 8;
        pipelined<DEPTH2<NT>, Stage<1>>(lo_chunk / 2 + ks, hi_chunk / 2, KS,
            [&](int grp) {
                Stage<1> s;
                s.w[0][0] = ld_stream(dq + (2 * grp) * 32);
                s.w[0][1] = ld_stream(dq + (2 * grp + 1) * 32);
                s.s[0] = ld_stream32(ds + grp * 8);
                return s;
            },
            [&](const Stage<1>& s, int grp) { group_mma<NT, 1>(acc, s.w, s.s, hrow, grp, c, two); });
    }
};

template <int NT>
__device__ __forceinline__ void moe_int4(const bf16_t* x, const int* ids, const float* gw, const uint4* gate_q,
                                         const unsigned* gate_s, const uint4* up_q, const unsigned* up_s,
                                         const uint4* down_q, const unsigned* down_s, bf16_t* y, bf16_t* hbuf,
                                         float* partial, int* counters, int T, int K, int E, int D, int F, int J,
                                         int KS, int u_cap) {
    const MoeArgs p{x, ids, gw, y, hbuf, partial, counters, T, K, E, D, F, J, KS, u_cap};
    const Int4Weights w{gate_q, gate_s, up_q, up_s, down_q, down_s};
    moe_layer<NT>(p, w);
}

#define MOE_INT4_ENTRY(NAME, NT, BOUNDS)                                                                          \
    extern "C" __global__ void BOUNDS NAME(                                                                      \
        const bf16_t* x, const int* ids, const float* gw, const uint4* gate_q, const unsigned* gate_s,           \
        const uint4* up_q, const unsigned* up_s, const uint4* down_q, const unsigned* down_s, bf16_t* y,          \
        bf16_t* hbuf, float* partial, int* counters, int T, int K, int E, int D, int F, int J, int KS,           \
        int u_cap) {                                                                                              \
        moe_int4<NT>(x, ids, gw, gate_q, gate_s, up_q, up_s, down_q, down_s, y, hbuf, partial, counters, T, K, E, \
                     D, F, J, KS, u_cap);                                                                         \
    }

// T <= 8 tokens (one n-tile) and T <= 16 (two). T <= 16: at most 168 registers, so that 3 blocks of 4 warps fit
// an SM; NVRTC otherwise allocates 202 (2 blocks: 20-25 % slower at T = 16, run 11), and 168 does not spill.
MOE_INT4_ENTRY(moe_int4_t8, 1, __launch_bounds__(MOE_MAX_WARPS * 32))
MOE_INT4_ENTRY(moe_int4_t16, 2, __maxnreg__(168))
