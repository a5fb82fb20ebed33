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
    // group, two chunks; load_b(b, nt, kc) gives the B halves of token tile nt for chunk kc (this lane's
    // column). The B rows of a chunk are loaded once for all M (L1 hits: prefetch_rows); loading
    // them per chunk rather than all up front keeps the kernel at <= 128 registers, and occupancy mattered
    // more than the hoist in measurements (runtime/results/README.md).
    // BIAS (NT = 1): the words are dequantized to 136 + q without the subtraction, and the unscaled sums of
    // tokens 2c, 2c + 1 lose 136 * (their group's sum of b), bias.x and bias.y.
    template <int NT, int M, class LoadB, bool BIAS = false>
    static __device__ __forceinline__ void group_mma(float* acc, const uint4 (&w)[M][2], const unsigned (&scales)[M],
                                                     LoadB load_b, int grp, bool two, float2 bias = {0.0f, 0.0f}) {
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
                if (nt == 0 || two) load_b(b[nt], nt, 2 * grp + kk);
            }
#pragma unroll
            for (int m = 0; m < M; ++m) {
                unsigned a[4][4];
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    if (BIAS) {
#pragma unroll
                        for (int q = 0; q < 4; ++q) a[j][q] = and_or(word(w[m][kk], j) >> (4 * q), 0x000f000fu, 0x43004300u);
                    } else {
                        dequant(word(w[m][kk], j), a[j]);
                    }
                }
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
                    if (nt == 0 || two) mma_chunk(t[m][nt], a, b[nt]);
                }
            }
        }
#pragma unroll
        for (int m = 0; m < M; ++m) {
            const float s_lo = bf16_lo(scales[m]), s_hi = bf16_hi(scales[m]);
            if (BIAS) {
                t[m][0][0] -= 136.0f * bias.x;
                t[m][0][1] -= 136.0f * bias.y;
                t[m][0][2] -= 136.0f * bias.x;
                t[m][0][3] -= 136.0f * bias.y;
            }
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
            [&](const Stage<2>& s, int grp) {
                group_mma<NT, 2>(acc, s.w, s.s, [&](uint4 (&b)[2], int nt, int kc) { load_b(b, xrow[nt], kc, c); }, grp,
                                 two);
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
                group_mma<NT, 1>(acc, s.w, s.s, [&](uint4 (&b)[2], int nt, int kc) { load_b(b, hrow[nt], kc, c); }, grp,
                                 two);
            });
    }
};

// ---- small T: a block-level bulk-copy ring -------------------------------------------------------------------
// At small T the register pipelines above hold ~2 groups per warp in flight and drain at every item, so the
// stream is latency-bound (runtime/results/README.md, runs 16-18). Here one lane of a producer warp claims the
// block's items (the same tickets and two-phase order as moe_layer) and streams each item's packed words with a
// few large cp.async.bulk copies into a ring of `stages` shared-memory stages, each tracked by a full and an
// empty mbarrier; it runs ahead across item boundaries, so the ring stays full while consumers finish an item.
// A stage holds `chunks` 64-wide chunks of a phase-1 row tile's gate and of its up (codes, then scales), or
// 2 * `chunks` chunks of a phase-2 row tile's down and the same columns of the expert's h rows. x is copied to
// shared memory once per block. B operands come from shared memory, so no fence can evict them (in L1 they
// were re-read from L2 after every item's fence: run 19's first call). The consumer warps take the stage's
// 128-wide groups round robin, two at a time into two accumulator sets (independent mma chains), so each item's
// k split over them is fixed and the fixed-order sum stays deterministic; at an item's end they hand their sums
// to an output warp, which adds them in warp order and does the item's stores, fence and count (and for phase 2
// the reduction), so that no consumer waits on another or on the device-wide fences (run 22). The producer
// decodes each stage's item for them (integer divisions per stage and warp cost 8 % at T = 1, run 19f), and
// phase 1 dequantizes to 136 + q, taking 136 * (the group's sum of x, made once per block) off the unscaled
// sums: 4 of 11 instructions per word fewer, since here the consumers' instructions bound the time (run 19).
// Limits: T <= RING_MAX_TOKENS, T * K <= RING_MAX_SLOTS, D / 128 <= RING_MAX_GROUPS (moe_kernels.ring_stages
// checks them).

