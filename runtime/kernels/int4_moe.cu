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
// Dequantization is exact: (nibble | 0x4300) is the bf16 number 128 + nibble = 136 + q, q in [-8, 7], and the
// 136 leaves the sum through an mma of -136 with the same activations (mma_chunk_offset). The unscaled products of a
// 128-wide group accumulate in fp32 and are scaled by the group's (row) scale in fp32 afterwards, so no
// rounding enters besides fp32 accumulation.

#define MOE_L2_PREFETCH 1  // phase-2 items prefetch their down weights while they wait (faster at T = 16)
#include "moe_common.cuh"

#ifndef MOE_INT4_DEPTH1
#define MOE_INT4_DEPTH1 2  // register stages of gate+up groups per warp (T <= 8); -D to change. Deeper
#endif                     // stages cost occupancy, which measured worse (runtime/results/README.md)
#ifndef MOE_INT4_OFFSET_MMA
#define MOE_INT4_OFFSET_MMA 1  // tiled T <= 8: 136 removed by an mma per k-tile rather than per weight pair
#endif
#ifndef MOE_INT4_CHAINS
#define MOE_INT4_CHAINS 1  // accumulator chains per matrix in the tiled T <= 8 kernel (group_mma)
#endif
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

    // fragment registers of one k-tile from its packed word: bf16 pairs of 136 + q ((nibble | 0x4300) is the
    // bf16 number 128 + nibble, nibble = q + 8), or of q with one bf16x2 FMA more per pair (SUB); exact.
    template <bool SUB>
    static __device__ __forceinline__ void dequant(unsigned w, unsigned (&a)[4]) {
        const unsigned MAGIC = 0x43004300u, ONE = 0x3f803f80u, MINUS_136 = 0xc308c308u;
#pragma unroll
        for (int s = 0; s < 4; ++s) {
            a[s] = and_or(w >> (4 * s), 0x000f000fu, MAGIC);
            if (SUB) a[s] = bf16x2_fma(a[s], ONE, MINUS_136);
        }
    }

    // acc[m][NT][4] += scale-per-row * (q_m @ b) for the M matrices (gate and up, or down) of one 128-wide
    // group, two chunks; load_b(b, nt, kk) fetches the B halves of chunk kk for n-tile nt, once for all M.
    // OFFSET: each k-tile's mma of (q + 136) is followed by one of -136 with the same B, into the same
    // accumulators: one mma per 32-bit word instead of 4 bf16x2 subtractions, no extra live registers, and the
    // running sum stays as small as sum(q * b) (136 * b cancels tile by tile; exact products, fp32 sums either
    // way). CHAINS = 2 gives each chunk its own accumulators: two independent tensor-core dependency chains
    // per matrix instead of one, for 4 * M * NT more registers.
    template <int NT, int M, int CHAINS, bool OFFSET, class LoadB>
    static __device__ __forceinline__ void group_mma(float* acc, const uint4 (&w)[M][2], const unsigned (&scales)[M],
                                                     LoadB load_b, bool two) {
        float t[M][NT][CHAINS][4];
#pragma unroll
        for (int m = 0; m < M; ++m)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int k = 0; k < CHAINS; ++k)
#pragma unroll
                    for (int i = 0; i < 4; ++i) t[m][nt][k][i] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < 2; ++kk) {
            uint4 b[NT][2];
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                if (nt == 0 || two) load_b(b[nt], nt, kk);
            }
#pragma unroll
            for (int m = 0; m < M; ++m) {
                unsigned a[4][4];
#pragma unroll
                for (int j = 0; j < 4; ++j) dequant<!OFFSET>(word(w[m][kk], j), a[j]);
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
                    if (nt == 0 || two) {
                        if (OFFSET) mma_chunk_offset(t[m][nt][kk % CHAINS], a, b[nt]);
                        else mma_chunk(t[m][nt][kk % CHAINS], a, b[nt]);
                    }
                }
            }
        }
