// Decode path of the fused INT4 MoE layer (T <= 2 tokens), included by int4_moe.cu: GEMV-like scheduling,
// still one launch per layer, deterministic, no floating-point atomics.
//
// Why not the tiled kernel: at T = 1 a row tile's 64 KB of gate/up weights is too long for one warp to
// stream alone (a warp holds ~4 KB in flight), so the tiled kernel splits the reduction over warps of a block
// and meets at barriers after every item, and its register pipelines drain at every item.
// Why not FFMA on CUDA cores: fp32 accumulation needs each weight as an fp32 register, i.e. a shift and a LOP3
// per value plus the FFMA (~23 instructions per packed word), against 8 for LOP3 dequantization and one mma.
// So the mma stays the dot-product engine (7 of its 8 token columns idle) and the work is cut differently:
//
//   phase 1 (gate/up)  the 128-wide groups of every (expert in use u, 16-row tile r of F) pair, u-major, form
//             one sequence of N1 = U*(F/16)*(D/128) groups, cut into R1 equal contiguous ranges;
//   phase 2 (down)     the groups of every (16-row tile r of D, expert u) pair, r-major, N2 = (D/16)*U*(F/128),
//             cut into R2 ranges. A range crosses tile (and expert) boundaries without draining its pipeline.
// A warp claims ranges from one integer ticket (all phase-1 ranges before any phase-2 range, so a warp waiting
// for phase 1 only waits on ranges already held by running warps: no deadlock whatever the grid). Where a
// range leaves a tile it writes the tile's partial sums to a slot numbered range + tile (unique, no gaps
// needed) and adds its group count to the tile's counter; the warp that completes the count sums the tile's
// slots in range order and finishes it: SiLU(gate)*up rounded to bf16 into h (phase 1), or y (phase 2).
// Phase-2 ranges wait until every expert's phase 1 is done; their first down weights are requested before
// that wait, since they do not depend on h.
//
// Weights in flight: each warp streams its range through a ring of MOE_DECODE_STAGES shared-memory slots filled
// by cp.async (16 bytes a lane, the same bytes the lane later reads back, so only the scales need the warp's
// sync), with compile-time slot indices. Register stages (run 12, first state) held 2 groups (4 KB) per warp
// at 128 registers and left the kernel latency-bound (Nsight Compute, phi T = 1: 0.40 eligible warps per
// scheduler, DRAM 32 %); a third register stage spills.
//
// Dequantization without the subtraction: A = (nibble | 0x4300) is the bf16 number 136 + q, so an mma over a
// group gives t = sum (136 + q) b, and sum q b = t - 136 * sum b. The sums of the B operand per group and token
// are computed once: for x in the prologue of each block (with x staged in shared memory), for h by the
// warps that finish a phase-1 tile (per 16 rows, summed per group by the phase-2 warps). This removes the
// four bf16x2 subtractions of a packed word (11 -> 7 instructions). t stays exact enough: the products are
// exact in fp32 and the offset term is ~136x the result, far inside fp32's 24 bits for 128-term groups.
//
// Accumulator fragments at T <= 2: lane (g, c = 0) holds rows g and g + 8 for token columns 0 and 1
// (d0 = (g, 0), d1 = (g, 1), d2 = (g+8, 0), d3 = (g+8, 1)); lanes c > 0 hold copies of token columns and are
// ignored. A tile's partial is those 8 lanes' float4s: element 4g + j is row g + 8*(j/2), token j%2.

#ifndef MOE_DECODE_STAGES
#define MOE_DECODE_STAGES 4  // shared-memory ring slots (groups in flight) per warp; -D to change
#endif
// one slot: phase 1: codes [4 vectors][32 lanes] x 16 B (gate 2 chunks, up 2 chunks), then scales [16] at 2048;
// phase 2: codes [2][32] x 16 B, h fragments [2 tokens][2 chunks][2 halves][4 c] x 16 B at 1024, scales [8] at 2048
#define DEC_SLOT_BYTES 2112
#define DEC_SLOT_H 1024
#define DEC_SLOT_SCALES 2048
#define DEC_TOKENS 2
#define DEC_OFFSET 136.0f  // dequantized A = DEC_OFFSET + q
#define FULL_MASK 0xffffffffu

