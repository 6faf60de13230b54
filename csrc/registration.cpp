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
}
