// Pack / unpack of strided boxes on the CPU: the (box, row) pairs of all boxes
// are one index space split across threads, each row a memcpy (or an EMA blend).
// Unpack writes the destination's flat buffer, which nothing reads soon: its
// rows go out with non-temporal stores, which skip reading each destination
// line into the cache first (a third of a copy's memory traffic).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "common/check.h"
#include "realloc/pack_checks.h"

namespace real_ext::realloc {
namespace {

// Rows shorter than this are plain memcpy: non-temporal stores of a few
// lines flush partly filled write-combining buffers.
constexpr int64_t kStreamMinBytes = 512;

// memcpy of n bytes, with non-temporal stores where it pays (x86-64; SSE2 is
// its baseline). The thread that stored fences (stream_fence) before the data
// is used: non-temporal stores are weakly ordered.
void copy_streaming(char* dst, const char* src, int64_t n) {
#if defined(__x86_64__)
  if (n >= kStreamMinBytes) {
    const int64_t head = static_cast<int64_t>(-reinterpret_cast<uintptr_t>(dst) & 15);  // to 16-byte alignment
    std::memcpy(dst, src, head);
    int64_t i = head;
    for (; i + 64 <= n; i += 64)
      for (int j = 0; j < 64; j += 16)
        _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + j),
                         _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + j)));
    for (; i + 16 <= n; i += 16)
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
    std::memcpy(dst + i, src + i, n - i);
    return;
  }
#endif
  std::memcpy(dst, src, n);
}

void stream_fence() {
#if defined(__x86_64__)
  _mm_sfence();
#endif
}

// fn(box, row, first column, columns) over every row of every box, in
// parallel; rows longer than kSegment elements are cut so one long row (a 1-D
// parameter) still spreads over the threads.
constexpr int64_t kSegment = 1 << 15;

template <typename Fn>
void for_each_segment(const std::vector<PackBox>& boxes, const Fn& fn, bool fence = false) {
  std::vector<int64_t> first(boxes.size() + 1, 0), segs(boxes.size());
  for (size_t i = 0; i < boxes.size(); ++i) {
    segs[i] = boxes[i].cols > 0 ? (boxes[i].cols + kSegment - 1) / kSegment : 0;
    first[i + 1] = first[i] + boxes[i].rows * segs[i];
  }
  at::parallel_for(0, first.back(), 4, [&](int64_t begin, int64_t end) {
    size_t b = std::upper_bound(first.begin(), first.end(), begin) - first.begin() - 1;
    for (int64_t i = begin; i < end; ++i) {
      while (i >= first[b + 1]) ++b;
      const int64_t k = i - first[b], row = k / segs[b], c0 = (k % segs[b]) * kSegment;
      fn(boxes[b], row, c0, std::min(kSegment, boxes[b].cols - c0));
    }
    if (fence) stream_fence();  // each thread its own stores
  });
}

void realloc_pack_into_cpu(const at::Tensor& flat, const at::Tensor& boxes, at::Tensor& buffer) {
  check_flat("realloc_pack_into", "flat", flat);
  check_flat("realloc_pack_into", "buffer", buffer);
  REAL_EXT_CHECK_TYPE(buffer.scalar_type() == flat.scalar_type(), "realloc_pack_into: buffer dtype ",
                      buffer.scalar_type(), " differs from flat dtype ", flat.scalar_type());
  const std::vector<PackBox> bx = read_pack_boxes("realloc_pack_into", boxes, flat.numel(), buffer.numel());
  const int64_t es = flat.element_size();
  const char* src = static_cast<const char*>(flat.data_ptr());
  char* dst = static_cast<char*>(buffer.data_ptr());
  for_each_segment(bx, [&](const PackBox& b, int64_t r, int64_t c0, int64_t n) {
    std::memcpy(dst + (b.buf_offset + r * b.cols + c0) * es, src + (b.offset + r * b.ld + c0) * es, n * es);
  });
}

void realloc_unpack_cpu(at::Tensor& flat, const at::Tensor& buffer, const at::Tensor& boxes, double eta) {
  check_flat("realloc_unpack_", "flat", flat);
  check_flat("realloc_unpack_", "buffer", buffer);
  REAL_EXT_CHECK_TYPE(buffer.scalar_type() == flat.scalar_type(), "realloc_unpack_: buffer dtype ",
                      buffer.scalar_type(), " differs from flat dtype ", flat.scalar_type());
  REAL_EXT_CHECK_VALUE(eta >= 0.0 && eta <= 1.0, "realloc_unpack_: eta must be in [0, 1], got ", eta);
  const std::vector<PackBox> bx = read_pack_boxes("realloc_unpack_", boxes, flat.numel(), buffer.numel());
  if (eta == 1.0) {
    const int64_t es = flat.element_size();
    const char* src = static_cast<const char*>(buffer.data_ptr());
    char* dst = static_cast<char*>(flat.data_ptr());
    for_each_segment(bx, [&](const PackBox& b, int64_t r, int64_t c0, int64_t n) {
      copy_streaming(dst + (b.offset + r * b.ld + c0) * es, src + (b.buf_offset + r * b.cols + c0) * es, n * es);
    }, /*fence=*/true);
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, flat.scalar_type(), "realloc_unpack_ema", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* src = buffer.data_ptr<scalar_t>();
    scalar_t* dst = flat.data_ptr<scalar_t>();
    const acc_t e = static_cast<acc_t>(eta);
    for_each_segment(bx, [&](const PackBox& b, int64_t r, int64_t c0, int64_t n) {
      scalar_t* d = dst + b.offset + r * b.ld + c0;
      const scalar_t* s = src + b.buf_offset + r * b.cols + c0;
      for (int64_t c = 0; c < n; ++c)
        d[c] = static_cast<scalar_t>(e * static_cast<acc_t>(s[c]) + (acc_t(1) - e) * static_cast<acc_t>(d[c]));
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(real_ext, CPU, m) {
  m.impl("realloc_pack_into", &realloc_pack_into_cpu);
  m.impl("realloc_unpack_", &realloc_unpack_cpu);
}

}  // namespace real_ext::realloc