struct DecodeShape {
    int T, U, D, F, FT, DT, G1, G2;  // tokens, experts in use, dims, 16-row tiles of F and D, groups of D and F
    int N1, N2, R1, R2;              // groups and ranges of phase 1 and phase 2
    float* p1;                       // [R1 + U*FT, 64] phase-1 slots: gate [32], up [32]
    float* p2;                       // [R2 + DT, 32] phase-2 slots (gate-weighted)
    float* sh16;                     // [U, FT, 2] sum of h over each 16-row tile of F, per token
    int* tile_done;                  // [U*FT] phase-1 groups arrived per (u, r)
    int* row_done;                   // [DT] phase-2 groups arrived per tile of D
    int* p1_done;                    // [U] phase-1 tiles finished per expert
};

// range i of R over N groups starts at floor(i*N/R); every range is non-empty when R <= N
__device__ __forceinline__ int range_lo(int i, int R, int N) { return (int)((long long)i * N / R); }
__device__ __forceinline__ int range_of(int q, int R, int N) { return (int)(((long long)(q + 1) * R - 1) / N); }

__device__ __forceinline__ float ld_l2f(const float* p) {  // slots written by other SMs in this launch
    float v;
    asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p));
    return v;
}

__device__ __forceinline__ unsigned smem_u32(const void* p) {  // shared-window address of a generic pointer
    unsigned a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

__device__ __forceinline__ void cp_async16(unsigned dst, const void* src) {  // weights: L2 only, as ld_stream
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(dst), "l"(src) : "memory");
}

__device__ __forceinline__ void cp_async4(unsigned dst, const void* src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" :: "r"(dst), "l"(src) : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory"); }

// Groups first, first+1, ... < end through a warp's ring of S slots: issue(q, slot) starts q's copies into a
// slot, consume(q, slot) uses them once landed. Every step commits one cp.async group (empty past the end),
// so "at most S - 1 pending" always means the oldest step's copies are in. Not unrolled: the slot only
// addresses shared memory, and unrolled copies of the steps made the kernel 156 KB of code, which missed in the
// instruction cache (3.3 of ~16 stall cycles per instruction, run 12b).
template <int S, class Issue, class Consume>
__device__ __forceinline__ void ring_pipeline(int first, int end, Issue issue, Consume consume) {
#pragma unroll 1
    for (int k = 0; k < S; ++k) {
        if (first + k < end) issue(first + k, k);
        cp_async_commit();
    }
    int slot = 0;
#pragma unroll 1
    for (int q = first; q < end; ++q) {
        cp_async_wait<S - 1>();
        __syncwarp();  // the other lanes' copies visible as well
        consume(q, slot);
        __syncwarp();  // every lane is done with the slot before it is refilled
        if (q + S < end) issue(q + S, slot);
        cp_async_commit();
        slot = slot + 1 == S ? 0 : slot + 1;
    }
}

// fragment registers of one k-tile as 136 + q (no subtraction: see the header)
__device__ __forceinline__ void dequant_biased(unsigned w, unsigned (&a)[4]) {
#pragma unroll
    for (int s = 0; s < 4; ++s) a[s] = and_or(w >> (4 * s), 0x000f000fu, 0x43004300u);
}

// sum of base[i * stride] over slots i0..i1 in slot order, 8 loads in flight
__device__ __forceinline__ float ordered_sum(const float* base, int stride, int i0, int i1) {
    float sum = 0.0f;
    for (int i = i0; i <= i1; i += 8) {
        float v[8];
#pragma unroll
        for (int b = 0; b < 8; ++b) v[b] = i + b <= i1 ? ld_l2f(base + (size_t)(i + b) * stride) : 0.0f;
#pragma unroll
        for (int b = 0; b < 8; ++b) sum += v[b];
    }
    return sum;
}