#define RING_MAX_STAGES 16
#define RING_HELPER_WARPS 2  // besides the consumers: the producer and the output warp
#define RING_MAX_GROUPS 64  // D / 128
#define RING_MAX_TOKENS 8
#define RING_MAX_SLOTS 64  // T * K: a routing table 9 KB smaller than the register path's, so that 3 blocks with
                           // 2 stages of 16 chunks fit an SM at T = 1 and D = 4096 (run 20)
typedef RoutingOf<RING_MAX_SLOTS, RING_MAX_TOKENS> RingRouting;

// the item (ticket, decoded by the producer), its 64-wide chunks [c0, c1) here; flags below
struct __align__(16) RingStage { int ticket, phase, u, r0, j, c0, c1, flags; };
#define RING_FIRST 1  // first stage of its item
#define RING_LAST 2   // last stage of its item
#define RING_END -1   // ticket of the stage that tells the consumers to leave

struct __align__(16) RingShared {
    float xsum[RING_MAX_TOKENS][RING_MAX_GROUPS];  // sum of x[t] over each 128-wide group (phase 1's bias)
    unsigned long long full[RING_MAX_STAGES], empty[RING_MAX_STAGES], x_full;
    unsigned long long red_full[2], red_empty[2];  // red(parity) written by every consumer / read by the output warp
    RingStage stage[RING_MAX_STAGES];
    RingStage out[2];                              // the item whose sums red(parity) holds
    int ticket;
};

__device__ __forceinline__ unsigned smem_addr(const void* ptr) { return (unsigned)__cvta_generic_to_shared(ptr); }

__device__ __forceinline__ void mbar_init(unsigned long long* bar, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" :: "r"(smem_addr(bar)), "r"(count) : "memory");
}

__device__ __forceinline__ void mbar_arrive(unsigned long long* bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" :: "r"(smem_addr(bar)) : "memory");
}

__device__ __forceinline__ void mbar_arrive_tx(unsigned long long* bar, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(smem_addr(bar)), "r"(bytes) : "memory");
}

__device__ __forceinline__ void mbar_wait(unsigned long long* bar, unsigned parity) {
    const unsigned a = smem_addr(bar);
    unsigned done = 0;
    while (!done) {
        asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                     : "=r"(done) : "r"(a), "r"(parity) : "memory");
    }
}

// `bytes` (a multiple of 16, both addresses 16-byte aligned) from global memory into this block's shared
// memory by the copy engine, counted on `bar` as they land
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, unsigned bytes, unsigned long long* bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                 :: "r"(smem_addr(dst)), "l"(src), "r"(bytes), "r"(smem_addr(bar)) : "memory");
}

__device__ __forceinline__ uint4 ld_shared4(const void* ptr) {
    uint4 v;
    asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "r"(smem_addr(ptr)));
    return v;
}

__device__ __forceinline__ void consumer_sync(int consumers) {  // named barrier 1: the consumer warps only
    asm volatile("bar.sync 1, %0;" :: "r"(32 * consumers) : "memory");
}

typedef float RingRed[8][32];  // one consumer warp's 8 fragments of an item's sums, [value][lane]: no bank conflicts

// Dynamic shared memory: `stages` stages, then x, then the item sums. A stage: codes of 2 * chunks chunks (512 B
// each), their scales (16 B per chunk), then (phase 2) T rows of 2 * chunks chunks of h (128 B per chunk). Token
// rows are 64 B longer than their data, so that 8 rows read at one column fall into both halves of the banks. The
// sums, by item parity, one RingRed per consumer warp: sized by the launch's consumers, so that 4 of them leave
// 8 KB more for stages than static space for MOE_MAX_WARPS did (run 22).
struct RingGeometry {
    int stages, chunks, consumers, h_stride, stage_bytes, x_stride, red_at;
    __device__ RingGeometry(int s, int c, int T, int D, int w)
        : stages(s), chunks(c), consumers(w), h_stride(256 * c + 64), stage_bytes(1056 * c + T * (256 * c + 64)),
          x_stride(2 * D + 64), red_at(s * stage_bytes + T * x_stride) {}
    __device__ int scales_at() const { return 1024 * chunks; }
    __device__ int h_at() const { return 1056 * chunks; }
    // consumer warp q's sums of items of parity par: red(ring, par)[q] (the output warp builds a phase-2 item's
    // token-space tile in red(ring, par)[0], read as float4)
    __device__ RingRed* red(unsigned char* ring, int par) const {
        return reinterpret_cast<RingRed*>(ring + red_at) + par * consumers;
    }
};

