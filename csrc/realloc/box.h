// Boxes: a row range x a column range of a 2-D parameter index space (1-D
// parameters are one column wide). A shard is a box plus where it lives in a
// worker's flat buffer. Plain C++ (no torch), shared by the planner and its tests.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace real_ext::realloc {

struct Box {
  int64_t r0 = 0, r1 = 0, c0 = 0, c1 = 0;  // [r0, r1) x [c0, c1)

  int64_t rows() const { return r1 - r0; }
  int64_t cols() const { return c1 - c0; }
  int64_t area() const { return empty() ? 0 : rows() * cols(); }
  bool empty() const { return r1 <= r0 || c1 <= c0; }
  bool operator==(const Box& o) const { return r0 == o.r0 && r1 == o.r1 && c0 == o.c0 && c1 == o.c1; }
  bool operator<(const Box& o) const {
    return r0 != o.r0 ? r0 < o.r0 : c0 != o.c0 ? c0 < o.c0 : r1 != o.r1 ? r1 < o.r1 : c1 < o.c1;
  }
};

inline Box intersect(const Box& a, const Box& b) {
  return {std::max(a.r0, b.r0), std::min(a.r1, b.r1), std::max(a.c0, b.c0), std::min(a.c1, b.c1)};
}

// a minus b as up to four disjoint boxes (rows above, rows below, then the
// left and right parts of the middle band).
inline std::vector<Box> subtract(const Box& a, const Box& b) {
  const Box i = intersect(a, b);
  if (i.empty()) return {a};
  std::vector<Box> out;
  if (a.r0 < i.r0) out.push_back({a.r0, i.r0, a.c0, a.c1});
  if (i.r1 < a.r1) out.push_back({i.r1, a.r1, a.c0, a.c1});
  if (a.c0 < i.c0) out.push_back({i.r0, i.r1, a.c0, i.c0});
  if (i.c1 < a.c1) out.push_back({i.r0, i.r1, i.c1, a.c1});
  return out;
}

// One worker's slice of one parameter: `box` of the full parameter, stored
// row-major from `offset` in its flat buffer with row stride `ld` (element
// (r, c) of the parameter sits at offset + (r - box.r0) * ld + (c - box.c0)).
struct Shard {
  int64_t rank = 0, param = 0;
  Box box;
  int64_t offset = 0, ld = 1;

  int64_t at(int64_t r, int64_t c) const { return offset + (r - box.r0) * ld + (c - box.c0); }
};

}  // namespace real_ext::realloc
