"""The causal-lm task: its stage modules (data, train, export, evaluate) and the edge script."""
