// Explicit instantiations of the packed-attention forward launcher for head-dim bucket(s) 96 128
// (split per bucket so that a parallel build compiles them side by side).
#include "attention/varlen_attn_fwd.cuh"

namespace real_ext {
namespace attn {

template cudaError_t launch_fwd_tc<__nv_bfloat16, 96>(const VarlenAttnFwdParams&, cudaStream_t);
template cudaError_t launch_fwd_tc<__half, 96>(const VarlenAttnFwdParams&, cudaStream_t);
template cudaError_t launch_fwd_tc<__nv_bfloat16, 128>(const VarlenAttnFwdParams&, cudaStream_t);
template cudaError_t launch_fwd_tc<__half, 128>(const VarlenAttnFwdParams&, cudaStream_t);

}  // namespace attn
}  // namespace real_ext
