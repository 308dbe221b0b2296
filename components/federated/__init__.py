"""Federated fine-tuning of the compressed student on Flower (docs/federated.md).

- `config`: what the ServerApp reads (`server_settings`); the `federated:` section itself is
  `components.config.FederatedConfig` (re-exported by `config`).
- `shards`: the offline demonstration's private shards, one per rated vaderSentiment source.
- `local`: a client's round without Flower (fine-tune on a shard, with distillation and FedProx's term).
- `updates`: what travels and the server's pure decisions (checks, weighted mean, checkpoints).
- `server_app`, `client_app`: the Flower ServerApp and ClientApp (the only modules importing `flwr`; they run
  in the Flower environment's processes, never in the pipeline's).
"""
