// y = x W^T (+ b) on the CPU as register blocks of 8-lane dot products
// (linear_dots_cpu.cpp): the products of linear_cpu.cpp on CPUs without
// AVX-512 (wide_vectors() false), float32 and bfloat16 weights alike.
#pragma once

#include <cstdint>

namespace real_ext {

// Outputs [n0, n1) of the M rows: xf (M, K) float32 contiguous; W rows of
// stride ldw; bias (optional) of W's type; y (M, N) row stride ldy.
void linear_dots(int64_t M, const float* xf, int64_t K, const float* W, int64_t ldw, const float* bias, float* y,
                 int64_t ldy, int64_t n0, int64_t n1);
void linear_dots(int64_t M, const float* xf, int64_t K, const uint16_t* W, int64_t ldw, const uint16_t* bias,
                 uint16_t* y, int64_t ldy, int64_t n0, int64_t n1);

}  // namespace real_ext
