// The redistribution planner: given every worker's shards of one model under a
// source and a destination layout, decide who sends which box to whom.
// Pure and deterministic (plain C++, no process group): every rank computes the
// same plan. Guarantees (checked by verify()):
//   - every destination element is written exactly once;
//   - a piece the destination worker already holds is copied locally, never sent;
//   - bytes sent equal the lower bound (what destinations need and do not hold);
//   - among the source replicas of a piece, same-node sources are preferred and
//     the least-loaded is chosen (large pieces are split across replicas).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "realloc/box.h"

namespace real_ext::realloc {

struct Transfer {
  int64_t src_rank, dst_rank, param;
  Box box;                 // in the parameter's index space
  int64_t src_offset, src_ld;  // flat offset of (box.r0, box.c0) in the source buffer, row stride
  int64_t dst_offset, dst_ld;  // same in the destination buffer

  bool local() const { return src_rank == dst_rank; }
};

struct PlanStats {
  int64_t elements_moved = 0;        // sent between different workers
  int64_t elements_lower_bound = 0;  // needed by destinations and not held by them
  int64_t elements_local = 0;        // copied within a worker
};

struct PlanInput {
  std::vector<Box> params;           // full extent of every parameter
  std::vector<Shard> src, dst;       // every worker's shards under each layout
  int64_t workers_per_node = 8;
  // Pieces larger than this many elements are split across the source replicas
  // that hold them, to spread the sending load.
  int64_t split_elements = 1 << 16;
};

// Throws std::invalid_argument when the layouts cannot describe one model
// (shards outside their parameter, a destination element no source holds).
std::vector<Transfer> make_plan(const PlanInput& in, PlanStats* stats);

// Empty string when every destination element is written exactly once by a
// transfer whose source holds it; else what is wrong.
std::string verify_plan(const PlanInput& in, const std::vector<Transfer>& plan);

}  // namespace real_ext::realloc
