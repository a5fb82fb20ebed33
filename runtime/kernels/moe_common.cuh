// Shared machinery of the one-launch MoE layer kernels (int4_moe.cu: INT4 draft experts; expert_bf16.cu:
// bf16 target experts from the cache arena). No CUDA headers are included, so NVRTC (CuPy) and nvcc build
// the same text; bf16 values travel as raw 16-bit patterns.
//
// Dimension letters: T tokens (<= 16), K top-k, E experts, D hidden, F expert FFN, U experts in use.
//
// One launch computes y[t] = sum_k w[t,k] * down_e(SiLU(gate_e x_t) * up_e x_t), e = ids[t,k]:
//   prologue  every block builds the routing in shared memory from the device-resident ids: the experts in
//             use in first-occurrence order (u = 0..U-1), and per expert its tokens (ascending) and weights.
//             This is the paper's computation reordering: each expert's weights are read once, for the
//             tokens routed to it, which are gathered into the tensor-core N dimension.
//   A block of W warps works on W/KS 16-row tiles at a time, KS warps per tile splitting its reduction
//   (k_splits, a launch parameter: KS = 1 lets a warp stream a whole row tile with no cross-warp sum;
//   larger KS gives more, smaller pieces for small layers). Partial sums of a tile's KS warps are added in
//   fixed warp order through shared memory.
//   phase 1   item (u, r0): row tiles r0*W/KS.. of gate and up of expert u for its tokens, SiLU(g)*u
//             rounded to bf16 into h[u, n, F]; each row tile's first warp counts it done for expert u.
//   phase 2   item (u, r0, j): row tiles of down for split j of F, weighted by the gate weights, each
//             written as a dense [16 rows x 16 tokens] fp32 partial. An integer ticket per row tile elects
//             the last arriving warp, which sums the partials in (u, j) order and writes y: deterministic,
//             no floating-point atomics.
// Items are claimed from one integer ticket counter in order, phase 1 first, both expert-major. A block
// that reaches a phase-2 item of expert u waits until u's phase-1 items are done (so one expert's down
// projection overlaps the next experts' gate/up); those items were claimed earlier by running blocks, so
// this cannot deadlock whatever the grid size. Before waiting, one warp asks the copy engine to bring the
// item's down weights into L2 (MOE_L2_PREFETCH), since they do not depend on h. A block meets at one barrier
// per item (plus the k-split sum when KS > 1), which also publishes the next ticket. The last block to exit
// resets the counters for the next launch, so a workspace is reused without a memset (one per stream).
//
// Tensor cores: mma.m16n8k16 bf16 with fp32 accumulation; weight rows are the M dimension, tokens N.
// Within each 64-wide k chunk the k order is permuted identically for weights and activations (a dot
// product does not care), so that lane (g = lane/4, c = lane%4) loads its fragments as 16-byte vectors:
// logical (k-tile j, position i) of lane c lives at k = 32*(j/2) + 8*c + 4*(j%2) + i, positions i = 0,1
// being fragment columns 2c, 2c+1 and i = 2,3 columns 2c+8, 2c+9. int4_pack.py packs the same order.

typedef unsigned short bf16_t;

#define MOE_MAX_TOKENS 16
#define MOE_MAX_SLOTS 128     // T * K
#define MOE_MAX_EXPERTS 512
#define MOE_MAX_WARPS 8
#define MOE_TILE 256          // 16 rows x 16 tokens of one phase-2 partial
#define MOE_RED_BATCH 4       // phase-2 partials summed per L2 round trip in the last-arrival reduction
#ifndef MOE_L2_PREFETCH
#define MOE_L2_PREFETCH 0     // 1: phase-2 items prefetch their down weights into L2 (Weights::prefetch_down)
#endif

// counters[]: ticket, (unused), blocks exited, error flags, then one ticket per 16-row tile of D, then the
// phase-1 row tiles done per expert in use
#define CTR_TICKET 0
#define CTR_EXITED 2
#define CTR_ERROR 3
#define CTR_ROWS 4
#define ERR_BAD_EXPERT 1      // an id outside [0, E)
#define ERR_NOT_RESIDENT 2    // bf16 verify: an expert without a cache slot

