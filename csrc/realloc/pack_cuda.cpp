// Torch glue of the CUDA pack/unpack kernels (built only with a CUDA torch).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>

#include "common/check.h"
#include "realloc/pack_checks.h"
#include "realloc/pack_launch.h"

namespace real_ext::realloc {
namespace {

// The validated box list as the kernels take it: inline in the launch's
// parameters when short, else staged in pinned host memory (torch's caching
// host allocator keeps it until the copy is done) and copied to `device`
// without blocking the host; `keep` holds that copy until the launch is queued
// (stream order keeps it valid for the kernel).
PackBoxList box_list(const std::vector<PackBox>& boxes, const at::Device& device, at::Tensor& keep) {
  PackBoxList list;
  list.n = static_cast<int64_t>(boxes.size());
  if (list.n <= kInlinePackBoxes) {
    std::copy(boxes.begin(), boxes.end(), list.inline_boxes);
    return list;
  }
  at::Tensor host = at::empty({static_cast<int64_t>(boxes.size() * sizeof(PackBox))},
                              at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(host.data_ptr(), boxes.data(), boxes.size() * sizeof(PackBox));
  keep = host.to(device, /*non_blocking=*/true);
  list.device = reinterpret_cast<const PackBox*>(keep.data_ptr());
  return list;
}

int64_t max_units(const std::vector<PackBox>& boxes, int64_t elem_bytes) {
  int64_t m = 0;
  for (const PackBox& b : boxes) m = std::max(m, pack_units(b, elem_bytes));
  return m;
}

int64_t max_segments(const std::vector<PackBox>& boxes) {
  int64_t m = 0;
  for (const PackBox& b : boxes) m = std::max(m, pack_segments(b));
  return m;
}

void check_launch(const char* op, cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel failed: ", cudaGetErrorString(err));
}

void realloc_pack_into_cuda(const at::Tensor& flat, const at::Tensor& boxes, at::Tensor& buffer) {
  check_flat("realloc_pack_into", "flat", flat);
  check_flat("realloc_pack_into", "buffer", buffer);
  REAL_EXT_CHECK_TYPE(buffer.scalar_type() == flat.scalar_type(), "realloc_pack_into: buffer dtype ",
                      buffer.scalar_type(), " differs from flat dtype ", flat.scalar_type());
  REAL_EXT_CHECK_VALUE(buffer.device() == flat.device(), "realloc_pack_into: buffer is on ", buffer.device(),
                       " but flat is on ", flat.device());
  const std::vector<PackBox> bx = read_pack_boxes("realloc_pack_into", boxes, flat.numel(), buffer.numel());
  const c10::cuda::CUDAGuard guard(flat.device());
  at::Tensor keep;
  const PackBoxList list = box_list(bx, flat.device(), keep);
  check_launch("realloc_pack_into",
               realloc_copy_boxes_cuda(const_cast<void*>(flat.data_ptr()), buffer.data_ptr(), list, flat.element_size(),
                                       max_units(bx, flat.element_size()), false,
                                       at::cuda::getCurrentCUDAStream()));
}

PackDType pack_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return PackDType::kFloat32;
    case at::kDouble: return PackDType::kFloat64;
    case at::kBFloat16: return PackDType::kBFloat16;
    case at::kHalf: return PackDType::kFloat16;
    default: REAL_EXT_CHECK_TYPE(false, "realloc_unpack_: EMA needs a floating dtype, got ", t);
  }
  return PackDType::kFloat32;
}

void realloc_unpack_cuda(at::Tensor& flat, const at::Tensor& buffer, const at::Tensor& boxes, double eta) {
  check_flat("realloc_unpack_", "flat", flat);
  check_flat("realloc_unpack_", "buffer", buffer);
  REAL_EXT_CHECK_TYPE(buffer.scalar_type() == flat.scalar_type(), "realloc_unpack_: buffer dtype ",
                      buffer.scalar_type(), " differs from flat dtype ", flat.scalar_type());
  REAL_EXT_CHECK_VALUE(buffer.device() == flat.device(), "realloc_unpack_: buffer is on ", buffer.device(),
                       " but flat is on ", flat.device());
  REAL_EXT_CHECK_VALUE(eta >= 0.0 && eta <= 1.0, "realloc_unpack_: eta must be in [0, 1], got ", eta);
  const std::vector<PackBox> bx = read_pack_boxes("realloc_unpack_", boxes, flat.numel(), buffer.numel());
  const c10::cuda::CUDAGuard guard(flat.device());
  at::Tensor keep;
  const PackBoxList list = box_list(bx, flat.device(), keep);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (eta == 1.0) {
    check_launch("realloc_unpack_", realloc_copy_boxes_cuda(flat.data_ptr(), const_cast<void*>(buffer.data_ptr()),
                                                            list, flat.element_size(),
                                                            max_units(bx, flat.element_size()), true, stream));
  } else {
    check_launch("realloc_unpack_", realloc_unpack_ema_cuda(flat.data_ptr(), buffer.data_ptr(), list,
                                                            pack_dtype(flat.scalar_type()), max_segments(bx),
                                                            eta, stream));
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(real_ext, CUDA, m) {
  m.impl("realloc_pack_into", &realloc_pack_into_cuda);
  m.impl("realloc_unpack_", &realloc_unpack_cuda);
}

}  // namespace real_ext::realloc