#pragma unroll
        for (int m = 0; m < M; ++m) {
            const float s_lo = bf16_lo(scales[m]), s_hi = bf16_hi(scales[m]);
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                float v[4];
#pragma unroll
                for (int i = 0; i < 4; ++i) v[i] = CHAINS == 2 ? t[m][nt][0][i] + t[m][nt][CHAINS - 1][i] : t[m][nt][0][i];
                float* o = acc + (m * NT + nt) * 4;
                o[0] += s_lo * v[0];
                o[1] += s_lo * v[1];
                o[2] += s_hi * v[2];
                o[3] += s_hi * v[3];
            }
        }
    }

    // d += (A - 136) B for one 64-wide chunk: the tile's mma, then -136 (every A value) times the same B
    static __device__ __forceinline__ void mma_chunk_offset(float* d, const unsigned (&a)[4][4], const uint4 (&xb)[2]) {
        const unsigned MINUS_136 = 0xc308c308u;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const unsigned b0 = word(xb[j >> 1], 2 * (j & 1)), b1 = word(xb[j >> 1], 2 * (j & 1) + 1);
            mma_bf16(d, a[j][0], a[j][1], a[j][2], a[j][3], b0, b1);
            mma_bf16(d, MINUS_136, MINUS_136, MINUS_136, MINUS_136, b0, b1);
        }
    }

    // Register pipeline depth (weights only; B rows come from L1).
    template <int NT> static constexpr int DEPTH1 = NT == 1 ? MOE_INT4_DEPTH1 : 2;
    template <int NT> static constexpr int DEPTH2 = NT == 1 ? MOE_INT4_DEPTH2 : 2;
    // The offset mma at T <= 8 only: at T <= 16 the compiler then wants ~200 registers (3 -> 2 blocks per SM).
    template <int NT> static constexpr bool OFFSET = NT == 1 && MOE_INT4_OFFSET_MMA;
    template <int NT> static constexpr int CHAINS = NT == 1 ? MOE_INT4_CHAINS : 1;  // T <= 16 has no registers to spare

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
            [&](const Stage<2>& s, int grp) {
                group_mma<NT, 2, CHAINS<NT>, OFFSET<NT>>(acc, s.w, s.s, [&](uint4 (&b)[2], int nt, int kk) {
                    load_b(b, xrow[nt], 2 * grp + kk, c); }, two);
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
            [&](const Stage<1>& s, int grp) {
                group_mma<NT, 1, CHAINS<NT>, OFFSET<NT>>(acc, s.w, s.s, [&](uint4 (&b)[2], int nt, int kk) {
                    load_b(b, hrow[nt], 2 * grp + kk, c); }, two);
            });
    }
};

// ---- streaming kernel (T <= 8): per-warp work units, weights through a shared-memory ring -------------------
//
// The tiled kernel keeps a warp's loads in flight in registers (2 groups deep at 128 registers), and a block
// meets at a barrier per item; at T = 1 a warp then waits on memory once per group. Here each warp owns a
// ring of S stages in shared memory that its lanes fill with cp.async (one mbarrier per stage), so S - 1
// stages stay in flight without holding registers, and the ring keeps streaming across work units:
// the warp claims its next unit from the ticket counter when it has issued the last stage of the current one.
//   unit (phase 1, u, r): gate and up of row tile r of expert u over all of D; a stage is one 128-wide group:
//                         gate and up codes (2 x 1 KiB), their scales (2 x 32 B), the group's x rows
//   unit (phase 2, u, r): down of row tile r over all of F; a stage is two groups of codes and scales and
//                         the matching h rows; the tile's weighted partial goes to the last-arrival reduction
// Units are numbered phase 1 first, expert-major, as in the tiled kernel. Phase-2 stages carry h, so a warp
// issues the first stage of a phase-2 unit of expert u only once u's phase 1 is complete: it reads the
// counter without waiting while it still has stages to compute, and waits only with an empty ring. A warp's
// phase-1 units precede its phase-2 units and never wait, so every unit another warp waits for progresses.
// No k split and no block barrier: a warp multiplies whole row tiles, the ring gives it the bytes in flight.

#define STREAM_HEAD 2112  // bytes of a stage before its activation rows: 2 x 1 KiB codes, 2 x 32 B scales
#define STREAM_ROW 512    // bytes per token row of a stage's activations (two 128-wide groups of bf16)