// for T * K <= SLOTS and T <= TOKENS (the INT4 kernel's ring serves smaller launches with a smaller table)
template <int SLOTS, int TOKENS>
struct RoutingOf {
    int n_used;
    int ids[SLOTS];
    float gw[SLOTS];                          // [T*K] gate weights, read with the ids in one round trip
    int expert[SLOTS];                        // [U] expert id of use u
    int ref[SLOTS];                           // [U] where its weights are (expert id or cache slot)
    int count[SLOTS];                         // [U] tokens routed to it
    unsigned char token[SLOTS][TOKENS];       // [U, n] token index, ascending
    float weight[SLOTS][TOKENS];              // [U, n] gate weight (summed over k)
    int first[MOE_MAX_EXPERTS];               // [E] first slot that names the expert
};
typedef RoutingOf<MOE_MAX_SLOTS, MOE_MAX_TOKENS> Routing;

struct MoeArgs {
    const bf16_t* x;      // [T, D]
    const int* ids;       // [T, K]
    const float* gw;      // [T, K]
    bf16_t* y;            // [T, D]
    bf16_t* hbuf;         // [u_cap, 16, F]
    float* partial;       // [D/16, u_cap, J, 256]
    int* counters;        // [4 + D/16 + u_cap]
    int T, K, E, D, F, J, KS, u_cap;
};

// ---- small device helpers -------------------------------------------------------------------------------

