"""miniaturize components: the pipeline's stages and their helpers, pure of orchestration.

- `components.classification`: the sequence-classification task's stage modules (ingest, finetune,
  distill, prune, trim, export, quantize, evaluate), the search and bench commands, and `edge_predict.py`,
  the stand-alone script of its edge bundle.
- `components.causal_lm`: the causal-lm task's stage modules (data, train, export, evaluate) and
  `edge_generate.py`, the stand-alone script of its edge bundle.
- `components.multitask`: the multitask task's own stage modules (ingest, singles, evaluate); its training and
  compression stages are the classification modules, which read the data card's tasks.
- Each task package's `__init__` exports `NAME` (the params' `task:`) and `KIND` (its edge bundle's kind);
  code outside the package uses those, never the strings. flows/tasks/ holds each task's record.
- `components.kit`: what several stages or tasks use (training loop, losses, pruning selection,
  quantization, ONNX and latency helpers, file I/O, reports, the gate, tracking). The kit imports no task.
- `config.py` (the one validated config, every task's sections), `validate.py` (the validate stage every
  task runs), `bundle.py` and `serve.py` (edge bundles and serving of any task's models).

Each stage is a function that takes its config section, paths and a `Tracker` and returns a
`StageResult` (metrics and paths): `run(...)` in most modules, `causal_lm.train.train_teacher`,
`distill` and `prune`, `causal_lm.export.export` and `quantize`. Stage modules import only the kit,
`config` and third-party libraries, never each other; Prefect, MLflow and DVC live in `flows/`.
"""