// gate weight of tokens 0 and 1 for expert u; 0 where the token does not use it
__device__ __forceinline__ float2 token_weights(const Routing& R, int u) {
    float2 w = make_float2(0.0f, 0.0f);
    for (int n = 0; n < R.count[u]; ++n) (R.token[u][n] == 0 ? w.x : w.y) = R.weight[u][n];
    return w;
}

// x into shared memory as 16-byte octets [D/8][2 token slots] (a lane's B loads are then conflict-free) and
// -136 * sum of x per 128-wide group and slot; slot 1 repeats token 0 when T = 1.
__device__ void stage_x(const MoeArgs& p, uint4* xs, float* nsx) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    for (int task = warp; task < 2 * (p.D / 128); task += nwarps) {
        const int slot = task & 1, grp = task >> 1, src = min(slot, p.T - 1);
        const uint2 v = *reinterpret_cast<const uint2*>(p.x + (size_t)src * p.D + 128 * grp + 4 * lane);
        reinterpret_cast<uint2*>(xs)[((16 * grp + (lane >> 1)) * 2 + slot) * 2 + (lane & 1)] = v;
        float sum = (bf16_lo(v.x) + bf16_hi(v.x)) + (bf16_lo(v.y) + bf16_hi(v.y));
#pragma unroll
        for (int off = 16; off; off >>= 1) sum += __shfl_xor_sync(FULL_MASK, sum, off);
        if (lane == 0) nsx[2 * grp + slot] = -DEC_OFFSET * sum;
    }
    __syncthreads();
}

// ---- phase 1: gate and up ------------------------------------------------------------------------------------

// The warp that completes tile tau = (u, r) of F: its slots summed in range order, h = SiLU(gate) * up in bf16
// (0 for a token that does not use u), the tile's sum of h per token, then the expert's count.
__device__ __noinline__ void finish_gate_up(const Routing& R, const DecodeShape& s, const MoeArgs& p, int tau) {
    const int lane = threadIdx.x & 31, u = tau / s.FT, r = tau - u * s.FT;
    const int i0 = range_of(tau * s.G1, s.R1, s.N1), i1 = range_of(tau * s.G1 + s.G1 - 1, s.R1, s.N1);
    const float* base = s.p1 + (size_t)tau * 64 + lane;
    const float gv = ordered_sum(base, 64, i0, i1), uv = ordered_sum(base + 32, 64, i0, i1);
    const int row = (lane >> 2) + 8 * ((lane >> 1) & 1), tok = lane & 1;
    bool member = false;
    for (int n = 0; n < R.count[u]; ++n) member |= R.token[u][n] == tok;
    const bf16_t hb = f32_to_bf16(member ? gv / (1.0f + __expf(-gv)) * uv : 0.0f);
    if (tok < s.T) p.hbuf[((size_t)u * MOE_MAX_TOKENS + tok) * s.F + 16 * r + row] = hb;
    float sh = __uint_as_float((unsigned)hb << 16);
#pragma unroll
    for (int off = 2; off < 32; off <<= 1) sh += __shfl_xor_sync(FULL_MASK, sh, off);  // over rows, per token
    if (lane < 2) s.sh16[(size_t)tau * 2 + lane] = sh;
    __threadfence();  // h and its sums visible device-wide before the count says so
    __syncwarp();
    if (lane == 0) {
        s.tile_done[tau] = 0;  // re-armed for the next launch: every range of the tile has arrived
        atomicAdd(&s.p1_done[u], 1);
    }
}

