"""The GRPO stage: the run, the trainer and its TRL seam, sampling, checkpoints, stops, monitor, SFT, data."""