// The producer lane: x, then the items' bytes, stage by stage, until the tickets run out. A phase-2 stage's down
// weights do not depend on h, so they are copied at once; its h columns wait for the expert's phase 1 (acquire,
// then fence.proxy.async so the copy engine sees what other blocks wrote). Until then the stages of that expert
// stay "pending" (weights in flight, h not yet asked for), so the tail of the last expert's phase 1 overlaps the
// streaming of its down projection. Pending stages are finished before the producer could block on a slot that
// only they can free, and before a stage of another expert.
struct RingPending {
    int k, u;  // stages k.. up to the producer's current one wait for expert u's h; k < 0: none
};

__device__ __forceinline__ void ring_copy_h(const RingRouting& R, RingShared& S, unsigned char* ring, const MoeArgs& p,
                                            const RingGeometry& g, int s, int u) {
    const RingStage& st = S.stage[s];
    const int n = st.c1 - st.c0;
    if (n <= 0) return;
    unsigned char* dst = ring + (size_t)s * g.stage_bytes + g.h_at();
    for (int t = 0; t < R.count[u]; ++t) {
        bulk_copy(dst + t * g.h_stride, p.hbuf + ((size_t)u * MOE_MAX_TOKENS + t) * p.F + 64 * st.c0, n * 128, &S.full[s]);
    }
}

// Whether expert u's h may be bulk-copied: its phase 1 is complete (polled once, or waited for), and the async
// proxy is fenced so that the copy engine sees every block's h stores.
__device__ __forceinline__ bool ring_h_ready(const MoeArgs& p, int u, int& ready_u, bool wait) {
    if (u <= ready_u) return true;  // a block's phase-2 items come expert by expert (tickets are expert-major)
    const int* done = p.counters + CTR_ROWS + p.D / 16 + u;
    while (ld_acquire(done) < p.F / 16) {
        if (!wait) return false;
        __nanosleep(64);
    }
    asm volatile("fence.proxy.async.global;" ::: "memory");
    ready_u = u;
    return true;
}

// the pending stages' h, once it is there
__device__ __forceinline__ void ring_flush(const RingRouting& R, RingShared& S, unsigned char* ring, const MoeArgs& p,
                                           const RingGeometry& g, RingPending& pend, int k, int& ready_u) {
    if (pend.k < 0) return;
    ring_h_ready(p, pend.u, ready_u, true);
    for (int q = pend.k; q < k; ++q) ring_copy_h(R, S, ring, p, g, q % g.stages, pend.u);
    pend.k = -1;
}