// This range's share of tile tau: its 8 fragment values into slot i + tau, then its group count.
__device__ void flush_gate_up(const Routing& R, const DecodeShape& s, const MoeArgs& p, int i, int tau, int groups,
                              float (&acc)[8]) {
    const int lane = threadIdx.x & 31;
    float* slot = s.p1 + (size_t)(i + tau) * 64 + 4 * (lane >> 2);
    if ((lane & 3) == 0) {
        *reinterpret_cast<float4*>(slot) = make_float4(acc[0], acc[1], acc[2], acc[3]);
        *reinterpret_cast<float4*>(slot + 32) = make_float4(acc[4], acc[5], acc[6], acc[7]);
    }
#pragma unroll
    for (int k = 0; k < 8; ++k) acc[k] = 0.0f;
    __threadfence();
    __syncwarp();
    int last = 0;
    if (lane == 0) last = atomicAdd(&s.tile_done[tau], groups) + groups == s.G1;
    if (__shfl_sync(FULL_MASK, last, 0)) {
        __threadfence();
        finish_gate_up(R, s, p, tau);
    }
}

template <int S>
__device__ void decode_gate_up(const Routing& R, const DecodeShape& s, const MoeArgs& p, const Int4Weights& wts,
                               const uint4* xs, const float2* nsx, uint4* ring, int i) {
    const int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3, tok = min(g, s.T - 1);
    const int q_lo = range_lo(i, s.R1, s.N1), q_hi = range_lo(i + 1, s.R1, s.N1), per_u = s.FT * s.G1;
    // copies: running pointers into the stacked [E, F/16, D/128] groups, reset where the expert changes
    const unsigned ring_s = smem_u32(ring) + 16 * lane;
    int lu = q_lo / per_u, lnext = (lu + 1) * per_u;
    const uint4 *gq, *uq;
    const unsigned* sp;  // lanes 0-7: gate scale of row g = lane, lanes 8-15: up scale of row g = lane - 8
    auto seek = [&](int q) {
        const size_t k = (size_t)R.expert[lu] * per_u + (q - lu * per_u);
        gq = wts.gate_q + 64 * k + lane, uq = wts.up_q + 64 * k + lane;
        sp = (lane < 8 ? wts.gate_s : wts.up_s) + 8 * k + (lane & 7);
    };
    seek(q_lo);
    // compute: tile and group of q, start of the current slot's groups
    int tau = q_lo / s.G1, grp = q_lo - tau * s.G1, seg_lo = q_lo;
    float acc[8];  // gate d0..d3, up d0..d3
#pragma unroll
    for (int k = 0; k < 8; ++k) acc[k] = 0.0f;
    ring_pipeline<S>(q_lo, q_hi,
        [&](int q, int slot) {
            if (q == lnext) {
                ++lu;
                lnext += per_u;
                seek(q);
            }
            const unsigned dst = ring_s + slot * DEC_SLOT_BYTES;
            cp_async16(dst, gq);
            cp_async16(dst + 512, gq + 32);
            cp_async16(dst + 1024, uq);
            cp_async16(dst + 1536, uq + 32);
            if (lane < 16) cp_async4(dst - 12 * lane + DEC_SLOT_SCALES, sp);  // scale [lane] of the slot
            gq += 64, uq += 64, sp += 8;
        },
        [&](int q, int slot) {
            const uint4* w = ring + slot * (DEC_SLOT_BYTES / 16) + lane;  // [vector][lane]
            const unsigned* sc = reinterpret_cast<const unsigned*>(ring + slot * (DEC_SLOT_BYTES / 16) + DEC_SLOT_SCALES / 16);
            float t[2][4] = {};
#pragma unroll
            for (int kk = 0; kk < 2; ++kk) {
                const uint4 xb[2] = {xs[(8 * (2 * grp + kk) + c) * 2 + tok], xs[(8 * (2 * grp + kk) + 4 + c) * 2 + tok]};
#pragma unroll
                for (int m = 0; m < 2; ++m) {
                    const uint4 wv = w[32 * (2 * m + kk)];
                    unsigned a[4][4];
#pragma unroll
                    for (int j = 0; j < 4; ++j) dequant_biased(word(wv, j), a[j]);
                    mma_chunk(t[m], a, xb);
                }
            }
            const float2 n = nsx[grp];
#pragma unroll
            for (int m = 0; m < 2; ++m) {
                const unsigned scale = sc[8 * m + g];
                const float s_lo = bf16_lo(scale), s_hi = bf16_hi(scale);
                acc[4 * m + 0] += s_lo * (t[m][0] + n.x);
                acc[4 * m + 1] += s_lo * (t[m][1] + n.y);
                acc[4 * m + 2] += s_hi * (t[m][2] + n.x);
                acc[4 * m + 3] += s_hi * (t[m][3] + n.y);
            }
            if (++grp == s.G1 || q + 1 == q_hi) {
                flush_gate_up(R, s, p, i, tau, q + 1 - seg_lo, acc);
                seg_lo = q + 1;
                if (grp == s.G1) {
                    grp = 0;
                    ++tau;
                }
            }
        });
}

