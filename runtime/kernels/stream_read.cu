// A plain read of the bytes the fused INT4 MoE layer reads: the packed codes and scales of gate, up and down of
// each expert in use, each 16-byte unit once, on the MoE kernels' weight-load path (ld_stream of moe_common.cuh:
// ld.global.nc.L1::no_allocate.v4). Nothing is computed, so its bandwidth is the ceiling that the kernel benchmark
// sets beside the INT4 layer's: what one launch that reads those bytes reaches, timed the same way.
//
// Dimension letters: E experts, U experts in use; a unit is 16 bytes.
//
// The units form one flat index space, codes first, then scales:
//   i < 3 U CU:  code unit  i % CU of segment i / CU, segments ordered (matrix gate/up/down, expert in use u)
//   else:        scale unit j % SU of segment 3 U + j / SU, j = i - 3 U CU, in the same order
// where CU and SU are the units per expert of one matrix's codes and scales (the same for all three: each is an
// F x D or D x F matrix). Every thread strides through the whole space with STREAM_DEPTH loads in flight: a loop
// per segment would leave a thread of this grid (every block that fits the SMs) one or two units per segment at
// T = 1, so the loads in flight would be set by the segment sizes rather than by the kernel.
//
// Every 32-bit word read is XOR-folded into one word per block, and the block's word XORed into sink[0]: the read
// is kept (the compiler cannot drop it), and the fold is checkable on the host (a unit read twice cancels, one
// skipped or read from another expert changes it). One atomic per block costs nothing beside the read.

#include "moe_common.cuh"

#define STREAM_DEPTH 4        // loads in flight per thread
#define STREAM_THREADS 256    // moe_kernels.STREAM_WARPS * 32
#define STREAM_MAX_USED MOE_MAX_SLOTS

__device__ __forceinline__ unsigned fold(uint4 v) { return v.x ^ v.y ^ v.z ^ v.w; }

struct StreamSpace {
    const uint4* const* seg;  // [6 U] first unit of each segment (shared memory)
    unsigned code_total;      // 3 U CU
    unsigned code_units, scale_units, code_segs;

    // selects, not branches: one division per load and no divergence at the codes/scales boundary
    __device__ __forceinline__ const uint4* unit(unsigned i) const {
        const bool code = i < code_total;
        const unsigned j = code ? i : i - code_total, per = code ? code_units : scale_units, s = j / per;
        return seg[(code ? 0 : code_segs) + s] + (j - s * per);
    }
};

// codes and scales of gate, up, down: [E, CU] and [E, SU] units; used [U] distinct expert ids in [0, E)
extern "C" __global__ void __launch_bounds__(STREAM_THREADS) stream_read(
        const uint4* gate_codes, const uint4* gate_scales, const uint4* up_codes, const uint4* up_scales,
        const uint4* down_codes, const uint4* down_scales, int code_units, int scale_units, const int* used,
        int n_used, unsigned* sink) {
    __shared__ const uint4* seg[6 * STREAM_MAX_USED];
    __shared__ unsigned warp_fold[STREAM_THREADS / 32];

    // ---- segment table: the expert ids are read once per block, not once per load ----
    for (int s = threadIdx.x; s < 6 * n_used; s += blockDim.x) {
        const int scales = s >= 3 * n_used, m = s / n_used % 3, u = s % n_used;
        const uint4* base = scales ? (m == 0 ? gate_scales : m == 1 ? up_scales : down_scales)
                                   : (m == 0 ? gate_codes : m == 1 ? up_codes : down_codes);
        seg[s] = base + (size_t)used[u] * (scales ? scale_units : code_units);
    }
    __syncthreads();
    const StreamSpace sp{seg, 3u * n_used * code_units, (unsigned)code_units, (unsigned)scale_units, 3u * n_used};
    const unsigned total = sp.code_total + 3u * n_used * scale_units;

    // ---- the read: software-pipelined, the next STREAM_DEPTH loads issued before the current ones are folded
    // (folding right after each load lets ptxas reuse the registers, which then wait on every load: ~2 in flight)
    const unsigned step = gridDim.x * blockDim.x;
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x, f = 0;
    if (i + (STREAM_DEPTH - 1) * step < total) {
        uint4 v[STREAM_DEPTH];
#pragma unroll
        for (int k = 0; k < STREAM_DEPTH; ++k) v[k] = ld_stream(sp.unit(i + k * step));
        for (i += STREAM_DEPTH * step; i + (STREAM_DEPTH - 1) * step < total; i += STREAM_DEPTH * step) {
            uint4 w[STREAM_DEPTH];
#pragma unroll
            for (int k = 0; k < STREAM_DEPTH; ++k) w[k] = ld_stream(sp.unit(i + k * step));
#pragma unroll
            for (int k = 0; k < STREAM_DEPTH; ++k) {
                f ^= fold(v[k]);
                v[k] = w[k];
            }
        }
#pragma unroll
        for (int k = 0; k < STREAM_DEPTH; ++k) f ^= fold(v[k]);
    }
    for (; i < total; i += step) f ^= fold(ld_stream(sp.unit(i)));

    // ---- the block's fold into sink[0] ----
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) f ^= __shfl_xor_sync(0xffffffffu, f, o);
    if (threadIdx.x % 32 == 0) warp_fold[threadIdx.x / 32] = f;
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned b = 0;
        for (int w = 0; w < (int)blockDim.x / 32; ++w) b ^= warp_fold[w];
        atomicXor(sink, b);
    }
}