__device__ __forceinline__ void ring_produce(const RingRouting& R, RingShared& S, unsigned char* ring, const MoeArgs& p,
                                             const Int4Weights& w, const RingGeometry& g, int n_p1, int total) {
    const int FT = p.F / 16, DT = p.D / 16, KC1 = p.D / 64, G1 = p.D / 128, KC2 = p.F / 64, G2 = p.F / 128;
    unsigned char* xs = ring + (size_t)g.stages * g.stage_bytes;
    mbar_arrive_tx(&S.x_full, p.T * p.D * 2);
    for (int t = 0; t < p.T; ++t) bulk_copy(xs + t * g.x_stride, p.x + (size_t)t * p.D, p.D * 2, &S.x_full);
    int ticket = S.ticket, k = 0, ready_u = -1;
    RingPending pend{-1, -1};
    for (;;) {
        const int next = ticket < total ? atomicAdd(&p.counters[CTR_TICKET], 1) : 0;  // its latency overlaps the copies
        if (ticket >= total) {
            ring_flush(R, S, ring, p, g, pend, k, ready_u);
            const int s = k % g.stages;
            if (k >= g.stages) mbar_wait(&S.empty[s], (k / g.stages - 1) & 1);
            S.stage[s] = {RING_END, 0, 0, 0, 0, 0, 0, 0};
            mbar_arrive(&S.full[s]);
            return;
        }
        const Item it = decode(ticket, n_p1, FT, DT, p.J);
        const size_t e = R.ref[it.u];
        const int cnt = R.count[it.u];
        int lo = 0, hi = KC1, step = g.chunks;
        if (it.phase == 2) {
            Int4Weights::split(KC2, p.J, it.j, lo, hi);
            step = 2 * g.chunks;
            if (pend.k >= 0 && pend.u != it.u) ring_flush(R, S, ring, p, g, pend, k, ready_u);
            ring_h_ready(p, it.u, ready_u, false);  // not ready: the item's stages are pending
            if (pend.k >= 0 && it.u <= ready_u) ring_flush(R, S, ring, p, g, pend, k, ready_u);
        }
        for (int c0 = lo;; c0 += step) {
            const int c1 = min(hi, c0 + step), n = c1 - c0, s = k % g.stages;
            if (k >= g.stages) {
                if (pend.k >= 0 && pend.k <= k - g.stages) ring_flush(R, S, ring, p, g, pend, k, ready_u);
                mbar_wait(&S.empty[s], (k / g.stages - 1) & 1);
            }
            unsigned char* st = ring + (size_t)s * g.stage_bytes;
            S.stage[s] = {ticket, it.phase, it.u, it.r0, it.j, c0, c1, (c0 == lo ? RING_FIRST : 0) | (c1 == hi ? RING_LAST : 0)};
            if (it.phase == 1) {
                const size_t tile = e * FT + it.r0;
                mbar_arrive_tx(&S.full[s], n * 1056);
                bulk_copy(st, w.gate_q + (tile * KC1 + c0) * 32, n * 512, &S.full[s]);
                bulk_copy(st + g.chunks * 512, w.up_q + (tile * KC1 + c0) * 32, n * 512, &S.full[s]);
                bulk_copy(st + g.scales_at(), w.gate_s + (tile * G1 + c0 / 2) * 8, n * 16, &S.full[s]);
                bulk_copy(st + g.scales_at() + g.chunks * 16, w.up_s + (tile * G1 + c0 / 2) * 8, n * 16, &S.full[s]);
            } else {
                const size_t tile = e * DT + it.r0;
                mbar_arrive_tx(&S.full[s], n * (528 + 128 * cnt));
                if (n > 0) {  // an empty split (more splits than groups) still completes its item
                    bulk_copy(st, w.down_q + (tile * KC2 + c0) * 32, n * 512, &S.full[s]);
                    bulk_copy(st + g.scales_at(), w.down_s + (tile * G2 + c0 / 2) * 8, n * 16, &S.full[s]);
                }
                if (it.u <= ready_u) {
                    ring_copy_h(R, S, ring, p, g, s, it.u);
                } else if (pend.k < 0) {
                    pend = {k, it.u};
                }
            }
            ++k;
            if (c1 >= hi) break;
        }
        ticket = next;
    }
}

// The B halves of chunk kc (this lane's column) from a token row in shared memory: x, or a stage's h
struct SharedRowB {
    const unsigned char* row;
    __device__ __forceinline__ void operator()(uint4 (&b)[2], int, int kc) const {
        b[0] = ld_shared4(row + 128 * kc);
        b[1] = ld_shared4(row + 128 * kc + 64);
    }
};

// This warp's groups of a stage, `consumers` apart from `first`, two at a time into two accumulator sets
// (independent mma chains)
template <class Group>
__device__ __forceinline__ void take_groups(const Group& group, float* acc, float* acc2, int first, int groups,
                                            int consumers) {
    int q = first;
    for (; q + consumers < groups; q += 2 * consumers) {
        group(acc, q);
        group(acc2, q + consumers);
    }
    for (; q < groups; q += consumers) group(acc, q);
}

// A consumer warp's part of an item's fixed-order sum: its fragments into red[parity] for the output warp (once
// the output warp has read what the item two before left there), then on. Consumers never wait for each other
// or for the item's output. The RING_END stage is handed over the same way, with no sums.
__device__ __forceinline__ void ring_hand_over(RingShared& S, RingRed* red, const RingStage& st, const float* acc,
                                               const float* acc2, int item) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, par = item & 1;
    if (item >= 2) mbar_wait(&S.red_empty[par], ((item >> 1) - 1) & 1);
    if (st.ticket != RING_END) {
#pragma unroll
        for (int i = 0; i < 8; ++i) red[warp][i][lane] = acc[i] + acc2[i];
    }
    if (warp == 0 && lane == 0) S.out[par] = st;
    mbar_arrive(&S.red_full[par]);  // every lane: each releases its own writes above
}

