#include "attention/varlen_attn_checks.h"

#include "common/check.h"

namespace real_ext {

VarlenAttnShape check_varlen_attn_args(const char* op, const at::Tensor& q, const at::Tensor& k,
                                       const at::Tensor& v, const at::Tensor& cu_seqlens_q,
                                       const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
                                       int64_t max_seqlen_k) {
  check_dim(op, "q", q, 3, "(total_q, heads_q, head_dim)");
  check_dim(op, "k", k, 3, "(total_k, heads_kv, head_dim)");
  check_dim(op, "v", v, 3, "(total_k, heads_kv, head_dim)");
  check_same_device(op, "k", k, "q", q);
  check_same_device(op, "v", v, "q", q);
  check_same_device(op, "cu_seqlens_q", cu_seqlens_q, "q", q);
  check_same_device(op, "cu_seqlens_k", cu_seqlens_k, "q", q);
  const auto dt = q.scalar_type();
  const bool cuda = q.is_cuda();
  REAL_EXT_CHECK_TYPE(dt == at::kFloat || dt == at::kBFloat16 || (cuda ? dt == at::kHalf : dt == at::kDouble), op,
                   ": q has dtype ", dt, "; supported: float32, bfloat16, ",
                   cuda ? "float16 (on CUDA)" : "float64 (on CPU; float16 on CUDA only)");
  REAL_EXT_CHECK_TYPE(k.scalar_type() == dt && v.scalar_type() == dt, op, ": q, k, v must share a dtype, got ",
                   dt, ", ", k.scalar_type(), ", ", v.scalar_type());
  REAL_EXT_CHECK_VALUE(k.sizes() == v.sizes(), op, ": k and v must have the same shape, got ", shape_str(k),
                    " and ", shape_str(v));
  const int64_t head_dim = q.size(2);
  REAL_EXT_CHECK_VALUE(k.size(2) == head_dim, op, ": head_dim of k (", k.size(2), ") differs from q (",
                    head_dim, ")");
  REAL_EXT_CHECK_VALUE(head_dim >= 1 && head_dim <= 256, op, ": head_dim must be in 1..256, got ", head_dim);
  REAL_EXT_CHECK_VALUE(!q.is_cuda() || head_dim % 8 == 0, op, ": on CUDA head_dim must be a multiple of 8, got ",
                    head_dim);
  REAL_EXT_CHECK_VALUE(q.size(1) >= 1 && k.size(1) >= 1 && q.size(1) % k.size(1) == 0, op,
                    ": heads_q (q.size(1) = ", q.size(1), ") must be a positive multiple of heads_kv (k.size(1) = ",
                    k.size(1), ")");
  REAL_EXT_CHECK_VALUE(cu_seqlens_q.dim() == 1 && cu_seqlens_k.dim() == 1 &&
                        cu_seqlens_q.size(0) == cu_seqlens_k.size(0),
                    op, ": cu_seqlens_q and cu_seqlens_k must both be (batch+1,), got ", shape_str(cu_seqlens_q),
                    " and ", shape_str(cu_seqlens_k));
  // The CUDA kernels put heads and sequences on grid axes y and z.
  REAL_EXT_CHECK_VALUE(!cuda || (cu_seqlens_q.size(0) - 1 <= 65535 && q.size(1) <= 65535), op,
                       ": on CUDA at most 65535 sequences and 65535 heads per call, got ", cu_seqlens_q.size(0) - 1,
                       " sequences and ", q.size(1), " heads; split the batch");
  VarlenAttnShape s;
  s.batch = cu_seqlens_q.size(0) - 1;
  s.total_q = q.size(0);
  s.total_k = k.size(0);
  s.heads_q = q.size(1);
  s.heads_kv = k.size(1);
  s.head_dim = head_dim;
  const int64_t longest_q = check_cu_seqlens(op, "cu_seqlens_q", cu_seqlens_q, s.total_q, "q.size(0)", &s.cu_q);
  const int64_t longest_k = check_cu_seqlens(op, "cu_seqlens_k", cu_seqlens_k, s.total_k, "k.size(0)", &s.cu_k);
  REAL_EXT_CHECK_VALUE(max_seqlen_q >= longest_q, op, ": max_seqlen_q = ", max_seqlen_q,
                    " is shorter than the longest query sequence (", longest_q, ")");
  REAL_EXT_CHECK_VALUE(max_seqlen_k >= longest_k, op, ": max_seqlen_k = ", max_seqlen_k,
                    " is shorter than the longest key sequence (", longest_k, ")");
  return s;
}

void check_varlen_attn_bwd_args(const char* op, const VarlenAttnShape& s, const at::Tensor& dout,
                                const at::Tensor& q, const at::Tensor& out, const at::Tensor& lse) {
  REAL_EXT_CHECK_VALUE(dout.sizes() == q.sizes() && out.sizes() == q.sizes(), op,
                    ": dout and out must have q's shape ", shape_str(q), ", got ", shape_str(dout), " and ",
                    shape_str(out));
  REAL_EXT_CHECK_TYPE(dout.scalar_type() == q.scalar_type() && out.scalar_type() == q.scalar_type(), op,
                   ": dout and out must have q's dtype ", q.scalar_type());
  REAL_EXT_CHECK_VALUE(lse.dim() == 2 && lse.size(0) == s.heads_q && lse.size(1) == s.total_q, op,
                    ": lse must be (heads_q, total_q) = (", s.heads_q, ", ", s.total_q, "), got ", shape_str(lse));
  REAL_EXT_CHECK_TYPE(lse.scalar_type() == at::kFloat, op, ": lse must be float32");
  check_same_device(op, "dout", dout, "q", q);
  check_same_device(op, "out", out, "q", q);
  check_same_device(op, "lse", lse, "q", q);
}

}  // namespace real_ext
