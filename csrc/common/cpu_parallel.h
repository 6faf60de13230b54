// Dynamic work distribution over the ATen (OpenMP) thread pool.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace real_ext {

// Runs work items 0..n-1 in the order given, each thread taking the next free
// one; callers put the costly items first (longest-first greedy balancing).
template <typename Fn>
inline void run_items_dynamic(int64_t n, const Fn& fn) {
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), std::max<int64_t>(n, 1));
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t i = next++; i < n; i = next++) fn(i);
  });
}

}  // namespace real_ext
