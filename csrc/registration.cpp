// Every real_ext op schema, in one place. Implementations register per backend
// in their capability folders (TORCH_LIBRARY_IMPL(real_ext, CPU|CUDA, m));
// fake (meta) and autograd rules live in real_ext/ops/<capability>.py.
#include <torch/library.h>

TORCH_LIBRARY(real_ext, m) {
  // Packed (varlen) attention.
  // q: (total_q, heads_q, head_dim); k, v: (total_k, heads_kv, head_dim); heads_q % heads_kv == 0
  // cu_seqlens_q, cu_seqlens_k: (batch+1,) int32, non-decreasing, from 0 to total_q / total_k
  // out: like q; lse: (heads_q, total_q) float32, log-sum-exp of the scaled scores per query row
  m.def(
      "varlen_attn_fwd(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, Tensor cu_seqlens_k,"
      " int max_seqlen_q, int max_seqlen_k, float scale, bool causal) -> (Tensor out, Tensor lse)");
  // dout: like out; returns dq like q, dk like k, dv like v
  m.def(
      "varlen_attn_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse,"
      " Tensor cu_seqlens_q, Tensor cu_seqlens_k, int max_seqlen_q, int max_seqlen_k, float scale,"
      " bool causal) -> (Tensor dq, Tensor dk, Tensor dv)");

  // Generalized advantage estimation over a packed batch.
  // rewards: (T,) float; values: (T + B,) same dtype, sequence i owning
  //   values[cu_seqlens[i] + i : cu_seqlens[i+1] + i + 1] (last = value after the final token)
  // cu_seqlens: (B+1,) int32; bootstrap: (B,) bool (False: that final value counts as 0)
  // advantages, returns: (T,)
  m.def(
      "gae(Tensor rewards, Tensor values, Tensor cu_seqlens, Tensor bootstrap, float gamma,"
      " float lam) -> (Tensor advantages, Tensor returns)");

  // Parameter reallocation (csrc/realloc). Shards: (N, 8) int64 rows of
  // [rank, param, r0, r1, c0, c1, offset, ld]: `param`'s box [r0,r1)x[c0,c1) sits
  // row-major at `offset` (row stride `ld`) in `rank`'s flat buffer. params: (P, 2)
  // int64 [rows, cols]. transfers: (M, 11) int64 rows of [src_rank, dst_rank, param,
  // r0, r1, c0, c1, src_offset, src_ld, dst_offset, dst_ld]; stats: (3,) int64
  // [elements moved, elements lower bound, elements copied locally].
  m.def(
      "realloc_plan(Tensor params, Tensor src_shards, Tensor dst_shards, int workers_per_node,"
      " int split_elements) -> (Tensor transfers, Tensor stats)");
  // "" when every destination element is written exactly once, else the first problem.
  m.def("realloc_verify(Tensor params, Tensor src_shards, Tensor dst_shards, Tensor transfers) -> str");
  // boxes: (n, 5) int64 CPU [offset, ld, rows, cols, buffer_offset] (elements).
  // pack_into gathers the boxes of `flat` into the contiguous `buffer` (reused
  // staging memory); unpack_ scatters `buffer` back:
  // flat = eta * buffer + (1 - eta) * flat (eta = 1: a copy).
  m.def("realloc_pack_into(Tensor flat, Tensor boxes, Tensor(a!) buffer) -> ()");
  m.def("realloc_unpack_(Tensor(a!) flat, Tensor buffer, Tensor boxes, float eta) -> ()");
  // Runs a plan on every rank of the process group registered as `group_name`
  // (ProcessGroup.group_name in Python; its ranks are the ranks the plan names):
  // contiguous pieces sent straight, local copies, then staged pieces in paired
  // send/recv steps with at most max_buffer_bytes of
  // staging memory; src/dst are None on ranks outside the source/destination mesh.
  // Returns the staging bytes it allocated (<= max_buffer_bytes).
  m.def(
      "realloc_execute(Tensor transfers, Tensor? src_flat, Tensor(a!)? dst_flat,"
      " str group_name, int max_buffer_bytes, float eta) -> int");
}
