// Device helpers shared by the packed (varlen) attention kernels: inline-PTX wrappers
// for mma.sync m16n8k16 / ldmatrix / cp.async (sm_80+, also fine on sm_90a), 16-bit
// packing, the global->shared tile loader, and the launcher declarations that the
// per-head-dim *_kernel.cu files instantiate. CUDA toolkit headers only (no torch).
//
// Fragment layouts of mma.sync.m16n8k16 (f32 += bf16/f16 x bf16/f16), lane = 0..31,
// g = lane >> 2 (groupID), t = lane & 3 (thread in group); every .b32 register holds
// two 16-bit elements, the lower column (or row, for B) in the low half:
//   A (16x16, row-major)  a0: (row g,   cols 2t,2t+1)    a1: (row g+8, cols 2t,2t+1)
//                         a2: (row g,   cols 2t+8,2t+9)  a3: (row g+8, cols 2t+8,2t+9)
//   B (16x8, "col")       b0: (rows 2t,2t+1,   col g)    b1: (rows 2t+8,2t+9, col g)
//   C/D (16x8, f32)       c0,c1: (row g, cols 2t,2t+1)   c2,c3: (row g+8, cols 2t,2t+1)
// ldmatrix.x4: lanes 8i..8i+7 give the row addresses of 8x8 matrix i, which lands in
// register r_i. Without .trans lane gets M[g][2t], M[g][2t+1]; with .trans it gets
// M[2t][g], M[2t+1][g]. Hence, for a 16x16 block at (r0, c0) of a row-major smem tile:
//   "A-style" lane address (r0 + (lane&7) + ((lane>>3)&1)*8, c0 + (lane>>4)*8):
//       non-trans -> A fragment {a0..a3} of the block (block rows = M, cols = K);
//       .trans    -> B fragments of two n8 tiles when the block rows are K and its
//                    cols are N (r0/r1 = b0/b1 of cols c0..c0+7, r2/r3 of c0+8..c0+15).
//   "B-style" lane address (r0 + (lane&7) + (lane>>4)*8, c0 + ((lane>>3)&1)*8):
//       non-trans -> B fragments of two n8 tiles when the block rows are N and its
//                    cols are K (r0/r1 for rows r0..r0+7, r2/r3 for rows r0+8..r0+15);
//       .trans    -> A fragment of the transposed block (block rows = K, cols = M).
#pragma once

#include <cstdint>
#include <cstring>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "attention/varlen_attn_params.h"

namespace real_ext {
namespace attn {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__host__ __device__ constexpr int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Float32 scratch of the backward pass, carved out of the caller's workspace.
struct BwdWorkspace {
  float* dq_accum = nullptr;  // (total_q, heads_q, head_dim), zeroed, 16-bit dtypes only
  float* lse_log2 = nullptr;  // (heads_q, total_q): lse * log2(e); -inf rows stored as +inf
  float* dsum = nullptr;      // (heads_q, total_q): D = rowsum(dout * out)
};

// Launchers instantiated per head-dim bucket in varlen_attn_{fwd,bwd}_hd*_kernel.cu.
// T is __nv_bfloat16 or __half; kHD is the compiled head-dim bucket (>= p.head_dim).
template <typename T, int kHD>
cudaError_t launch_fwd_tc(const VarlenAttnFwdParams& p, cudaStream_t stream);
template <typename T, int kHD>
cudaError_t launch_bwd_tc(const VarlenAttnBwdParams& p, const BwdWorkspace& ws, cudaStream_t stream);

// Float32 (CUDA-core) path, varlen_attn_fp32_kernel.cu.
cudaError_t launch_fwd_fp32(const VarlenAttnFwdParams& p, cudaStream_t stream);
cudaError_t launch_bwd_fp32(const VarlenAttnBwdParams& p, const BwdWorkspace& ws, cudaStream_t stream);

// ---------------------------------------------------------------------------------
// PTX wrappers

__device__ __forceinline__ uint32_t smem_u32(const void* ptr) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}

// 16-byte async copy; when !pred nothing is read and the 16 bytes are zero-filled.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool pred) {
  const int src_bytes = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes)
               : "memory");
}

// 4-byte async copy (zero-filled when !pred).
__device__ __forceinline__ void cp_async_4(uint32_t dst, const void* src, bool pred) {
  const int src_bytes = pred ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes)
               : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

// A 32-bit global load the compiler cannot merge with an earlier one (used to re-read a
// value after a register-heavy loop rather than keep it live across it).
__device__ __forceinline__ int ld_volatile(const int32_t* ptr) {
  int v;
  asm volatile("ld.global.b32 %0, [%1];\n" : "=r"(v) : "l"(ptr));
  return v;
}

