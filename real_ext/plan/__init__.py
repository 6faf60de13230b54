"""Execution-plan search: the cost model (hardware.py, cost.py, profile.py), the
simulator and the search over allocations of every MFC."""
