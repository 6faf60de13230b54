// y = x W^T (+ b) on the CPU as 6 weight rows x 16 rows of x register blocks
// (linear_panels_cpu.cpp): the products of linear_cpu.cpp on CPUs without
// AVX-512 (wide_vectors() false), float32 and bfloat16 weights alike.
#pragma once

#include <cstdint>

namespace real_ext {

// Rows of x per panel; a panel holds them k-major (K x 16 floats), the last
// one K x 8 when 8 or fewer rows are left, padded with zeros.
constexpr int64_t kPanelRows = 16;

// Floats the panels of M rows take.
inline int64_t panels_size(int64_t M, int64_t K) { return ((M + 7) / 8) * 8 * K; }

// Panels [p0, p1) of x (M, K), row stride ldx, into `panels` (panels_size).
void pack_x_panels(int64_t M, const float* x, int64_t ldx, int64_t K, float* panels, int64_t p0, int64_t p1);
void pack_x_panels(int64_t M, const uint16_t* x, int64_t ldx, int64_t K, float* panels, int64_t p0, int64_t p1);

// Weight rows per work item of linear_panels (after one long run per thread):
// a multiple of its 6-row blocks and of the 48 rows whose outputs it gathers
// before writing them.
constexpr int64_t kPanelItemRows = 48;

// Outputs [n0, n1) of the M rows packed in `panels`: W (N rows of stride
// ldw; rows past n1 are prefetched too, for the next work item), or with
// k_major W stored transposed (K rows of stride ldw: weight (n, k) at
// W[k * ldw + n], a row-parallel weight of the flat buffer); bias (optional)
// of W's type; y (M, N) row stride ldy.
void linear_panels(int64_t M, const float* panels, int64_t K, const float* W, int64_t N, int64_t ldw, bool k_major,
                   const float* bias, float* y, int64_t ldy, int64_t n0, int64_t n1);
void linear_panels(int64_t M, const float* panels, int64_t K, const uint16_t* W, int64_t N, int64_t ldw, bool k_major,
                   const uint16_t* bias, uint16_t* y, int64_t ldy, int64_t n0, int64_t n1);

}  // namespace real_ext
