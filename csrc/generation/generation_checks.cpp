#include "generation/generation_checks.h"

#include <ATen/ATen.h>

#include "common/check.h"

namespace real_ext {
namespace {

// The dtypes of the paged cache: float32 and bfloat16, float16 on CUDA too.
void check_cache_dtype(const char* op, const char* name, const at::Tensor& t) {
  const auto dt = t.scalar_type();
  REAL_EXT_CHECK_TYPE(dt == at::kFloat || dt == at::kBFloat16 || (t.is_cuda() && dt == at::kHalf), op, ": ", name,
                      " has dtype ", dt, "; supported: float32, bfloat16, float16 (",
                      t.is_cuda() ? "on CUDA)" : "on CUDA only)");
}

// k_cache and v_cache: (num_slots, heads_kv, head_dim), one dtype and device,
// contiguous (written in place or read by raw row offsets).
void check_caches(const char* op, const at::Tensor& k_cache, const at::Tensor& v_cache) {
  check_dim(op, "k_cache", k_cache, 3, "(num_slots, heads_kv, head_dim)");
  check_dim(op, "v_cache", v_cache, 3, "(num_slots, heads_kv, head_dim)");
  REAL_EXT_CHECK_VALUE(k_cache.sizes() == v_cache.sizes(), op, ": k_cache and v_cache must have the same shape, got ",
                       shape_str(k_cache), " and ", shape_str(v_cache));
  check_same_device(op, "v_cache", v_cache, "k_cache", k_cache);
  check_cache_dtype(op, "k_cache", k_cache);
  REAL_EXT_CHECK_TYPE(v_cache.scalar_type() == k_cache.scalar_type(), op, ": v_cache has dtype ",
                      v_cache.scalar_type(), " but k_cache has ", k_cache.scalar_type());
  REAL_EXT_CHECK_VALUE(k_cache.is_contiguous() && v_cache.is_contiguous(), op,
                       ": k_cache and v_cache must be contiguous (views of a contiguous block pool)");
  REAL_EXT_CHECK_VALUE(k_cache.size(1) >= 1 && k_cache.size(2) >= 1, op,
                       ": k_cache needs heads_kv >= 1 and head_dim >= 1, got shape ", shape_str(k_cache));
}

}  // namespace

KvCacheAppendShape check_kv_cache_append_args(const at::Tensor& k_cache, const at::Tensor& v_cache,
                                              const at::Tensor& k, const at::Tensor& v, const at::Tensor& slots,
                                              bool read_ids) {
  const char* op = "kv_cache_append_";
  check_caches(op, k_cache, v_cache);
  check_dim(op, "k", k, 3, "(tokens, heads_kv, head_dim)");
  check_dim(op, "v", v, 3, "(tokens, heads_kv, head_dim)");
  REAL_EXT_CHECK_VALUE(k.sizes() == v.sizes(), op, ": k and v must have the same shape, got ", shape_str(k),
                       " and ", shape_str(v));
  REAL_EXT_CHECK_VALUE(k.size(1) == k_cache.size(1) && k.size(2) == k_cache.size(2), op,
                       ": k rows (heads_kv, head_dim) = (", k.size(1), ", ", k.size(2),
                       ") must match the cache's (", k_cache.size(1), ", ", k_cache.size(2), ")");
  check_same_device(op, "k", k, "k_cache", k_cache);
  check_same_device(op, "v", v, "k_cache", k_cache);
  check_same_device(op, "slots", slots, "k_cache", k_cache);
  REAL_EXT_CHECK_TYPE(k.scalar_type() == k_cache.scalar_type() && v.scalar_type() == k_cache.scalar_type(), op,
                      ": k and v must have the cache's dtype ", k_cache.scalar_type(), ", got ", k.scalar_type(),
                      " and ", v.scalar_type());
  REAL_EXT_CHECK_TYPE(slots.scalar_type() == at::kLong, op, ": slots must be int64, got ", slots.scalar_type(),
                      " (use .to(torch.int64))");
  REAL_EXT_CHECK_VALUE(slots.dim() == 1 && slots.size(0) == k.size(0), op, ": slots must be 1-D (tokens,) = (",
                       k.size(0), ",), got shape ", shape_str(slots));
  KvCacheAppendShape s{k.size(0), k_cache.size(0), k_cache.size(1), k_cache.size(2)};
  if (!read_ids) return s;
  // One small device-to-host copy on CUDA: a bad slot would write out of bounds.
  const at::Tensor h = slots.to(at::kCPU).contiguous();
  const int64_t* p = h.data_ptr<int64_t>();
  for (int64_t t = 0; t < s.tokens; ++t)
    REAL_EXT_CHECK_VALUE(p[t] >= 0 && p[t] < s.num_slots, op, ": slots[", t, "] = ", p[t],
                         " is outside [0, num_slots = ", s.num_slots, ")");
  return s;
}

DecodeAttnShape check_decode_attention_args(const at::Tensor& q, const at::Tensor& k_cache,
                                            const at::Tensor& v_cache, const at::Tensor& block_tables,
                                            const at::Tensor& seq_lens, int64_t block_size, bool read_ids) {
  const char* op = "decode_attention";
  check_dim(op, "q", q, 3, "(batch, heads_q, head_dim)");
  check_caches(op, k_cache, v_cache);
  check_same_device(op, "k_cache", k_cache, "q", q);
  check_same_device(op, "block_tables", block_tables, "q", q);
  check_same_device(op, "seq_lens", seq_lens, "q", q);
  REAL_EXT_CHECK_TYPE(q.scalar_type() == k_cache.scalar_type(), op, ": q has dtype ", q.scalar_type(),
                      " but the cache has ", k_cache.scalar_type());
  DecodeAttnShape s;
  s.batch = q.size(0);
  s.heads_q = q.size(1);
  s.heads_kv = k_cache.size(1);
  s.head_dim = q.size(2);
  s.num_slots = k_cache.size(0);
  s.block_size = block_size;
  REAL_EXT_CHECK_VALUE(k_cache.size(2) == s.head_dim, op, ": head_dim of k_cache (", k_cache.size(2),
                       ") differs from q (", s.head_dim, ")");
  REAL_EXT_CHECK_VALUE(s.head_dim <= 256, op, ": head_dim must be in 1..256, got ", s.head_dim);
  REAL_EXT_CHECK_VALUE(s.heads_q >= 1 && s.heads_q % s.heads_kv == 0, op, ": heads_q (q.size(1) = ", s.heads_q,
                       ") must be a positive multiple of heads_kv (k_cache.size(1) = ", s.heads_kv, ")");
  if (q.is_cuda()) {
    REAL_EXT_CHECK_VALUE(s.head_dim % 8 == 0, op, ": on CUDA head_dim must be a multiple of 8, got ", s.head_dim);
    const auto addr = [](const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()); };
    REAL_EXT_CHECK_VALUE(addr(k_cache) % 16 == 0 && addr(v_cache) % 16 == 0, op,
                         ": on CUDA k_cache and v_cache must start at 16-byte aligned addresses");
  }
  REAL_EXT_CHECK_VALUE(block_size >= 1, op, ": block_size must be >= 1, got ", block_size);
  REAL_EXT_CHECK_VALUE(s.num_slots % block_size == 0, op, ": num_slots (k_cache.size(0) = ", s.num_slots,
                       ") must be a multiple of block_size = ", block_size);
  REAL_EXT_CHECK_TYPE(block_tables.scalar_type() == at::kInt, op, ": block_tables must be int32, got ",
                      block_tables.scalar_type(), " (use .to(torch.int32))");
  REAL_EXT_CHECK_TYPE(seq_lens.scalar_type() == at::kInt, op, ": seq_lens must be int32, got ",
                      seq_lens.scalar_type(), " (use .to(torch.int32))");
  REAL_EXT_CHECK_VALUE(block_tables.dim() == 2 && block_tables.size(0) == s.batch, op,
                       ": block_tables must be 2-D (batch, max_blocks) with batch = q.size(0) = ", s.batch,
                       ", got shape ", shape_str(block_tables));
  REAL_EXT_CHECK_VALUE(seq_lens.dim() == 1 && seq_lens.size(0) == s.batch, op,
                       ": seq_lens must be 1-D (batch,) with batch = q.size(0) = ", s.batch, ", got shape ",
                       shape_str(seq_lens));
  s.max_blocks = block_tables.size(1);
  if (!read_ids) {
    s.max_seq_len = s.batch > 0 ? s.max_blocks * block_size : 0;
    return s;
  }
  // One small device-to-host copy of each on CUDA: a bad length or block id
  // would read out of bounds.
  const at::Tensor lens_h = seq_lens.to(at::kCPU).contiguous();
  const at::Tensor tables_h = block_tables.to(at::kCPU).contiguous();
  const int32_t* lens = lens_h.data_ptr<int32_t>();
  const int32_t* tables = tables_h.data_ptr<int32_t>();
  const int64_t num_blocks = s.num_slots / block_size;
  const int64_t capacity = s.max_blocks * block_size;
  s.max_seq_len = 0;
  for (int64_t b = 0; b < s.batch; ++b) {
    REAL_EXT_CHECK_VALUE(lens[b] >= 1 && lens[b] <= capacity, op, ": seq_lens[", b, "] = ", lens[b],
                         " is outside [1, max_blocks * block_size = ", capacity, "]");
    s.max_seq_len = std::max<int64_t>(s.max_seq_len, lens[b]);
    const int64_t used = (lens[b] + block_size - 1) / block_size;
    for (int64_t i = 0; i < used; ++i) {
      const int32_t id = tables[b * s.max_blocks + i];
      REAL_EXT_CHECK_VALUE(id >= 0 && id < num_blocks, op, ": block_tables[", b, ", ", i, "] = ", id,
                           " is outside [0, num_blocks = ", num_blocks, ") (sequence ", b, " uses ", used,
                           " blocks)");
    }
  }
  return s;
}

}  // namespace real_ext
