#include "realloc/pack_checks.h"

#include "common/check.h"

namespace real_ext::realloc {

void check_flat(const char* op, const char* name, const at::Tensor& t) {
  REAL_EXT_CHECK_VALUE(t.dim() == 1 && t.is_contiguous(), op, ": ", name,
                       " must be a 1-D contiguous (flat) buffer, got shape ", shape_str(t));
}

std::vector<PackBox> read_pack_boxes(const char* op, const at::Tensor& boxes, int64_t flat_numel,
                                     int64_t buf_numel) {
  REAL_EXT_CHECK_VALUE(boxes.dim() == 2 && boxes.size(1) == 5 && boxes.scalar_type() == at::kLong &&
                           boxes.device().is_cpu(),
                       op, ": boxes must be an int64 CPU tensor (n, 5) [offset, ld, rows, cols, buffer_offset], got ",
                       shape_str(boxes));
  const at::Tensor b = boxes.contiguous();
  const int64_t* d = b.data_ptr<int64_t>();
  std::vector<PackBox> out(b.size(0));
  for (int64_t i = 0; i < b.size(0); ++i) {
    const PackBox box{d[5 * i], d[5 * i + 1], d[5 * i + 2], d[5 * i + 3], d[5 * i + 4]};
    REAL_EXT_CHECK_VALUE(box.rows >= 0 && box.cols >= 0 && box.offset >= 0 && box.buf_offset >= 0 &&
                             (box.rows <= 1 || box.ld >= box.cols),
                         op, ": box ", i, " is malformed (offset ", box.offset, ", ld ", box.ld, ", rows ", box.rows,
                         ", cols ", box.cols, ")");
    if (box.rows > 0 && box.cols > 0) {
      REAL_EXT_CHECK_VALUE(box.offset + (box.rows - 1) * box.ld + box.cols <= flat_numel, op, ": box ", i,
                           " reaches past the flat buffer (", flat_numel, " elements)");
      REAL_EXT_CHECK_VALUE(box.buf_offset + box.rows * box.cols <= buf_numel, op, ": box ", i,
                           " reaches past the staging buffer (", buf_numel, " elements)");
    }
    out[i] = box;
  }
  return out;
}

}  // namespace real_ext::realloc
