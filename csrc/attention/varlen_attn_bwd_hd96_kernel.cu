// Explicit instantiations of the packed-attention backward launcher for head-dim bucket(s) 96
// (split per bucket so that a parallel build compiles them side by side).
#include "attention/varlen_attn_bwd.cuh"

namespace real_ext {
namespace attn {

template cudaError_t launch_bwd_tc<__nv_bfloat16, 96>(const VarlenAttnBwdParams&, const BwdWorkspace&, cudaStream_t);
template cudaError_t launch_bwd_tc<__half, 96>(const VarlenAttnBwdParams&, const BwdWorkspace&, cudaStream_t);

}  // namespace attn
}  // namespace real_ext
