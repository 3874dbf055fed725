"""Experiments: plans and cells, their reports and warnings, the demo, the reward probe."""