struct Unit { int phase, u, r, stages; };

struct StreamShape {
    int n_p1, total, FT, DT, stages1, stages2;

    __device__ Unit unit(int t) const {
        if (t < n_p1) return {1, t / FT, t % FT, stages1};
        const int q = t - n_p1;
        return {2, q / DT, q % DT, stages2};
    }
};

// One warp's ring: S slots of `slot_bytes`, an mbarrier per slot, and the (ticket, stage) each slot holds.
struct Ring {
    unsigned char* slots;
    unsigned bars;  // shared-space address of S 8-byte mbarriers
    int2* meta;
    int S, slot_bytes;

    __device__ unsigned char* slot(int k) const { return slots + k * slot_bytes; }
    __device__ unsigned bar(int k) const { return bars + 8 * k; }
};

// Every lane: its 16-byte pieces of stage s of unit `un` into the slot at shared address `dst`, then its
// arrival on the slot's barrier, which completes when all 32 lanes' pieces have landed.
__device__ void stream_issue(const Routing& R, const MoeArgs& p, const Int4Weights& w, const Unit& un, int s,
                             unsigned dst, unsigned bar) {
    const int lane = threadIdx.x & 31, u = un.u, cnt = R.count[u], e = R.ref[u];
    if (un.phase == 1) {
        const int KC = p.D / 64, G = p.D / 128;
        const size_t tile = (size_t)e * (p.F / 16) + un.r;
        const uint4* gq = w.gate_q + (tile * KC + 2 * s) * 32 + lane;
        const uint4* uq = w.up_q + (tile * KC + 2 * s) * 32 + lane;
#pragma unroll
        for (int kk = 0; kk < 2; ++kk) {
            cp_async16(dst + 512 * kk + 16 * lane, gq + 32 * kk);
            cp_async16(dst + 1024 + 512 * kk + 16 * lane, uq + 32 * kk);
        }
        if (lane < 4) cp_async16(dst + 2048 + 16 * lane, (lane < 2 ? w.gate_s : w.up_s) + (tile * G + s) * 8 + 4 * (lane & 1));
        for (int i = lane; i < cnt * 16; i += 32)  // x rows: 16 pieces of 16 bytes per token
            cp_async16(dst + STREAM_HEAD + STREAM_ROW * (i >> 4) + 16 * (i & 15),
                       p.x + (size_t)R.token[u][i >> 4] * p.D + 128 * s + 8 * (i & 15));
    } else {
        const int KC = p.F / 64, G = p.F / 128, g0 = 2 * s, ng = min(2, G - g0);
        const size_t tile = (size_t)e * (p.D / 16) + un.r;
        const uint4* dq = w.down_q + (tile * KC + 2 * g0) * 32 + lane;
        for (int k = 0; k < 2 * ng; ++k) cp_async16(dst + 512 * k + 16 * lane, dq + 32 * k);
        if (lane < 2 * ng) cp_async16(dst + 2048 + 16 * lane, w.down_s + (tile * G + g0) * 8 + 4 * lane);
        const int row_shift = 3 + ng;  // 16 * ng pieces of 16 bytes per token's h for these groups
        for (int i = lane; i < cnt << row_shift; i += 32) {
            const int n = i >> row_shift, q = i & ((1 << row_shift) - 1);
            cp_async16(dst + STREAM_HEAD + STREAM_ROW * n + 16 * q,
                       p.hbuf + ((size_t)u * MOE_MAX_TOKENS + n) * p.F + 128 * g0 + 8 * q);
        }
    }
    cp_async_arrive(bar);
}

