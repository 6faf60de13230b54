"""Device meshes, (dp, tp, pp) layouts, process groups and collectives."""
from real_ext.parallel.context import ParallelContext
from real_ext.parallel.layout import LayoutError, ParallelLayout

__all__ = ["LayoutError", "ParallelContext", "ParallelLayout"]
