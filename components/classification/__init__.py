"""The sequence-classification task: its stage modules, the search and bench commands, and the edge script.

`NAME` is the task's name (the params' `task:`, the default), `KIND` the kind of edge bundle its models make
(`edge_predict.KIND`, which stands alone, says the same).
"""

NAME = "sequence-classification"
KIND = "classification"
