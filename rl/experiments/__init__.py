"""Experiments: plans and cells, their reports and honest-report flags, the demo, the reward probe."""
