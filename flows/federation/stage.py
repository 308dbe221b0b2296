"""The federate stage: a compressed student in, the federated student out, and the federation's record.

    result = run_federation(cfg, student_dir, shards, out_dir, env, seed=13, teachers={"movie": teacher})

1. the start: the student's travelling weights (`components.federated.local.trainable_names`) saved as
   `out_dir/start.npz`; the federation's key (what its result depends on: the start, the shards' contents,
   the config but its number of rounds, the seed) names its checkpoint, so a re-run after a crash (a server
   restart) resumes from the last completed round, and a run asked for more rounds continues the same one;
2. the server's settings (`out_dir/server.json`), a Flower App folder (`out_dir/app/`) naming the ServerApp
   and ClientApp, then Flower's runtime on loopback: a SuperLink and one SuperNode per shard, `flwr run`,
   until the ServerApp writes `done.json` (`flows.federation.runtime`); every process stopped at the end;
3. the final global weights put into the student (`out_dir/student/`, a classifier folder the export stage
   reads) and `out_dir/federation.json`: every round's global and per-client accuracy and loss, bytes moved,
   seconds, refused and failed updates, the clients' data hashes, totals.

Nothing here imports Flower: the federation runs in the Flower environment's processes.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from components.federated import local, shards as shard_data, updates
from components.federated.config import FederatedConfig, server_settings
from flows.federation.runtime import Client, FlowerEnv, LocalFederation, app_folder

SERVERAPP = "components.federated.server_app:app"
CLIENTAPP = "components.federated.client_app:app"


def federation_key(cfg: FederatedConfig, start: Path, shard_hashes: dict[str, str], seed: int) -> str:
    """What the federated weights depend on, but the number of rounds (more rounds continue a federation)."""
    digest = hashlib.sha256(Path(start).read_bytes())
    settings = cfg.model_dump(mode="json", exclude={"rounds"})
    digest.update(json.dumps({"cfg": settings, "shards": shard_hashes, "seed": seed}, sort_keys=True).encode())
    return digest.hexdigest()


def save_start(student_dir: Path, out: Path) -> tuple[Path, int]:
    """The student's travelling weights as an .npz; returns (path, their fp32 bytes)."""
    model, _, _ = local.load_student(student_dir)
    arrays = local.get_arrays(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as handle:
        np.savez(handle, **arrays)
    return out, updates.payload_bytes(arrays)


def summarise(rounds: list[dict], cfg: FederatedConfig, travelling_fp32_bytes: int, hashes: dict[str, str]) -> dict:
    """The federation's record: its rounds as the server wrote them, plus totals and the bytes per round per
    client (down: the global weights; up: the update; both in the wire dtype)."""
    trained = [r for r in rounds if r["round"] > 0]
    per_client = [
        c["bytes_down"] + c["bytes_up"] for r in trained for c in r.get("clients", {}).values() if "bytes_up" in c
    ]
    return {
        "config": cfg.model_dump(mode="json"),
        "rounds": rounds,
        "clients": hashes,  # name -> sha256 of its shard, as the client reported it (the data never travelled)
        "travelling_params_fp32_bytes": travelling_fp32_bytes,
        "bytes_per_round_per_client": int(max(per_client)) if per_client else 0,
        "bytes_total": int(sum(r.get("bytes_down", 0) + r.get("bytes_up", 0) for r in trained)),
        "refused": [dict(x, round=r["round"]) for r in trained for x in r.get("refused", [])],
        "failed": [dict(x, round=r["round"]) for r in trained for x in r.get("failed", [])],
        "final_pooled_accuracy": trained[-1].get("pooled_accuracy") if trained else None,
    }


def rounds_to_reach(rounds: list[dict], target: float, points: float = 1.0) -> int | None:
    """The first round whose pooled accuracy is within `points` of `target` (0..1), or None."""
    for record in rounds:
        if record["round"] > 0 and record.get("pooled_accuracy", -1.0) >= target - points / 100:
            return int(record["round"])
    return None


def run_federation(
    cfg: FederatedConfig,
    student_dir: Path,
    shards: dict[str, Path],
    out_dir: Path,
    env: FlowerEnv,
    seed: int = 13,
    teachers: dict[str, Path] | None = None,
    pooled_test: Path | None = None,
    serverapp: str = SERVERAPP,
    clientapp: str = CLIENTAPP,
    client_extra: dict[str, dict] | None = None,
    timeout_s: float | None = None,
    on_started=None,
) -> dict:
    """Federate the student over one local client per shard (see the module); returns the record, also
    written to `out_dir/federation.json`. `teachers` names the clients that hold a teacher (distillation on
    their side); `client_extra` adds node config per client (a test's faults); `on_started(federation)` is
    called once the run is started (a test kills a client there). A federation already finished with the same
    key and rounds is not run again: its record is returned."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start, fp32_bytes = save_start(student_dir, out_dir / "start.npz")
    hashes = {name: shard_data.shard_sha256(folder) for name, folder in shards.items()}
    key = federation_key(cfg, start, hashes, seed)
    previous = out_dir / "federation.json"
    if previous.is_file() and (out_dir / "student").is_dir():
        record = json.loads(previous.read_text())
        if record.get("key") == key and record["config"]["rounds"] == cfg.rounds:
            return record | {"reused": True}
    server_out = out_dir / "server"
    (server_out / "done.json").unlink(missing_ok=True)
    settings = server_settings(cfg, key, start, server_out, seed, student_dir, pooled_test)
    (out_dir / "server.json").write_text(json.dumps(settings, indent=2))
    app = app_folder(out_dir / "app", "miniaturize-federation", serverapp, clientapp, out_dir / "server.json")
    started = time.perf_counter()
    with LocalFederation(env, out_dir / "runtime") as federation:
        federation.start_superlink()
        for name, folder in shards.items():
            extra = (client_extra or {}).get(name, {})
            teacher = (teachers or {}).get(name)
            federation.start_supernode(Client(name, folder, student_dir, teacher, cfg.threads_per_client, extra))
        run_id = federation.run_app(app)
        try:
            if on_started is not None:
                on_started(federation)
            budget = timeout_s or cfg.rounds * (cfg.round_timeout_s + 120) + 300
            federation.wait_for(server_out / "done.json", budget, run_id)
        finally:
            federation.save_run_log(run_id)
    seconds = time.perf_counter() - started
    with np.load(server_out / "global.npz") as saved:
        final = {name: saved[name] for name in saved.files}
    rounds = json.loads((server_out / "rounds.json").read_text())
    done = json.loads((server_out / "done.json").read_text())
    record = summarise(rounds, cfg, fp32_bytes, hashes) | {
        "key": key,
        "seconds": seconds,
        "resumed_after": done["resumed_after"],
        "head": done.get("head"),  # the classifier layer's refit after the last round (None: not asked)
    }
    local.write_student(student_dir, final, out_dir / "student", {"federation_key": key, "rounds": cfg.rounds})
    (out_dir / "federation.json").write_text(json.dumps(record, indent=2))
    return record
