"""The causal-lm task: its stage modules (data, train, export, evaluate) and the edge script.

`NAME` is the task's name (the params' `task:`), `KIND` the kind of edge bundle its models make (the
bundle manifest's `task`; `edge_generate.KIND`, which stands alone, says the same).
"""

NAME = "causal-lm"
KIND = "causal-lm"
