"""Execution: the dispatcher that claims jobs and the Ray Tune runner that executes them."""