__device__ __forceinline__ unsigned bf16x2_fma(unsigned a, unsigned b, unsigned c) {
    unsigned d;
    asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

// d += A(16x16, row) * B(16x8, col); bf16 operands, fp32 accumulators
__device__ __forceinline__ void mma_bf16(float* d, unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                         unsigned b0, unsigned b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// weights: read once, never from L1 again
__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

__device__ __forceinline__ unsigned ld_stream32(const unsigned* p) {
    unsigned v;
    asm volatile("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(v) : "l"(p));
    return v;
}

// B operands, cached in L1 and shared by the SM's warps: x (an input) and h. h is written in this launch,
// but a block reads an expert's h only after an ld.acquire.gpu of that expert's phase-1 count and a barrier
// (the acquire invalidates L1, as in CUTLASS's semaphore), and h does not change after that. Not .nc: the
// read-only path is only for data that no thread writes during the launch.
__device__ __forceinline__ uint4 ld_const(const uint4* p) {
    uint4 v;
    asm volatile("ld.global.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

// Ask the copy engine to bring `bytes` (a multiple of 16, 16-byte aligned) into L2: no registers held, no
// completion to wait for, so a warp can put a whole work item's weights in flight with one instruction.
__device__ __forceinline__ void prefetch_l2(const void* p, unsigned bytes) {
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" :: "l"(p), "r"(bytes) : "memory");
}

// partials of the down projection: written in this launch by other SMs, so read from L2, never L1
__device__ __forceinline__ float4 ld_l2f4(const float4* p) {
    float4 v;
    asm volatile("ld.global.cg.v4.f32 {%0,%1,%2,%3}, [%4];" : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "l"(p));
    return v;
}

__device__ __forceinline__ int ld_acquire(const int* p) {
    int v;
    asm volatile("ld.acquire.gpu.global.s32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

// (a & b) | c in one instruction: written out because the compiler splits it in two when b and c are both
// constants (LOP3 takes one immediate); that was 4 of the 15 instructions a packed word cost to dequantize.
__device__ __forceinline__ unsigned and_or(unsigned a, unsigned b, unsigned c) {
    unsigned d;
    asm("lop3.b32 %0, %1, %2, %3, 0xea;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

__device__ __forceinline__ bf16_t f32_to_bf16(float f) {  // round to nearest even, NaN kept NaN
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)0x7fc0;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}

__device__ __forceinline__ float bf16_lo(unsigned pair) { return __uint_as_float(pair << 16); }
__device__ __forceinline__ float bf16_hi(unsigned pair) { return __uint_as_float(pair & 0xffff0000u); }

__device__ __forceinline__ unsigned word(const uint4& v, int i) {  // i is a compile-time constant after unrolling
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// One 64-wide k chunk: A fragments a[j][0..3] of its 4 k-tiles times B taken from the two 16-byte halves
// xb[0..1] of one token row's 64 values (tile j uses half j/2, words 2(j%2) and 2(j%2)+1).
__device__ __forceinline__ void mma_chunk(float* d, const unsigned (&a)[4][4], const uint4 (&xb)[2]) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        mma_bf16(d, a[j][0], a[j][1], a[j][2], a[j][3], word(xb[j >> 1], 2 * (j & 1)), word(xb[j >> 1], 2 * (j & 1) + 1));
    }
}

// The 2 halves of chunk kc of a token row (x, or h once its expert's phase 1 is complete) for lane column c
// (k-permuted order above), through L1: every item of the same expert on this SM reads the same rows.
__device__ __forceinline__ void load_b(uint4 (&xb)[2], const bf16_t* row, int kc, int c) {
#pragma unroll
    for (int h = 0; h < 2; ++h) xb[h] = ld_const(reinterpret_cast<const uint4*>(row + 64 * kc + 32 * h + 8 * c));
}

// Warm L1 with B rows n < rows (row_of(n) points at one), chunks [lo, hi): one 128-byte line per chunk and
// row, spread over the block, so that the B loads of the compute steps hit L1 instead of waiting on L2.
template <class RowOf>
__device__ __forceinline__ void prefetch_rows(RowOf row_of, int rows, int lo, int hi) {
    const int chunks = hi - lo;
    for (int i = threadIdx.x; i < rows * chunks; i += blockDim.x) {
        asm volatile("prefetch.global.L1 [%0];" :: "l"(row_of(i / chunks) + 64 * (lo + i % chunks)));
    }
}

// Work units first, first+step, ... < end, with the loads of the next DEPTH units in flight while one
// is computed: a ring of DEPTH register stages, indexed by compile-time constants only.
template <int DEPTH, class Stage, class Load, class Compute>
__device__ __forceinline__ void pipelined(int first, int end, int step, Load load, Compute compute) {
    Stage s[DEPTH];
#pragma unroll
    for (int k = 0; k < DEPTH; ++k) {
        if (first + k * step < end) s[k] = load(first + k * step);
    }
    for (int i = first; i < end; i += DEPTH * step) {
#pragma unroll
        for (int k = 0; k < DEPTH; ++k) {
            const int idx = i + k * step;
            if (idx < end) {
                compute(s[k], idx);
                if (idx + DEPTH * step < end) s[k] = load(idx + DEPTH * step);
            }
        }
    }
}

// ---- prologue: routing in shared memory -------------------------------------------------------------------

template <class RoutingT, class Weights>
__device__ void build_routing(RoutingT& R, const MoeArgs& p, const Weights& wts) {
    const int tid = threadIdx.x, nthreads = blockDim.x, lane = tid & 31, warp = tid >> 5;
    const int nwarps = nthreads >> 5, S = p.T * p.K;
    for (int e = tid; e < p.E; e += nthreads) R.first[e] = S;
    __syncthreads();
    for (int s = tid; s < S; s += nthreads) {
        const int e = p.ids[s];
        R.ids[s] = e;
        R.gw[s] = p.gw[s];
        if (e >= 0 && e < p.E) atomicMin(&R.first[e], s);
        else atomicOr(&p.counters[CTR_ERROR], ERR_BAD_EXPERT);
    }
    __syncthreads();
    if (warp == 0) {  // compact the first occurrences, in slot order
        int base = 0;
        for (int s0 = 0; s0 < S; s0 += 32) {
            const int s = s0 + lane;
            const int e = s < S ? R.ids[s] : -1;
            const bool first = e >= 0 && e < p.E && R.first[e] == s;
            const unsigned mask = __ballot_sync(0xffffffffu, first);
            if (first) R.expert[base + __popc(mask & ((1u << lane) - 1u))] = e;
            base += __popc(mask);
        }
        if (lane == 0) R.n_used = base;
    }
    __syncthreads();
    for (int u = warp; u < R.n_used; u += nwarps) {  // a warp per expert, a lane per token
        const int e = R.expert[u];
        bool member = false;
        float w = 0.0f;
        if (lane < p.T) {
            for (int k = 0; k < p.K; ++k) {
                if (R.ids[lane * p.K + k] == e) { member = true; w += R.gw[lane * p.K + k]; }
            }
        }
        const unsigned mask = __ballot_sync(0xffffffffu, member);
        if (member) {
            const int n = __popc(mask & ((1u << lane) - 1u));
            R.token[u][n] = (unsigned char)lane;
            R.weight[u][n] = w;
        }
        if (lane == 0) {
            R.count[u] = __popc(mask);
            const int ref = wts.resolve(e);
            if (ref < 0) atomicOr(&p.counters[CTR_ERROR], ERR_NOT_RESIDENT);
            R.ref[u] = ref;
        }
    }
    __syncthreads();
}

// ---- the persistent item loop -------------------------------------------------------------------------------

struct __align__(16) Scratch {
    float red[MOE_MAX_WARPS][16][32];     // per-warp fragments [value][lane] for the fixed-order k-split sum
    float tile[MOE_MAX_WARPS][MOE_TILE];  // per-warp phase-2 partial in token space
    int ticket[2];                        // the block's next item, double-buffered: one barrier per item
};

// Fixed-order sum of `n` floats per lane over the KS warps of each row tile; the result is valid in the
// tile's first warp (k split 0). A barrier for the whole block, skipped when KS == 1 (uniform). Rows of
// S.red are lane-contiguous: no bank conflicts.
__device__ __forceinline__ void ksplit_sum(Scratch& S, float* v, int n, int KS) {
    if (KS == 1) return;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int i = 0; i < n; ++i) S.red[warp][i][lane] = v[i];
    __syncthreads();
    if (warp % KS == 0) {
#pragma unroll
        for (int i = 0; i < n; ++i) {
            float s = S.red[warp][i][lane];
            for (int k = 1; k < KS; ++k) s += S.red[warp + k][i][lane];
            v[i] = s;
        }
    }
}

template <int NT, class Weights>
__device__ void phase1_item(const Routing& R, Scratch& S, const MoeArgs& p, const Weights& wts, int u, int r0) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, tiles = (blockDim.x >> 5) / p.KS;
    const int g = lane >> 2, c = lane & 3, cnt = R.count[u], ks = warp % p.KS;
    const int r = r0 * tiles + warp / p.KS;
    const bool active = r < p.F / 16;  // the last item of an expert may be partial
    prefetch_rows([&](int n) { return p.x + (size_t)R.token[u][n] * p.D; }, cnt, 0, p.D / 64);
    const bf16_t* xrow[NT];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        const int n = min(8 * nt + g, cnt - 1);
        xrow[nt] = p.x + (size_t)R.token[u][n] * p.D;
    }
    float acc[2 * NT * 4];  // gate fragments [NT][4], then up fragments [NT][4]
#pragma unroll
    for (int i = 0; i < 2 * NT * 4; ++i) acc[i] = 0.0f;
    if (active && R.ref[u] >= 0) wts.template gate_up<NT>(acc, R.ref[u], r, xrow, cnt, p, ks, p.KS, lane);
    ksplit_sum(S, acc, 2 * NT * 4, p.KS);
    if (ks == 0 && active) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int n = 8 * nt + 2 * c + (i & 1), row = 16 * r + g + 8 * (i >> 1);
                if (n < cnt) {
                    const float gv = acc[nt * 4 + i], uv = acc[NT * 4 + nt * 4 + i];
                    const float hv = gv / (1.0f + __expf(-gv)) * uv;
                    p.hbuf[((size_t)u * MOE_MAX_TOKENS + n) * p.F + row] = f32_to_bf16(hv);
                }
            }
        }
        __threadfence();  // h visible device-wide before the completion count says so
        __syncwarp();
        if (lane == 0) atomicAdd(&p.counters[CTR_ROWS + p.D / 16 + u], 1);  // one row tile of expert u done
    }
}

// The last warp to finish row tile r: sum its n_used * J partials in (u, j) order, write y, re-arm the ticket.
__device__ void reduce_row_tile(const MoeArgs& p, int r, int n_used) {
    const int lane = threadIdx.x & 31, parts = n_used * p.J;
    const float4* src = reinterpret_cast<const float4*>(p.partial + (size_t)r * p.u_cap * p.J * MOE_TILE) + 2 * lane;
    float4 sum[2] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
    // MOE_RED_BATCH partials (2 16-byte loads per lane each) per L2 round trip, added in (u, j) order
    for (int q0 = 0; q0 < parts; q0 += MOE_RED_BATCH) {
        float4 v[MOE_RED_BATCH][2];
#pragma unroll
        for (int b = 0; b < MOE_RED_BATCH; ++b) {
            const int q = min(q0 + b, parts - 1);
#pragma unroll
            for (int h = 0; h < 2; ++h) v[b][h] = ld_l2f4(src + (size_t)q * (MOE_TILE / 4) + h);
        }
#pragma unroll
        for (int b = 0; b < MOE_RED_BATCH; ++b) {
            if (q0 + b < parts) {
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    sum[h].x += v[b][h].x; sum[h].y += v[b][h].y; sum[h].z += v[b][h].z; sum[h].w += v[b][h].w;
                }
            }
        }
    }
    const float out[8] = {sum[0].x, sum[0].y, sum[0].z, sum[0].w, sum[1].x, sum[1].y, sum[1].z, sum[1].w};
#pragma unroll
    for (int m = 0; m < 8; ++m) {
        const int i = 8 * lane + m, row = i >> 4, t = i & 15;
        if (t < p.T) p.y[(size_t)t * p.D + 16 * r + row] = f32_to_bf16(out[m]);
    }
    if (lane == 0) p.counters[CTR_ROWS + r] = 0;
}

