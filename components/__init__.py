"""miniaturize components: one module per pipeline stage, pure of orchestration.

Each stage module exposes `run(cfg, inputs, out_dir, tracker) -> StageResult`. Components take paths
and a tracker, and return metrics and paths; Prefect, MLflow and DVC live in `flows/`.
"""