// ---- phase 2: down ---------------------------------------------------------------------------------------------

// The warp that completes tile r of D: its slots summed in range order into y.
__device__ __noinline__ void finish_down(const DecodeShape& s, const MoeArgs& p, int r) {
    const int lane = threadIdx.x & 31, per_r = s.U * s.G2;
    const int i0 = range_of(r * per_r, s.R2, s.N2), i1 = range_of(r * per_r + per_r - 1, s.R2, s.N2);
    const float v = ordered_sum(s.p2 + (size_t)r * 32 + lane, 32, i0, i1);
    const int row = (lane >> 2) + 8 * ((lane >> 1) & 1), tok = lane & 1;
    if (tok < s.T) p.y[(size_t)tok * s.D + 16 * r + row] = f32_to_bf16(v);
    if (lane == 0) s.row_done[r] = 0;  // re-armed: every range of the tile has arrived
}

__device__ void flush_down(const DecodeShape& s, const MoeArgs& p, int i, int r, int groups, float (&acc)[4]) {
    const int lane = threadIdx.x & 31;
    if ((lane & 3) == 0) {
        *reinterpret_cast<float4*>(s.p2 + (size_t)(i + r) * 32 + 4 * (lane >> 2)) = make_float4(acc[0], acc[1], acc[2], acc[3]);
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) acc[k] = 0.0f;
    __threadfence();
    __syncwarp();
    int last = 0;
    if (lane == 0) last = atomicAdd(&s.row_done[r], groups) + groups == s.U * s.G2;
    if (__shfl_sync(FULL_MASK, last, 0)) {
        __threadfence();
        finish_down(s, p, r);
    }
}

// -136 * (sum of h over group q of phase 2) per token, from the phase-1 tile sums
__device__ __noinline__ float2 window_sums(const DecodeShape& s, int q) {
    float2 n = make_float2(0.0f, 0.0f);
    const int per_r = s.U * s.G2, v = q % per_r, u = v / s.G2, grp = v - u * s.G2;
    const float4* src = reinterpret_cast<const float4*>(s.sh16 + ((size_t)u * s.FT + 8 * grp) * 2);
    float4 t[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) t[k] = ld_l2f4(src + k);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        n.x += t[k].x + t[k].z;
        n.y += t[k].y + t[k].w;
    }
    return make_float2(-DEC_OFFSET * n.x, -DEC_OFFSET * n.y);
}

// The h fragments of group grp of expert use u into a slot: lane (g < T, c) copies its token's 4 pieces.
__device__ __forceinline__ void copy_h(const DecodeShape& s, const MoeArgs& p, unsigned slot_s, int u, int grp) {
    const int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    if (g >= s.T) return;
    const bf16_t* src = p.hbuf + ((size_t)u * MOE_MAX_TOKENS + g) * s.F + 128 * grp + 8 * c;
#pragma unroll
    for (int k = 0; k < 4; ++k) cp_async16(slot_s + DEC_SLOT_H + (4 * g + k) * 64 + 16 * c, src + 32 * k);
}

