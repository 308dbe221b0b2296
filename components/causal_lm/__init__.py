"""The causal-lm task: its stage modules (data, train, export, evaluate) and the edge script.

`NAME` is the task's name (the params' `task:`), `KIND` the kind of edge bundle its models make (the
bundle manifest's `task`; `edge_generate.KIND`, which stands alone, says the same). The two record files
are written by the training stages beside their models and read by the evaluate stage's report.
"""

NAME = "causal-lm"
KIND = "causal-lm"
HISTORY_FILE = "training_history.json"  # in the teacher's folder: its validation curve
SEEDS_FILE = "seeds.json"  # in the ablation's folder: distillation against the ablation over several seeds
