"""The sequence-classification task: its stage modules, the search and bench commands, and the edge script."""