// The weighted down fragments of row tile r (this warp's acc, NT token tiles) as a dense [16 rows x 16 tokens]
// tile in `tile` (1 KB of shared memory the warp owns), stored as the (u, j) partial of r.
template <int NT, class RoutingT>
__device__ __forceinline__ void store_partial(float* tile, const RoutingT& R, const MoeArgs& p, const float* acc, int u,
                                              int r, int j) {
    const int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3, cnt = R.count[u];
    float4* tile4 = reinterpret_cast<float4*>(tile) + 2 * lane;  // this lane's 8 values of the 256
    tile4[0] = tile4[1] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    __syncwarp();
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int n = 8 * nt + 2 * c + (i & 1);
            if (n < cnt) tile[(g + 8 * (i >> 1)) * 16 + R.token[u][n]] = R.weight[u][n] * acc[nt * 4 + i];
        }
    }
    __syncwarp();
    float4* dst = reinterpret_cast<float4*>(p.partial + (((size_t)r * p.u_cap + u) * p.J + j) * MOE_TILE) + 2 * lane;
    dst[0] = tile4[0];
    dst[1] = tile4[1];
}

// Count a stored partial on its row tile; the warp that stores the last of the n_used * J sums them into y.
__device__ __forceinline__ void count_partial(const MoeArgs& p, int r, int n_used) {
    __threadfence();  // the partial visible device-wide before the count says so
    __syncwarp();
    int last = 0;
    if ((threadIdx.x & 31) == 0) last = atomicAdd(&p.counters[CTR_ROWS + r], 1) == n_used * p.J - 1;
    if (__shfl_sync(0xffffffffu, last, 0)) {
        __threadfence();
        reduce_row_tile(p, r, n_used);
    }
}

