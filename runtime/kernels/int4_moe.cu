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

    // Split-F path: one down unit = row tile r of down, the CH 64-wide chunks from kc0 (one scale group).
    template <int CH> struct DownUnit { uint4 w[CH]; unsigned s; };

    template <int CH>
    __device__ __forceinline__ DownUnit<CH> load_down_unit(int e, int r, int kc0, const MoeArgs& p, int lane) const {
        const int KC = p.F / 64, G = p.F / 128;
        const size_t tile = (size_t)e * (p.D / 16) + r;
        DownUnit<CH> d;
#pragma unroll
        for (int k = 0; k < CH; ++k) d.w[k] = ld_stream(down_q + (tile * KC + kc0 + k) * 32 + lane);
        d.s = ld_stream32(down_s + (tile * G + kc0 / 2) * 8 + (lane >> 2));
        return d;
    }
};

// ---- split-F path (T <= 8): no phase dependency, no h round trip -----------------------------------------------
// An item (u, r) takes FR = 64 CH rows of F of expert u: gate and up of those rows over all of D (k split over
// KS warps when the block has more warps than row tiles), SiLU(g) * u rounded to bf16 into shared memory, then
// the down projection restricted to those FR columns for all D rows: a partial y of the expert's tokens,
// weighted by their gate weights, written to partial[(pair * R + r) * D + d] (pair: the (expert, token) pair
// in expert-use order; R = F / FR). Items are all the same size, so they are dealt to the persistent grid
// statically (block b takes b, b + grid, ...). Once every block has written its items (a grid barrier: the
// launcher makes the grid co-resident), the blocks sum the partials per token and 32-wide slice of D, each
// warp a fixed run of them in order, the warps' sums added in warp order: deterministic, no atomics on floats.

#define SPLITF_MAX_TOKENS 8
#ifndef MOE_SPLIT_F_DEPTH
#define MOE_SPLIT_F_DEPTH 4  // register stages of down units per warp
#endif
#ifndef MOE_SPLIT_F_RED_BATCH
#define MOE_SPLIT_F_RED_BATCH 16  // partials per lane in flight in the reduction
#endif
#ifndef MOE_SPLIT_F_IDLE_PF
#define MOE_SPLIT_F_IDLE_PF 0  // run 17 experiment: blocks without an item prefetch the items' down slices into L2
#endif
#ifndef MOE_SPLIT_F_DIAG_NORED
#define MOE_SPLIT_F_DIAG_NORED 0  // run 17 timing only: 1 skips the grid barrier and the reduction (y not written)
#endif
#define CTR_DONE 1  // blocks whose items are written (counters[1], unused by the two-phase path)

struct __align__(16) SplitF {
    bf16_t h[SPLITF_MAX_TOKENS][128];  // [n, f - f0] h of the item's rows, natural order (the B rows of down)
    int pairs[MOE_MAX_SLOTS];          // token t's pairs in expert-use order, at t * K
    int n_pairs[SPLITF_MAX_TOKENS];
};

template <int CH>
__device__ void split_f_item(const Routing& R, Scratch& S, SplitF& H, const MoeArgs& p, const Int4Weights& wts,
                             int u, int r, int pair0) {
    constexpr int RT = 4 * CH;  // 16-row tiles of gate/up per item
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, W = blockDim.x >> 5;
    const int g = lane >> 2, c = lane & 3, cnt = R.count[u], e = R.ref[u];
    const int KS = max(1, W / RT), DT = p.D / 16, R_items = p.F / (64 * CH);
    prefetch_rows([&](int n) { return p.x + (size_t)R.token[u][n] * p.D; }, cnt, 0, p.D / 64);
    const bf16_t* xrow[1] = {p.x + (size_t)R.token[u][min(g, cnt - 1)] * p.D};
    for (int rt = warp / KS; rt < RT; rt += W / KS) {  // uniform trip count: W divides RT or RT divides W
        float acc[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[i] = 0.0f;
        wts.template gate_up<1>(acc, e, r * RT + rt, xrow, cnt, p, warp % KS, KS, lane);
        ksplit_sum(S, acc, 8, KS);
        if (warp % KS == 0) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const float gv = acc[i], uv = acc[4 + i];
                H.h[2 * c + (i & 1)][16 * rt + g + 8 * (i >> 1)] = f32_to_bf16(gv / (1.0f + __expf(-gv)) * uv);
            }
        }
    }
    __syncthreads();  // h of the item's rows complete
    uint4 hb[CH][2];  // B of every down unit: h rows n = g, this lane's k positions