// 32-bit shared store through a shared-window address (like the ldmatrix addresses).
__device__ __forceinline__ void st_shared_b32(uint32_t addr, uint32_t v) {
  asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(v));
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// 2^x via ex2.approx.ftz (what exp2f becomes under --use_fast_math, independent of the
// flag here); ex2.approx(-inf) = +0, which the masking relies on.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// The pointer itself, made opaque to the optimizer, which then cannot hoist pointers
// derived from it out of a loop (each hoisted 64-bit pointer costs two registers).
template <typename P>
__device__ __forceinline__ P* opaque_ptr(P* ptr) {
  asm("" : "+l"(ptr));
  return ptr;
}

// Per-element-type pieces: the mma instruction, float pair -> packed .b32, float -> T.
template <typename T>
struct TypeOps;

template <>
struct TypeOps<__nv_bfloat16> {
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  // lo -> low 16 bits (the lower column), hi -> high 16 bits.
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    uint32_t u;
    memcpy(&u, &v, sizeof(u));
    return u;
  }
  static __device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
};

template <>
struct TypeOps<__half> {
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    const __half2 v = __floats2half2_rn(lo, hi);
    uint32_t u;
    memcpy(&u, &v, sizeof(u));
    return u;
  }
  static __device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
};

template <>
struct TypeOps<float> {
  static __device__ __forceinline__ float to_float(float x) { return x; }
};

// ---------------------------------------------------------------------------------
// Tiles

// Smem row stride (elements) of a tile with kHD columns: 16 bytes of padding make the
// stride an odd multiple of 16 bytes modulo 128 (80 or 16 for every bucket used), so
// the 8 row addresses of one ldmatrix hit 8 distinct 16-byte bank groups.
template <int kHD>
constexpr int padded_stride() {
  static_assert(kHD % 16 == 0, "head-dim buckets are multiples of 16");
  return kHD + 8;
}

constexpr int next_pow2(int x) { return x <= 1 ? 1 : 2 * next_pow2((x + 1) / 2); }

// cp.async a kRows x kHD tile (row stride `row_stride` elements in global) into smem
// (row stride kStride). Rows >= valid_rows and columns >= head_dim are zero-filled, so
// nothing past a sequence end (or past head_dim inside a bucket) is ever read.
// Each thread copies one fixed 16-byte column chunk of rows r0, r0 + kRowStep, ... (rows
// are padded to a power-of-two number of chunks; the lanes of padding chunks idle), so
// the per-thread offsets are a couple of registers, not one per chunk. Offsets inside
// the tile are 32-bit (kRows * row_stride < 2^31 for any real shape).
template <typename T, int kRows, int kHD, int kStride, int kThreads>
__device__ __forceinline__ void load_tile_async(T* smem, const T* gbase, int row_stride, int valid_rows,
                                                int head_dim, int tid) {
  constexpr int kChunksPerRow = kHD / 8;
  constexpr int kSlotsPerRow = next_pow2(kChunksPerRow);
  static_assert(kThreads % kSlotsPerRow == 0, "");
  constexpr int kRowStep = kThreads / kSlotsPerRow;
  static_assert(kRows % kRowStep == 0, "");
  const int r0 = tid / kSlotsPerRow;
  const int col = (tid % kSlotsPerRow) * 8;
  if (kSlotsPerRow != kChunksPerRow && col >= kHD) return;
  const uint32_t dst = smem_u32(smem + r0 * kStride + col);
#pragma unroll
  for (int i = 0; i < kRows / kRowStep; ++i) {
    const int r = r0 + i * kRowStep;
    const bool ok = r < valid_rows && col < head_dim;
    cp_async_16(dst + i * kRowStep * kStride * static_cast<int>(sizeof(T)), gbase + (ok ? r * row_stride + col : 0),
                ok);
  }
}

// Copy `rows` x kCols of a row-major smem tile to global in 16-byte chunks, by the
// lanes of one warp; rows >= valid_rows and columns >= col_limit are skipped.
template <typename T, int kCols, int kStride>
__device__ __forceinline__ void store_rows_warp(T* gbase, int row_stride, const T* smem, int rows,
                                                int valid_rows, int col_limit, int lane) {
  constexpr int kChunksPerRow = kCols / 8;
  for (int c = lane; c < rows * kChunksPerRow; c += 32) {
    const int r = c / kChunksPerRow;
    const int col = (c % kChunksPerRow) * 8;
    if (r < valid_rows && col < col_limit) {
      *reinterpret_cast<uint4*>(gbase + r * row_stride + col) =
          *reinterpret_cast<const uint4*>(smem + r * kStride + col);
    }
  }
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}


}  // namespace attn
}  // namespace real_ext
