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

  // Generation (csrc/generation). Paged KV cache: k_cache, v_cache are
  // (num_slots, heads_kv, head_dim), slot = block * block_size + offset in block.
  // kv_cache_append_: k_cache[slots[t]] = k[t], v_cache[slots[t]] = v[t];
  // k, v: (T, heads_kv, head_dim), slots: (T,) int64 (distinct). check_ids=False
  // (both ops): on CUDA, trust the ids instead of copying them to the host to
  // check them (the generation engine builds them); the CPU always checks.
  m.def(
      "kv_cache_append_(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor k, Tensor v, Tensor slots,"
      " bool check_ids=True) -> ()");
  // One new query per sequence over its cached keys (the new token's k/v already
  // appended): q (B, heads_q, head_dim); block_tables (B, max_blocks) int32, the
  // blocks of sequence b in order; seq_lens (B,) int32 >= 1, cached tokens of b.
  // out: (B, heads_q, head_dim). heads_q % heads_kv == 0.
  m.def(
      "decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, Tensor seq_lens,"
      " int block_size, float scale, bool check_ids=True) -> Tensor out");
  // Fused sampling from logits (B, V) (float32/bf16/fp16): tokens in `banned`
  // (n,) int64 get -inf in rows where suppress (B,) bool is set (stop tokens
  // before min_new_tokens); then softmax(logits / temperature); greedy: argmax;
  // else keep the tokens with logit >= the k-th largest (top_k > 0) and the
  // smallest set of most probable tokens with mass >= top_p (ties at either
  // boundary kept), and draw by inverse CDF in token order with uniform (B,) in
  // [0, 1). Returns tokens (B,) int64 and their log-probability (B,) float32
  // under the distribution drawn from (greedy: softmax(logits / temperature)).
  m.def(
      "sample_tokens(Tensor logits, Tensor uniform, Tensor suppress, Tensor banned, bool greedy,"
      " float temperature, int top_k, float top_p) -> (Tensor tokens, Tensor logprobs)");

  // Decoder-layer element-wise ops (csrc/layers), math in float32 (float64 for
  // float64 tensors); 2-D operands may be row-strided views (unit column stride).
  // RMSNorm in HF's order: out = weight * to_dtype(x * rstd), rstd = 1 / sqrt(mean(x^2) + eps).
  // x: (T, H); weight: (H,) in x's dtype; rstd: (T,) float32 (float64 for float64 x).
  m.def("rms_norm_fwd(Tensor x, Tensor weight, float eps) -> (Tensor out, Tensor rstd)");
  // dout like x; dx like x; dweight like weight (float32 sums over the rows, rounded once).
  m.def("rms_norm_bwd(Tensor dout, Tensor x, Tensor weight, Tensor rstd) -> (Tensor dx, Tensor dweight)");
  // Rotary embedding: out = x * cos + rotate_half(x) * sin with rotate_half(x) =
  // cat(-x[..., D/2:], x[..., :D/2]); transpose=True applies the transposed map
  // (the backward). x: (T, heads, D), D even; cos, sin: (T, D) in x's dtype; out like x.
  m.def("rope(Tensor x, Tensor cos, Tensor sin, bool transpose) -> Tensor");
  // SwiGLU: out = silu(gate) * up; gate, up, dout: (T, I); dgate, dup like gate.
  m.def("silu_mul_fwd(Tensor gate, Tensor up) -> Tensor");
  m.def("silu_mul_bwd(Tensor dout, Tensor gate, Tensor up) -> (Tensor dgate, Tensor dup)");
  // y = x weight^T + bias without autograd (decode steps): x (M, K), weight (N, K),
  // bias (N,) or None, one dtype; y (M, N). On the CPU the compiled kernels take
  // decode-sized M (csrc/layers/linear_cpu.cpp), larger float32 M goes to OpenBLAS
  // where it is loaded, else to MKL's packed weights inside a packed_weights scope
  // (csrc/layers/mkl_packed.cpp), the rest to ATen.
  m.def("linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  // The sgemm the CPU float32 products of many rows use (csrc/layers/cpu_blas.cpp):
  // load a library by path, its cblas symbols named with prefix ("" on success, else
  // the failure; an empty path: ATen's products); the loaded path ("" for ATen).
  m.def("use_cpu_blas(str path, str prefix) -> str");
  m.def("cpu_blas() -> str");
  // MKL's packed weights for the CPU float32 products past the compiled kernels'
  // sizes (csrc/layers/mkl_packed.cpp): enter (True) or leave (False) a scope in
  // which each weight is packed once; returns the weights packed in it so far.
  m.def("packed_weights_scope(bool enter) -> int");
  m.def("mkl_packing_available() -> bool");
}
