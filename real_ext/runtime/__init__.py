"""The ReaL runtime: a master driving a dataflow graph of model function calls
(MFCs) over model workers, each MFC on its own mesh and (dp, tp, pp) layout,
with parameter reallocation and worker-to-worker data transfer between them."""
from real_ext.runtime.launcher import LocalLauncher, WorkerFailure
from real_ext.runtime.master import Master
from real_ext.runtime.spec import Allocation, AllocationError, MFCSpec, ModelSpec
from real_ext.runtime.trace import Trace

__all__ = ["Allocation", "AllocationError", "LocalLauncher", "MFCSpec", "Master", "ModelSpec", "Trace",
           "WorkerFailure"]
