// bf16 MoE layer for verification: the target's experts, read from the device cache arena through the
// slot table (layer, expert -> slot), tokens grouped by expert (moe_common.cuh), one launch per layer.
//
// Arena layout (expert_store.py): slot s holds one expert contiguously as it sits in host memory, bf16
// gate [F, D] | up [F, D] | down [D, F] (nn.Linear layout, rows are outputs), so one expert is one copy.
// A lane reads, per 64-wide chunk, two 16-byte halves of rows g and g + 8: with the k permutation of
// moe_common.cuh these are its tensor-core fragments as they are, no shuffles.

#include "moe_common.cuh"

struct Bf16Weights {
    const uint4* arena;      // [slots, 3 F D / 8]
    const int* slot_table;   // [L, E], -1 where not resident
    int layer, n_slots, E;

    __device__ int resolve(int e) const {
        const int s = slot_table[(size_t)layer * E + e];
        return s >= 0 && s < n_slots ? s : -1;
    }

    struct Rows { uint4 r0[2], r8[2]; };  // the two halves of rows g and g + 8 of one chunk

    static __device__ __forceinline__ Rows load_rows(const uint4* row_g, int row_words, int kc, int c) {
        Rows s;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            s.r0[h] = ld_stream(row_g + 8 * kc + 4 * h + c);
            s.r8[h] = ld_stream(row_g + 8 * row_words + 8 * kc + 4 * h + c);
        }
        return s;
    }

    template <int NT>
    static __device__ __forceinline__ void chunk_mma(float* acc, const Rows& s, const bf16_t* const* rows, int kc,
                                                     int c, bool two) {
        unsigned a[4][4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            a[j][0] = word(s.r0[j >> 1], 2 * (j & 1));
            a[j][1] = word(s.r8[j >> 1], 2 * (j & 1));
            a[j][2] = word(s.r0[j >> 1], 2 * (j & 1) + 1);
            a[j][3] = word(s.r8[j >> 1], 2 * (j & 1) + 1);
        }
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            if (nt == 0 || two) {
                uint4 xb[2];
                load_b(xb, rows[nt], kc, c);
                mma_chunk(acc + nt * 4, a, xb);
            }
        }
    }

    struct GateUpStage { Rows g, u; };

    template <int NT>
    __device__ void gate_up(float* acc, int slot, int r, const bf16_t* const* xrow, int cnt, const MoeArgs& p,
                            int ks, int KS, int lane) const {
        const int row_words = p.D / 8, c = lane & 3, g = lane >> 2;
        const size_t matrix_words = (size_t)p.F * p.D / 8;
        const uint4* gate = arena + (size_t)slot * 3 * matrix_words + (size_t)(16 * r + g) * row_words;
        const uint4* up = gate + matrix_words;
        const bool two = NT == 2 && cnt > 8;
        pipelined<2, GateUpStage>(ks, p.D / 64, KS,
            [&](int kc) { return GateUpStage{load_rows(gate, row_words, kc, c), load_rows(up, row_words, kc, c)}; },
            [&](const GateUpStage& s, int kc) {
                chunk_mma<NT>(acc, s.g, xrow, kc, c, two);
                chunk_mma<NT>(acc + NT * 4, s.u, xrow, kc, c, two);
            });
    }

    // split j of J over the chunks of F
    static __device__ __forceinline__ void split(int chunks, int J, int j, int& lo, int& hi) {
        const int per = (chunks + J - 1) / J;
        lo = min(chunks, j * per);
        hi = min(chunks, (j + 1) * per);
    }

    template <int NT>
    __device__ void down(float* acc, int slot, int r, int lo, int hi, const bf16_t* const* hrow, int cnt,
                         const MoeArgs& p, int ks, int KS, int lane) const {
        const int row_words = p.F / 8, c = lane & 3, g = lane >> 2;
        const size_t matrix_words = (size_t)p.F * p.D / 8;
        const uint4* down_w = arena + (size_t)slot * 3 * matrix_words + 2 * matrix_words + (size_t)(16 * r + g) * row_words;
        const bool two = NT == 2 && cnt > 8;
        pipelined<2, Rows>(lo + ks, hi, KS,
            [&](int kc) { return load_rows(down_w, row_words, kc, c); },
            [&](const Rows& s, int kc) { chunk_mma<NT>(acc, s, hrow, kc, c, two); });
    }
};

template <int NT>
__device__ __forceinline__ void moe_bf16(const bf16_t* x, const int* ids, const float* gw, const uint4* arena,
                                         const int* slot_table, int layer, int n_slots, bf16_t* y, bf16_t* hbuf,
                                         float* partial, int* counters, int T, int K, int E, int D, int F, int J,
                                         int KS, int u_cap) {
    const MoeArgs p{x, ids, gw, y, hbuf, partial, counters, T, K, E, D, F, J, KS, u_cap};
    const Bf16Weights w{arena, slot_table, layer, n_slots, E};
    moe_layer<NT>(p, w);
}

#define MOE_BF16_ENTRY(NAME, NT, BOUNDS)                                                                         \
    extern "C" __global__ void BOUNDS NAME(                                                                     \
        const bf16_t* x, const int* ids, const float* gw, const uint4* arena, const int* slot_table, int layer,  \
        int n_slots, bf16_t* y, bf16_t* hbuf, float* partial, int* counters, int T, int K, int E, int D, int F,  \
        int J, int KS, int u_cap) {                                                                              \
        moe_bf16<NT>(x, ids, gw, arena, slot_table, layer, n_slots, y, hbuf, partial, counters, T, K, E, D, F, J, \
                     KS, u_cap);                                                                                 \
    }

// T <= 8: at most 168 registers, so that 3 blocks of 4 warps fit an SM (its tuned shape); NVRTC otherwise
// allocates a few more and the third block no longer fits (measured 10 % slower). T <= 16 needs ~208 anyway.
MOE_BF16_ENTRY(moe_bf16_t8, 1, __maxnreg__(168))
MOE_BF16_ENTRY(moe_bf16_t16, 2, __launch_bounds__(MOE_MAX_WARPS * 32))