#pragma unroll
    for (int k = 0; k < CH; ++k)
#pragma unroll
        for (int half = 0; half < 2; ++half) hb[k][half] = *reinterpret_cast<const uint4*>(&H.h[g][64 * k + 32 * half + 8 * c]);
    float wt[2];
    size_t row[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int n = min(2 * c + i, cnt - 1);
        wt[i] = R.weight[u][n];
        row[i] = ((size_t)(pair0 + n) * R_items + r) * p.D;
    }
    pipelined<MOE_SPLIT_F_DEPTH, Int4Weights::DownUnit<CH>>(warp, DT, W,
        [&](int rd) { return wts.template load_down_unit<CH>(e, rd, CH * r, p, lane); },
        [&](const Int4Weights::DownUnit<CH>& d, int rd) {
            float t[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
            for (int k = 0; k < CH; ++k) {
                unsigned a[4][4];
#pragma unroll
                for (int j = 0; j < 4; ++j) Int4Weights::dequant(word(d.w[k], j), a[j]);
                mma_chunk(t, a, hb[k]);
            }
            const float s_lo = bf16_lo(d.s), s_hi = bf16_hi(d.s);
            const int d0 = 16 * rd + g;
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                if (2 * c + i < cnt) {
                    p.partial[row[i] + d0] = wt[i] * (s_lo * t[i]);
                    p.partial[row[i] + d0 + 8] = wt[i] * (s_hi * t[2 + i]);
                }
            }
        });
    __syncthreads();  // H.h is rewritten by the block's next item
}

// Every block, after its items: each (token, 32-wide slice of D) is summed by one block, its warps splitting
// the token's partials into fixed runs (pairs in expert-use order, then r), added in warp order.
__device__ void split_f_reduce(const SplitF& H, Scratch& S, const MoeArgs& p, int R_items) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, W = blockDim.x >> 5, slices = p.D / 32;
    for (int unit = blockIdx.x; unit < p.T * slices; unit += gridDim.x) {
        const int t = unit / slices, d = (unit % slices) * 32 + lane, L = H.n_pairs[t] * R_items;
        const int lo = warp * L / W, hi = (warp + 1) * L / W;
        float sum = 0.0f;
        for (int i0 = lo; i0 < hi; i0 += MOE_SPLIT_F_RED_BATCH) {
            float v[MOE_SPLIT_F_RED_BATCH];
#pragma unroll
            for (int b = 0; b < MOE_SPLIT_F_RED_BATCH; ++b) {
                const int i = min(i0 + b, hi - 1);
                v[b] = ld_l2f(p.partial + ((size_t)H.pairs[t * p.K + i / R_items] * R_items + i % R_items) * p.D + d);
            }
#pragma unroll
            for (int b = 0; b < MOE_SPLIT_F_RED_BATCH; ++b) {
                if (i0 + b < hi) sum += v[b];
            }
        }
        S.red[warp][0][lane] = sum;
        __syncthreads();
        if (warp == 0) {
            float y = 0.0f;
            for (int w = 0; w < W; ++w) y += S.red[w][0][lane];
            p.y[(size_t)t * p.D + d] = f32_to_bf16(y);
        }
        __syncthreads();
    }
}

