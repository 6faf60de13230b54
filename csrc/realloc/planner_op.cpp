// Torch glue of the planner: int64 tensors in (see registration.cpp), the
// transfer list and its statistics out. CPU only: plans are metadata.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <stdexcept>

#include "common/check.h"
#include "realloc/plan_tensors.h"
#include "realloc/planner.h"

namespace real_ext::realloc {
namespace {

std::vector<Box> read_params(const at::Tensor& params) {
  REAL_EXT_CHECK_VALUE(params.dim() == 2 && params.size(1) == 2 && params.scalar_type() == at::kLong,
                       "realloc: params must be int64 (P, 2) [rows, cols], got ", shape_str(params));
  const at::Tensor p = params.contiguous();
  const int64_t* d = p.data_ptr<int64_t>();
  std::vector<Box> out(p.size(0));
  for (int64_t i = 0; i < p.size(0); ++i) out[i] = {0, d[2 * i], 0, d[2 * i + 1]};
  return out;
}

std::vector<Shard> read_shards(const at::Tensor& shards, const char* name) {
  REAL_EXT_CHECK_VALUE(shards.dim() == 2 && shards.size(1) == 8 && shards.scalar_type() == at::kLong,
                       "realloc: ", name, " must be int64 (N, 8) [rank, param, r0, r1, c0, c1, offset, ld], got ",
                       shape_str(shards));
  const at::Tensor s = shards.contiguous();
  const int64_t* d = s.data_ptr<int64_t>();
  std::vector<Shard> out(s.size(0));
  for (int64_t i = 0; i < s.size(0); ++i) {
    const int64_t* r = d + 8 * i;
    out[i] = {r[0], r[1], {r[2], r[3], r[4], r[5]}, r[6], r[7]};
  }
  return out;
}

PlanInput read_input(const at::Tensor& params, const at::Tensor& src, const at::Tensor& dst) {
  PlanInput in;
  in.params = read_params(params);
  in.src = read_shards(src, "src_shards");
  in.dst = read_shards(dst, "dst_shards");
  return in;
}

}  // namespace

std::vector<Transfer> read_transfers(const at::Tensor& transfers) {
  REAL_EXT_CHECK_VALUE(transfers.dim() == 2 && transfers.size(1) == 11 && transfers.scalar_type() == at::kLong,
                       "realloc: transfers must be int64 (M, 11), got ", shape_str(transfers));
  const at::Tensor t = transfers.contiguous();
  const int64_t* d = t.data_ptr<int64_t>();
  std::vector<Transfer> out(t.size(0));
  for (int64_t i = 0; i < t.size(0); ++i) {
    const int64_t* r = d + 11 * i;
    out[i] = {r[0], r[1], r[2], {r[3], r[4], r[5], r[6]}, r[7], r[8], r[9], r[10]};
  }
  return out;
}

namespace {

std::tuple<at::Tensor, at::Tensor> realloc_plan_cpu(const at::Tensor& params, const at::Tensor& src,
                                                    const at::Tensor& dst, int64_t workers_per_node,
                                                    int64_t split_elements) {
  REAL_EXT_CHECK_VALUE(workers_per_node >= 1, "realloc: workers_per_node must be >= 1, got ", workers_per_node);
  PlanInput in = read_input(params, src, dst);
  in.workers_per_node = workers_per_node;
  in.split_elements = split_elements;
  PlanStats stats;
  std::vector<Transfer> plan;
  try {
    plan = make_plan(in, &stats);
  } catch (const std::invalid_argument& e) {
    REAL_EXT_CHECK_VALUE(false, "realloc: ", e.what());
  }
  at::Tensor out = at::empty({static_cast<int64_t>(plan.size()), 11}, at::kLong);
  int64_t* o = out.data_ptr<int64_t>();
  for (const Transfer& t : plan) {
    const int64_t row[11] = {t.src_rank, t.dst_rank, t.param, t.box.r0, t.box.r1, t.box.c0, t.box.c1,
                             t.src_offset, t.src_ld, t.dst_offset, t.dst_ld};
    std::copy(row, row + 11, o);
    o += 11;
  }
  at::Tensor st = at::tensor(std::vector<int64_t>{stats.elements_moved, stats.elements_lower_bound,
                                                  stats.elements_local}, at::kLong);
  return {out, st};
}

std::string realloc_verify_cpu(const at::Tensor& params, const at::Tensor& src, const at::Tensor& dst,
                               const at::Tensor& transfers) {
  return verify_plan(read_input(params, src, dst), read_transfers(transfers));
}

}  // namespace

TORCH_LIBRARY_IMPL(real_ext, CPU, m) {
  m.impl("realloc_plan", &realloc_plan_cpu);
  m.impl("realloc_verify", &realloc_verify_cpu);
}

}  // namespace real_ext::realloc