// One stage from shared memory into the unit's fragments: gate and up of a group (phase 1, acc[8]) or down of
// `groups` groups (phase 2, acc[4]). The B rows of n-tile column g are the stage's activation row min(g, cnt-1).
__device__ __forceinline__ void stream_compute(float* acc, const unsigned char* st, int phase, int groups, int cnt) {
    const int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    const unsigned char* brow = st + STREAM_HEAD + STREAM_ROW * min(g, cnt - 1);
    if (phase == 1) {
        uint4 w[2][2];
        unsigned sc[2];
#pragma unroll
        for (int m = 0; m < 2; ++m) {
#pragma unroll
            for (int kk = 0; kk < 2; ++kk) w[m][kk] = *reinterpret_cast<const uint4*>(st + 1024 * m + 512 * kk + 16 * lane);
            sc[m] = *reinterpret_cast<const unsigned*>(st + 2048 + 32 * m + 4 * g);
        }
        Int4Weights::group_mma<1, 2, 2, true>(acc, w, sc, [&](uint4 (&b)[2], int, int kk) {
            b[0] = *reinterpret_cast<const uint4*>(brow + 2 * (64 * kk + 8 * c));
            b[1] = *reinterpret_cast<const uint4*>(brow + 2 * (64 * kk + 32 + 8 * c)); }, false);
        return;
    }
    for (int gi = 0; gi < groups; ++gi) {
        uint4 w[1][2];
        unsigned sc[1];
#pragma unroll
        for (int kk = 0; kk < 2; ++kk) w[0][kk] = *reinterpret_cast<const uint4*>(st + 1024 * gi + 512 * kk + 16 * lane);
        sc[0] = *reinterpret_cast<const unsigned*>(st + 2048 + 32 * gi + 4 * g);
        const unsigned char* row = brow + 256 * gi;
        Int4Weights::group_mma<1, 1, 2, true>(acc, w, sc, [&](uint4 (&b)[2], int, int kk) {
            b[0] = *reinterpret_cast<const uint4*>(row + 2 * (64 * kk + 8 * c));
            b[1] = *reinterpret_cast<const uint4*>(row + 2 * (64 * kk + 32 + 8 * c)); }, false);
    }
}