// The consumer warps: every stage in order; this warp's groups of it; at an item's last stage its sums handed to
// the output warp.
__device__ __forceinline__ void ring_consume(const RingRouting& R, RingShared& S, unsigned char* ring,
                                             const MoeArgs& p, const RingGeometry& g) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gl = lane >> 2, c = lane & 3, consumers = g.consumers;
    const unsigned char* xs = ring + (size_t)g.stages * g.stage_bytes;
    float acc[8], acc2[8];  // acc2: the second group of a pair
    int items = 0;
    mbar_wait(&S.x_full, 0);
    {  // the group sums of x for phase 1's bias, made once by the consumer warps
        for (int i = threadIdx.x; i < p.T * (p.D / 128); i += 32 * consumers) {
            const int t = i / (p.D / 128), grp = i % (p.D / 128);
            float v = 0.0f;
            for (int k = 0; k < 128; k += 8) {
                const uint4 q = ld_shared4(xs + t * g.x_stride + 2 * (128 * grp + k));
#pragma unroll
                for (int h = 0; h < 4; ++h) v += bf16_lo(word(q, h)) + bf16_hi(word(q, h));
            }
            S.xsum[t][grp] = v;
        }
        consumer_sync(consumers);
    }
    for (int s = 0, parity = 0;; s = s + 1 == g.stages ? 0 : s + 1, parity ^= s == 0) {
        mbar_wait(&S.full[s], parity);
        const RingStage st = S.stage[s];
        if (st.ticket == RING_END) {
            ring_hand_over(S, g.red(ring, items & 1), st, acc, acc2, items);
            return;
        }
        const Item it{st.phase, st.u, st.r0, st.j};
        const int cnt = R.count[it.u], n = min(gl, cnt - 1);
        if (st.flags & RING_FIRST) {
#pragma unroll
            for (int i = 0; i < 8; ++i) acc[i] = acc2[i] = 0.0f;
        }
        const unsigned char* base = ring + (size_t)s * g.stage_bytes;
        const uint4* codes = reinterpret_cast<const uint4*>(base) + lane;
        const unsigned* scales = reinterpret_cast<const unsigned*>(base + g.scales_at()) + (lane >> 2);
        const int groups = (st.c1 - st.c0) / 2;
        if (it.phase == 1) {
            const SharedRowB load_x{xs + R.token[it.u][n] * g.x_stride + 16 * c};
            const float* xs0 = S.xsum[R.token[it.u][min(2 * c, cnt - 1)]];
            const float* xs1 = S.xsum[R.token[it.u][min(2 * c + 1, cnt - 1)]];
            const auto group = [&](float* a, int q) {
                uint4 wq[2][2];
                unsigned sc[2];
#pragma unroll
                for (int m = 0; m < 2; ++m) {
                    wq[m][0] = codes[(m * g.chunks + 2 * q) * 32];
                    wq[m][1] = codes[(m * g.chunks + 2 * q + 1) * 32];
                    sc[m] = scales[(m * g.chunks / 2 + q) * 8];
                }
                const int grp = st.c0 / 2 + q;
                Int4Weights::group_mma<1, 2, SharedRowB, true>(a, wq, sc, load_x, grp, false,
                                                               make_float2(xs0[grp], xs1[grp]));
            };
            take_groups(group, acc, acc2, warp, groups, consumers);
        } else {
            const SharedRowB load_h{base + g.h_at() + n * g.h_stride + 16 * c - 128 * st.c0};
            const auto group = [&](float* a, int q) {
                uint4 wq[1][2];
                unsigned sc[1];
                wq[0][0] = codes[(2 * q) * 32];
                wq[0][1] = codes[(2 * q + 1) * 32];
                sc[0] = scales[q * 8];
                Int4Weights::group_mma<1, 1>(a, wq, sc, load_h, st.c0 / 2 + q, false);
            };
            take_groups(group, acc, acc2, warp, groups, consumers);
        }
        __syncwarp();
        if (lane == 0) mbar_arrive(&S.empty[s]);  // this warp is done reading the stage
        if (st.flags & RING_LAST) {
            ring_hand_over(S, g.red(ring, items & 1), st, acc, acc2, items);
            ++items;
        }
    }
}

