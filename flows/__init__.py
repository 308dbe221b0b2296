"""miniaturize orchestration: the Prefect flow, the MLflow tracker and registry, and the CLI."""
