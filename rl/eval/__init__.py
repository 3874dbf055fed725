"""Evaluation: HF and vLLM generation, and scoring with the task's official metric."""
