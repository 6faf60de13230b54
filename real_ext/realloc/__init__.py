"""Parameter reallocation between layouts: Layout (who holds which box where),
plan (the C++ planner's transfer list), execute (C++ over c10d), offload/reload."""
from real_ext.realloc.execute import execute, offload, reload
from real_ext.realloc.layout import Layout, LayoutMismatchError, ShardInfo
from real_ext.realloc.plan import Plan, PlanError, Transfer, plan

__all__ = ["Layout", "LayoutMismatchError", "Plan", "PlanError", "ShardInfo", "Transfer", "execute", "offload",
           "plan", "reload"]
