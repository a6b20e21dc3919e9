"""Runs: what a run directory holds (config files, metrics.jsonl and TensorBoard, checkpoint files, reports and plots)."""