template <int NT, class Weights>
__device__ void phase2_item(const Routing& R, Scratch& S, const MoeArgs& p, const Weights& wts, int u, int r0, int j) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, tiles = (blockDim.x >> 5) / p.KS;
    const int g = lane >> 2, cnt = R.count[u], ks = warp % p.KS;
    const int r = r0 * tiles + warp / p.KS;
    const bool active = r < p.D / 16;
    int lo, hi;  // this split's 64-wide chunks of F
    Weights::split(p.F / 64, p.J, j, lo, hi);
    prefetch_rows([&](int n) { return p.hbuf + ((size_t)u * MOE_MAX_TOKENS + n) * p.F; }, cnt, lo, hi);
    const bf16_t* hrow[NT];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        const int n = min(8 * nt + g, cnt - 1);
        hrow[nt] = p.hbuf + ((size_t)u * MOE_MAX_TOKENS + n) * p.F;
    }
    float acc[NT * 4];
#pragma unroll
    for (int i = 0; i < NT * 4; ++i) acc[i] = 0.0f;
    if (active && R.ref[u] >= 0) wts.template down<NT>(acc, R.ref[u], r, lo, hi, hrow, cnt, p, ks, p.KS, lane);
    ksplit_sum(S, acc, NT * 4, p.KS);
    if (ks != 0 || !active) return;
    // the row tile's first warp: its weighted fragments into a dense token-space tile, then the partial
    store_partial<NT>(S.tile[warp], R, p, acc, u, r, j);
    count_partial(p, r, R.n_used);
}