template <int S>
__device__ void decode_down(const Routing& R, const DecodeShape& s, const MoeArgs& p, const Int4Weights& wts,
                            uint4* ring, int i) {
    const int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3, tok = min(g, s.T - 1);
    const int q_lo = range_lo(i, s.R2, s.N2), q_hi = range_lo(i + 1, s.R2, s.N2), per_r = s.U * s.G2;
    const int r0 = q_lo / per_r, u0 = (q_lo - r0 * per_r) / s.G2, grp0 = q_lo - r0 * per_r - u0 * s.G2;
    // copies: running pointers into the stacked [E, D/16, F/128] groups, reset at each (tile, expert) piece;
    // h only once phase 1 is complete (the first S groups' h is copied right after the wait)
    const unsigned ring_s = smem_u32(ring);
    int lu = u0, lg = grp0, lr = r0;
    bool ready = false;
    const uint4* dq;
    const unsigned* ds;  // lanes 0-7: the scale of row g = lane
    auto seek = [&]() {
        const size_t k = ((size_t)R.expert[lu] * s.DT + lr) * s.G2 + lg;
        dq = wts.down_q + 64 * k + lane, ds = wts.down_s + 8 * k + (lane & 7);
    };
    seek();
    // compute: the same for the group being multiplied, plus its gate weights
    int cr = r0, cu = u0, cg = grp0, seg_lo = q_lo;
    float2 w = token_weights(R, cu), nsh = make_float2(0.0f, 0.0f);
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    ring_pipeline<S>(q_lo, q_hi,
        [&](int, int slot) {
            const unsigned dst = ring_s + slot * DEC_SLOT_BYTES;
            cp_async16(dst + 16 * lane, dq);
            cp_async16(dst + 512 + 16 * lane, dq + 32);
            if (lane < 8) cp_async4(dst + DEC_SLOT_SCALES + 4 * lane, ds);
            if (ready) copy_h(s, p, dst, lu, lg);
            dq += 64, ds += 8;
            if (++lg == s.G2) {
                lg = 0;
                if (++lu == s.U) {
                    lu = 0;
                    ++lr;
                }
                seek();
            }
        },
        [&](int q, int slot) {
            const int j = q - q_lo;
            if (j == 0) {  // h is complete once every expert's phase-1 tiles are
                for (int u = lane; u < s.U; u += 32) {
                    while (ld_acquire(&s.p1_done[u]) < s.FT) __nanosleep(128);
                }
                __syncwarp();
                for (int k = 0, u = cu, gk = cg; k < S && q_lo + k < q_hi; ++k) {  // h of the groups issued before
                    copy_h(s, p, ring_s + k * DEC_SLOT_BYTES, u, gk);
                    if (++gk == s.G2) gk = 0, u = u + 1 == s.U ? 0 : u + 1;
                }
                cp_async_commit();
                cp_async_wait<0>();
                __syncwarp();
                ready = true;
            }
            if ((j & 31) == 0) nsh = q + lane < q_hi ? window_sums(s, q + lane) : make_float2(0.0f, 0.0f);
            const float n0 = __shfl_sync(FULL_MASK, nsh.x, j & 31), n1 = __shfl_sync(FULL_MASK, nsh.y, j & 31);
            const uint4* sl = ring + slot * (DEC_SLOT_BYTES / 16);
            const unsigned scale = reinterpret_cast<const unsigned*>(sl + DEC_SLOT_SCALES / 16)[g];
            float t[4] = {};
#pragma unroll
            for (int kk = 0; kk < 2; ++kk) {
                const uint4 hb[2] = {sl[DEC_SLOT_H / 16 + (4 * tok + 2 * kk) * 4 + c],
                                     sl[DEC_SLOT_H / 16 + (4 * tok + 2 * kk + 1) * 4 + c]};
                const uint4 wv = sl[32 * kk + lane];
                unsigned a[4][4];
#pragma unroll
                for (int jt = 0; jt < 4; ++jt) dequant_biased(word(wv, jt), a[jt]);
                mma_chunk(t, a, hb);
            }
            const float s_lo = bf16_lo(scale), s_hi = bf16_hi(scale);
            acc[0] += s_lo * w.x * (t[0] + n0);
            acc[1] += s_lo * w.y * (t[1] + n1);
            acc[2] += s_hi * w.x * (t[2] + n0);
            acc[3] += s_hi * w.y * (t[3] + n1);
            const bool tile_end = cg + 1 == s.G2 && cu + 1 == s.U;
            if (++cg == s.G2) {
                cg = 0;
                cu = cu + 1 == s.U ? 0 : cu + 1;
                w = token_weights(R, cu);
            }
            if (tile_end || q + 1 == q_hi) {
                flush_down(s, p, i, cr, q + 1 - seg_lo, acc);
                seg_lo = q + 1;
                cr += tile_end;
            }
        });
}

