// Whether the current CUDA stream is capturing a graph (CUDA glue only): then
// no host copy may run, so ops skip the checks that read device data.
#pragma once

#include <c10/cuda/CUDAGraphsC10Utils.h>

namespace real_ext {

inline bool cuda_capturing() {
  return c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
}

}  // namespace real_ext