// What a ticket names: a phase-1 item (u, r0) or a phase-2 item (u, r0, j)
struct Item { int phase, u, r0, j; };

__device__ __forceinline__ Item decode(int ticket, int n_p1, int items1, int items2, int J) {
    if (ticket < n_p1) return {1, ticket / items1, ticket % items1, 0};
    const int q = ticket - n_p1, per_expert = items2 * J;
    return {2, q / per_expert, (q % per_expert) / J, q % J};
}

// One warp asks for a phase-2 item's down weights (the block's row tiles, split j) to be brought into L2:
// they do not depend on h, so they stream while the block waits for the expert's phase 1.
template <class Weights>
__device__ void prefetch_down_item(const Routing& R, const MoeArgs& p, const Weights& wts, const Item& it, int tiles) {
    const int ref = R.ref[it.u], r = it.r0 * tiles;
    if (ref < 0) return;
    int lo, hi;
    Weights::split(p.F / 64, p.J, it.j, lo, hi);
    wts.prefetch_down(ref, r, min(tiles, p.D / 16 - r), lo, hi, p, threadIdx.x & 31);
}

template <int NT, class Weights>
__device__ void moe_layer(const MoeArgs& p, const Weights& wts) {
    __shared__ Routing R;
    __shared__ Scratch S;
    const int tid = threadIdx.x;
#if MOE_L2_PREFETCH
    const int last_warp = (blockDim.x >> 5) - 1;  // asks for the down weights of the block's phase-2 items
#endif
    if (tid == 0) S.ticket[0] = atomicAdd(&p.counters[CTR_TICKET], 1);  // its latency overlaps the prologue
    build_routing(R, p, wts);  // ends with a barrier, which also publishes S.ticket
    const int n_used = R.n_used, FT = p.F / 16, DT = p.D / 16, tiles = (blockDim.x >> 5) / p.KS;
    const int items1 = (FT + tiles - 1) / tiles, items2 = (DT + tiles - 1) / tiles;  // per expert (and split)
    const int n_p1 = n_used * items1, n_p2 = n_used * items2 * p.J;
    const int total = n_p1 + n_p2;
    int* p1_done = p.counters + CTR_ROWS + DT;  // [U] phase-1 row tiles finished per expert in use
    int ticket = S.ticket[0];
    int ready_u = -1;  // experts up to this one have finished phase 1 (tickets only grow, so u never decreases)
    for (int slot = 1; ticket < total; slot ^= 1) {
        int next = 0;
        if (tid == 0) next = atomicAdd(&p.counters[CTR_TICKET], 1);  // claimed early: its latency overlaps the item
        const Item it = decode(ticket, n_p1, items1, items2, p.J);
        if (it.phase == 1) {
            phase1_item<NT>(R, S, p, wts, it.u, it.r0);
        } else {
#if MOE_L2_PREFETCH
            if ((tid >> 5) == last_warp) prefetch_down_item(R, p, wts, it, tiles);
#endif
            if (it.u > ready_u) {
                if (tid == 0) {
                    while (ld_acquire(&p1_done[it.u]) < FT) __nanosleep(64);
                }
                __syncthreads();
                ready_u = it.u;
            }
            phase2_item<NT>(R, S, p, wts, it.u, it.r0, it.j);
        }
        // the other slot was last read before the previous barrier, so one barrier per item suffices
        if (tid == 0) S.ticket[slot] = next;
        __syncthreads();
        ticket = S.ticket[slot];
    }
    if (tid == 0 && atomicAdd(&p.counters[CTR_EXITED], 1) == (int)gridDim.x - 1) {
        p.counters[CTR_TICKET] = 0;  // every other block has taken its last ticket and left
        p.counters[CTR_EXITED] = 0;
        for (int u = 0; u < n_used; ++u) p1_done[u] = 0;
    }
}
