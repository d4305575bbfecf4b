"""Search strategies: ask/tell objects rebuilt from a job's trial history."""

from nas.strategies.base import Strategy, TrialPlan

__all__ = ["Strategy", "TrialPlan"]