__device__ void moe_stream(const MoeArgs& p, const Int4Weights& wts, int S) {
    __shared__ Routing R;
    __shared__ __align__(16) float tiles[MOE_MAX_WARPS][MOE_TILE];
    extern __shared__ __align__(128) unsigned char ring_smem[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int ticket = 0;
    if (lane == 0) ticket = atomicAdd(&p.counters[CTR_TICKET], 1);  // its latency overlaps the prologue
    build_routing(R, p, wts);
    ticket = __shfl_sync(0xffffffffu, ticket, 0);

    const int FT = p.F / 16, DT = p.D / 16, n_used = R.n_used;
    const StreamShape sh{n_used * FT, n_used * (FT + DT), FT, DT, p.D / 128, (p.F / 128 + 1) / 2};
    const int* p1_done = p.counters + CTR_ROWS + DT;  // [U] phase-1 row tiles finished per expert in use
    const int slot_bytes = STREAM_HEAD + p.T * STREAM_ROW;
    unsigned char* base = ring_smem + (size_t)warp * S * (slot_bytes + 16);
    const Ring ring{base, smem_u32(base + S * slot_bytes), reinterpret_cast<int2*>(base + S * slot_bytes + 8 * S), S,
                    slot_bytes};
    if (lane == 0) {
        for (int k = 0; k < S; ++k) mbar_init(ring.bar(k), 32);  // one arrival per lane and phase
    }
    __syncwarp();

    bool done = ticket >= sh.total;
    Unit pu = sh.unit(done ? 0 : ticket), cu = pu;  // the units being issued and computed
    int ps = 0, produced = 0, consumed = 0;         // next stage of pu; stages issued and computed so far
    int pk = 0, ck = 0;                             // their slots (ring indices kept without a division by S)
    unsigned phase = 0;                             // parity of slot ck's current use
    int ready_u = -1, poll_u = -1, poll_v = 0;      // experts <= ready_u have h; a counter read in flight for poll_u
    float acc[8];
    while (true) {
        // issue stages while the ring has free slots
        while (!done && produced < consumed + S) {
            if (ps == pu.stages) {
                if (lane == 0) ticket = atomicAdd(&p.counters[CTR_TICKET], 1);
                ticket = __shfl_sync(0xffffffffu, ticket, 0);
                if (ticket >= sh.total) { done = true; break; }
                pu = sh.unit(ticket);
                ps = 0;
            }
            if (pu.phase == 2 && pu.u > ready_u) {
                if (consumed < produced) {  // compute a stage meanwhile; the read is looked at after it
                    if (lane == 0) poll_v = ld_relaxed(&p1_done[pu.u]);
                    poll_u = pu.u;
                    break;
                }
                if (lane == 0) {  // nothing left to compute: wait
                    while (ld_relaxed(&p1_done[pu.u]) < FT) __nanosleep(64);
                }
                __syncwarp();
                acquire_fence();  // every lane copies h
                ready_u = pu.u;
                poll_u = -1;
            }
            if (lane == 0) ring.meta[pk] = make_int2(ticket, ps);
            stream_issue(R, p, wts, pu, ps, smem_u32(ring.slot(pk)), ring.bar(pk));
            ++produced;
            ++ps;
            if (++pk == S) pk = 0;
        }
        __syncwarp();  // the slots' tags are written before any lane reads them
        if (consumed == produced) break;  // nothing issued and nothing more to claim

        // compute the oldest stage once its bytes have landed
        while (!mbar_done(ring.bar(ck), phase)) {}
        const int2 m = ring.meta[ck];
        if (m.y == 0) {
            cu = sh.unit(m.x);
#pragma unroll
            for (int i = 0; i < 8; ++i) acc[i] = 0.0f;
        }
        stream_compute(acc, ring.slot(ck), cu.phase, min(2, p.F / 128 - 2 * m.y), R.count[cu.u]);
        if (m.y == cu.stages - 1) {
            if (cu.phase == 1) finish_gate_up<1>(R, p, acc, cu.u, cu.r);
            else finish_down<1>(R, tiles[warp], p, acc, cu.u, cu.r, 0);
        }
        __syncwarp();  // every lane is done with the slot before it is refilled
        ++consumed;
        if (++ck == S) {
            ck = 0;
            phase ^= 1;
        }
        if (poll_u >= 0) {
            if (__shfl_sync(0xffffffffu, poll_v, 0) >= FT) {
                acquire_fence();
                ready_u = poll_u;
            }
            poll_u = -1;
        }
    }
    __syncthreads();
    finish_launch(p, n_used);
}

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

// T <= 8 tokens (one n-tile) and T <= 16 (two)
#define MOE_INT4_ENTRY(NAME, NT)                                                                                  \
    extern "C" __global__ void __launch_bounds__(MOE_MAX_WARPS * 32) NAME(                                      \
        const bf16_t* x, const int* ids, const float* gw, const uint4* gate_q, const unsigned* gate_s,           \
        const uint4* up_q, const unsigned* up_s, const uint4* down_q, const unsigned* down_s, bf16_t* y,          \
        bf16_t* hbuf, float* partial, int* counters, int T, int K, int E, int D, int F, int J, int KS,           \
        int u_cap) {                                                                                              \
        moe_int4<NT>(x, ids, gw, gate_q, gate_s, up_q, up_s, down_q, down_s, y, hbuf, partial, counters, T, K, E, \
                     D, F, J, KS, u_cap);                                                                         \
    }

MOE_INT4_ENTRY(moe_int4_t8, 1)
MOE_INT4_ENTRY(moe_int4_t16, 2)

// T <= 8 tokens, S ring stages per warp; dynamic shared memory: warps * S * (STREAM_HEAD + T * STREAM_ROW + 16)
extern "C" __global__ void __launch_bounds__(MOE_MAX_WARPS * 32) moe_int4_stream(
    const bf16_t* x, const int* ids, const float* gw, const uint4* gate_q, const unsigned* gate_s, const uint4* up_q,
    const unsigned* up_s, const uint4* down_q, const unsigned* down_s, bf16_t* y, bf16_t* hbuf, float* partial,
    int* counters, int T, int K, int E, int D, int F, int u_cap, int S) {
    const MoeArgs p{x, ids, gw, y, hbuf, partial, counters, T, K, E, D, F, 1, 1, u_cap};
    moe_stream(p, Int4Weights{gate_q, gate_s, up_q, up_s, down_q, down_s}, S);
}