// The output warp: each item's sum over the consumer warps in their fixed order, then its output (h and its
// count, or the phase-2 partial and, for the last arrival on its row tile, the reduction into y), with the
// device-wide fences and atomics that cost the consumers 4-8 % when they did this themselves (run 20b).
__device__ __forceinline__ void ring_output(const RingRouting& R, RingShared& S, unsigned char* ring, const MoeArgs& p,
                                            const RingGeometry& g) {
    const int lane = threadIdx.x & 31, gl = lane >> 2, c = lane & 3;
    int* p1_done = p.counters + CTR_ROWS + p.D / 16;
    for (int item = 0;; ++item) {
        const int par = item & 1;
        mbar_wait(&S.red_full[par], (item >> 1) & 1);
        const RingStage st = S.out[par];
        if (st.ticket == RING_END) return;
        RingRed* red = g.red(ring, par);
        float acc[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            float v = red[0][i][lane];
            for (int q = 1; q < g.consumers; ++q) v += red[q][i][lane];
            acc[i] = v;
        }
        if (st.phase == 1) {
            const int cnt = R.count[st.u];
            __syncwarp();
            if (lane == 0) mbar_arrive(&S.red_empty[par]);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int tok = 2 * c + (i & 1), row = 16 * st.r0 + gl + 8 * (i >> 1);
                if (tok < cnt) {
                    const float gv = acc[i], uv = acc[4 + i];
                    p.hbuf[((size_t)st.u * MOE_MAX_TOKENS + tok) * p.F + row] = f32_to_bf16(gv / (1.0f + __expf(-gv)) * uv);
                }
            }
            __threadfence();  // h visible device-wide before the completion count says so
            __syncwarp();
            if (lane == 0) atomicAdd(&p1_done[st.u], 1);
            continue;
        }
        // red[0] is read: the item's token-space tile goes there until the partial is stored
        __syncwarp();
        store_partial<1>(&red[0][0][0], R, p, acc, st.u, st.r0, st.j);
        __syncwarp();
        if (lane == 0) mbar_arrive(&S.red_empty[par]);
        count_partial(p, st.r0, R.n_used);
        __syncwarp();
    }
}

__device__ __forceinline__ void moe_int4_ring(const MoeArgs& p, const Int4Weights& w, const RingGeometry& g) {
    __shared__ RingRouting R;
    __shared__ RingShared S;
    extern __shared__ __align__(128) unsigned char ring[];
    const int tid = threadIdx.x, consumers = g.consumers;
    if (tid == 0) {
        S.ticket = atomicAdd(&p.counters[CTR_TICKET], 1);  // its latency overlaps the prologue
        for (int s = 0; s < g.stages; ++s) {
            mbar_init(&S.full[s], 1);           // the producer's arrive, plus the stage's bytes
            mbar_init(&S.empty[s], consumers);  // one arrive per consumer warp
        }
        mbar_init(&S.x_full, 1);
        for (int q = 0; q < 2; ++q) {
            mbar_init(&S.red_full[q], 32 * consumers);  // every consumer lane
            mbar_init(&S.red_empty[q], 1);              // the output warp
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    build_routing(R, p, w);  // ends with a barrier, which also publishes S.ticket and the barriers
    const int n_p1 = R.n_used * (p.F / 16), total = n_p1 + R.n_used * (p.D / 16) * p.J;
    if ((tid >> 5) == consumers) {
        if ((tid & 31) == 0) ring_produce(R, S, ring, p, w, g, n_p1, total);
        __syncwarp();
    } else if ((tid >> 5) == consumers + 1) {
        ring_output(R, S, ring, p, g);
    } else {
        ring_consume(R, S, ring, p, g);
    }
    __syncthreads();
    if (tid == 0 && atomicAdd(&p.counters[CTR_EXITED], 1) == (int)gridDim.x - 1) {
        p.counters[CTR_TICKET] = 0;  // every other block has taken its last ticket and left
        p.counters[CTR_EXITED] = 0;
        for (int u = 0; u < R.n_used; ++u) p.counters[CTR_ROWS + p.D / 16 + u] = 0;
    }
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

// T <= 8 through the bulk-copy ring: `stages` stages of `chunks` chunks per matrix and x in dynamic shared
// memory (RingGeometry); of a block's warps, the last but one produces, the last writes the items' outputs, the
// others consume (at most MOE_MAX_WARPS of them)
extern "C" __global__ void __launch_bounds__((MOE_MAX_WARPS + RING_HELPER_WARPS) * 32) moe_int4_ring_t8(
    const bf16_t* x, const int* ids, const float* gw, const uint4* gate_q, const unsigned* gate_s,
    const uint4* up_q, const unsigned* up_s, const uint4* down_q, const unsigned* down_s, bf16_t* y,
    bf16_t* hbuf, float* partial, int* counters, int T, int K, int E, int D, int F, int J, int KS,
    int u_cap, int stages, int chunks) {
    const MoeArgs p{x, ids, gw, y, hbuf, partial, counters, T, K, E, D, F, J, KS, u_cap};
    const Int4Weights w{gate_q, gate_s, up_q, up_s, down_q, down_s};
    moe_int4_ring(p, w, RingGeometry(stages, chunks, T, D, (int)(blockDim.x >> 5) - RING_HELPER_WARPS));
}
