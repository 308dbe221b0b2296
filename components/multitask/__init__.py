"""The multitask task: one shared student answering several classification tasks about a sentence (its
heads: `components.kit.heads`).

`NAME` is the task's name (the params' `task:`), `KIND` the kind of edge bundle its models make.
"""

NAME = "multitask"
KIND = "multitask"
