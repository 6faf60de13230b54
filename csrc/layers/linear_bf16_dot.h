// bfloat16 y = x W^T + b on CPUs with AVX512-BF16: vdpbf16ps multiplies 32
// bfloat16 pairs and adds them into 16 float32 lanes, twice the products per
// instruction of widening to float32 (linear_cpu.cpp's portable kernel) and
// without the widening. Serves a decode step's rows (M up to 24 as dot
// products, then in k-pair panels) where oneDNN's bfloat16 products cost
// 20-90 us on a small model, mostly per call.
#pragma once

#include <cstdint>

namespace real_ext {

// True when this CPU runs AVX512-BF16 and REAL_EXT_NO_BF16_DOT is unset (checked once).
bool has_bf16_dot();

// Outputs [n0, n1) of rows [0, M) (any M; blocks of 8 rows): x (M, K) with row
// stride ldx, W (N, K) with row stride ldw, bias (N,) or null, y (M, N) row
// stride ldy; all bfloat16 bits. Only call when has_bf16_dot().
void linear_bf16_dot(int64_t M, const uint16_t* x, int64_t ldx, int64_t K, const uint16_t* W, int64_t ldw,
                     const uint16_t* bias, uint16_t* y, int64_t ldy, int64_t n0, int64_t n1);

// The same product for many rows (a decode step of many sequences): outputs
// in panels of 32 whose weights are interleaved in k-pairs, every row applied
// to each panel (linear_bf16_gemm_cpu.cpp). K must be even.
void linear_bf16_gemm(int64_t M, const uint16_t* x, int64_t ldx, int64_t K, const uint16_t* W, int64_t ldw,
                      const uint16_t* bias, uint16_t* y, int64_t ldy, int64_t n0, int64_t n1);

}  // namespace real_ext