// Blocks that have no item while others work (fewer items than blocks) bring the items' down slices into L2, in
// the order the items will read them, so that the items' down phase hits L2: one 128-byte line per thread and step.
template <int CH>
__device__ void prefetch_down_slices(const Routing& R, const MoeArgs& p, const Int4Weights& wts, int n_items,
                                     int idle_rank, int n_idle) {
    const int R_items = p.F / (64 * CH), DT = p.D / 16, KC = p.F / 64, G = p.F / 128;
    constexpr int LINES = 4 * CH + 1;  // code lines of the slice, then its scale line
    const long long total = (long long)DT * n_items * LINES;
    for (long long i = (long long)idle_rank * blockDim.x + threadIdx.x; i < total; i += (long long)n_idle * blockDim.x) {
        const int line = (int)(i % LINES), q = (int)(i / LINES % n_items), rd = (int)(i / LINES / n_items);
        const size_t tile = (size_t)R.ref[q / R_items] * DT + rd;
        const int kc0 = CH * (q % R_items);
        const void* a = line < 4 * CH ? (const void*)(wts.down_q + (tile * KC + kc0) * 32 + 8 * line)
                                      : (const void*)(wts.down_s + (tile * G + kc0 / 2) * 8);
        asm volatile("prefetch.global.L2::evict_last [%0];" :: "l"(a));
    }
}

template <int CH>
__device__ void moe_split_f(const MoeArgs& p, const Int4Weights& wts) {
    __shared__ Routing R;
    __shared__ Scratch S;
    __shared__ SplitF H;
    const int tid = threadIdx.x, R_items = p.F / (64 * CH);
    build_routing(R, p, wts);
    const int n_used = R.n_used;
    for (int q = blockIdx.x; q < n_used * R_items; q += gridDim.x) {
        const int u = q / R_items;
        int pair0 = 0;  // pairs of the experts before u
        for (int v = 0; v < u; ++v) pair0 += R.count[v];
        split_f_item<CH>(R, S, H, p, wts, u, q % R_items, pair0);
    }
#if MOE_SPLIT_F_IDLE_PF
    if ((int)blockIdx.x >= n_used * R_items)
        prefetch_down_slices<CH>(R, p, wts, n_used * R_items, blockIdx.x - n_used * R_items, gridDim.x - n_used * R_items);
#endif
    if (tid < p.T) {  // token tid's pairs, in expert-use order
        int n = 0, pair = 0;
        for (int u = 0; u < n_used; ++u) {
            for (int k = 0; k < R.count[u]; ++k) {
                if (R.token[u][k] == tid) H.pairs[tid * p.K + n++] = pair + k;
            }
            pair += R.count[u];
        }
        H.n_pairs[tid] = n;
    }
    __syncthreads();  // the block's partials written (and H's lists): then the grid barrier, as cooperative groups
#if !MOE_SPLIT_F_DIAG_NORED
    if (tid == 0) {
        __threadfence();
        atomicAdd(&p.counters[CTR_DONE], 1);
        while (ld_acquire(&p.counters[CTR_DONE]) < (int)gridDim.x) __nanosleep(32);
    }
    __syncthreads();
    split_f_reduce(H, S, p, R_items);
#endif
    if (tid == 0 && atomicAdd(&p.counters[CTR_EXITED], 1) == (int)gridDim.x - 1) {
        p.counters[CTR_DONE] = 0;  // every block has passed the barrier
        p.counters[CTR_EXITED] = 0;
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

#define MOE_SPLIT_F_ENTRY(NAME, CH)                                                                               \
    extern "C" __global__ void __maxnreg__(128) NAME(                                     \
        const bf16_t* x, const int* ids, const float* gw, const uint4* gate_q, const unsigned* gate_s,           \
        const uint4* up_q, const unsigned* up_s, const uint4* down_q, const unsigned* down_s, bf16_t* y,          \
        bf16_t* hbuf, float* partial, int* counters, int T, int K, int E, int D, int F, int J, int KS,           \
        int u_cap) {                                                                                              \
        const MoeArgs p{x, ids, gw, y, hbuf, partial, counters, T, K, E, D, F, J, KS, u_cap};                    \
        moe_split_f<CH>(p, Int4Weights{gate_q, gate_s, up_q, up_s, down_q, down_s});                            \
    }

// split-F path, T <= 8: items of 64 or 128 rows of F
MOE_SPLIT_F_ENTRY(moe_int4_split_f64, 1)
MOE_SPLIT_F_ENTRY(moe_int4_split_f128, 2)
