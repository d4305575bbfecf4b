"""Search strategies: ask/tell objects rebuilt from a job's trial history."""

from nas.strategies.base import WAIT, Strategy, TrialPlan

__all__ = ["WAIT", "Strategy", "TrialPlan"]