// ---- the kernel body -------------------------------------------------------------------------------------------

template <int S>
__device__ void moe_int4_decode_layer(const MoeArgs& p, const Int4Weights& wts, int ranges) {
    __shared__ Routing R;
    // x octets [D/8][2]; -136 * sum of x [D/128][2] floats, padded to 16 bytes; a ring of S slots per warp
    extern __shared__ uint4 dyn[];
    const int lane = threadIdx.x & 31;
    int ticket = 0;
    if (lane == 0) ticket = atomicAdd(&p.counters[CTR_TICKET], 1);  // its latency overlaps the prologue
    build_routing(R, p, wts);
    uint4* xs = dyn;
    float* nsx = reinterpret_cast<float*>(dyn + p.D / 4);
    uint4* ring = dyn + p.D / 4 + (p.D / 64 + 3) / 4 + (threadIdx.x >> 5) * S * (DEC_SLOT_BYTES / 16);
    stage_x(p, xs, nsx);
    DecodeShape s;
    s.T = p.T, s.U = R.n_used, s.D = p.D, s.F = p.F, s.FT = p.F / 16, s.DT = p.D / 16, s.G1 = p.D / 128, s.G2 = p.F / 128;
    s.N1 = s.U * s.FT * s.G1, s.N2 = s.DT * s.U * s.G2, s.R1 = min(ranges, s.N1), s.R2 = min(ranges, s.N2);
    s.p1 = p.partial;
    s.p2 = s.p1 + (size_t)(s.R1 + s.U * s.FT) * 64;
    s.sh16 = s.p2 + (size_t)(s.R2 + s.DT) * 32;
    s.row_done = p.counters + CTR_ROWS;
    s.p1_done = s.row_done + s.DT;
    s.tile_done = s.p1_done + p.u_cap;
    for (;;) {
        const int t = __shfl_sync(FULL_MASK, ticket, 0);
        if (t >= s.R1 + s.R2) break;
        if (lane == 0) ticket = atomicAdd(&p.counters[CTR_TICKET], 1);  // claimed early: overlaps the range
        if (t < s.R1) decode_gate_up<S>(R, s, p, wts, xs, reinterpret_cast<const float2*>(nsx), ring, t);
        else decode_down<S>(R, s, p, wts, ring, t - s.R1);
    }
    __syncthreads();
    if (threadIdx.x == 0 && atomicAdd(&p.counters[CTR_EXITED], 1) == (int)gridDim.x - 1) {
        p.counters[CTR_TICKET] = 0;  // every other block has taken its last ticket and left
        p.counters[CTR_EXITED] = 0;
        for (int u = 0; u < s.U; ++u) s.p1_done[u] = 0;
    }
}
