"""Serve an edge bundle over HTTP: the model of `miniaturize package` behind two JSON endpoints.

    miniaturize serve-model edge/ [--host 127.0.0.1] [--port 8000]     # what the command line runs
    curl -s localhost:8000/health
    curl -s localhost:8000/predict -H 'content-type: application/json' -d '{"texts": ["a moving, funny film"]}'

`make_app(bundle_dir, ...)` checks every file of the bundle against its manifest and loads the model once,
before the app exists: a changed or missing file raises `BundleError` and nothing is served. `serve(...)`
runs that app with uvicorn.

    GET  /health   -> {"status": "ok", "model": {...manifest...}, "labels": [...], "limits": {...}}
    POST /predict  {"texts": ["...", ...]} or {"text": "..."}
                   -> {"predictions": [{"label": ..., "scores": {label: p}}], "count": n, "elapsed_ms": ms}

Errors answer JSON {"detail": "<one readable sentence>"}: 422 for a body of the wrong shape (no text,
an empty list, a non-string, an unknown key), 413 for more than `max_batch` texts or a text longer than
`max_text_chars` characters (the message names the limit and the index of the text).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr, model_validator

from components.edge_predict import BundleError, Predictor

USAGE = 'send {"texts": ["...", ...]} or {"text": "..."}'


class PredictRequest(BaseModel):
    # Unknown keys are refused so a typo such as {"txt": ...} is a clear 422, not a silent empty request.
    model_config = ConfigDict(extra="forbid")

    texts: list[StrictStr] | None = Field(default=None, min_length=1)
    text: StrictStr | None = None

    @model_validator(mode="after")
    def exactly_one(self) -> "PredictRequest":
        if (self.texts is None) == (self.text is None):
            raise ValueError('give exactly one of "texts" and "text"')
        return self

    def all_texts(self) -> list[str]:
        return self.texts if self.texts is not None else [self.text]


def load_predictor(bundle_dir: Path, threads: int) -> Predictor:
    """The bundle's predictor after its hash check; anything that stops it loading becomes a BundleError."""
    try:
        return Predictor(Path(bundle_dir), threads)
    except BundleError:
        raise
    except Exception as err:  # noqa: BLE001 - a bad manifest or an unloadable model: one clear line at startup
        raise BundleError(f"{bundle_dir}: cannot load the bundle: {type(err).__name__}: {err}") from err


def model_info(manifest: dict) -> dict:
    return {key: manifest.get(key) for key in ("format", "created_at", "source", "metrics", "max_length")} | {
        "model_sha256": manifest["files"].get("model.onnx")}


def limit_error(texts: list[str], max_text_chars: int, max_batch: int) -> str | None:
    """Why a request breaks a size limit (413), or None when it is within both."""
    if len(texts) > max_batch:
        return f"{len(texts)} texts in one request; the limit is max_batch={max_batch}: split the request"
    for index, text in enumerate(texts):
        if len(text) > max_text_chars:
            return (f"texts[{index}] is {len(text)} characters long; the limit is max_text_chars={max_text_chars}")
    return None


def readable(errors: list[dict]) -> str:
    """One sentence from pydantic's error list, e.g. 'texts.1: Input should be a valid string'."""
    parts = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ()) if part != "body"]
        msg = error.get("msg", "invalid").removeprefix("Value error, ")
        if error.get("type") == "json_invalid":  # its loc is a character offset, not a field
            reason = error.get("ctx", {}).get("error", msg)
            parts.append(f"the request body is not valid JSON ({reason} at character {loc[-1] if loc else 0})")
        else:
            parts.append(f"{'.'.join(loc) or 'request body'}: {msg}")
    return "; ".join(parts) + f" ({USAGE})"


def make_app(bundle_dir: Path, max_text_chars: int = 2000, max_batch: int = 64, threads: int = 2) -> FastAPI:
    predictor = load_predictor(Path(bundle_dir), threads)
    info = model_info(predictor.manifest)
    limits = {"max_text_chars": max_text_chars, "max_batch": max_batch}
    # One inference at a time: each already uses `threads` cores, so concurrent runs would only contend
    # for them, and the tokenizer is then never used from two threads at once.
    lock = threading.Lock()

    app = FastAPI(title="miniaturize edge model")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": readable(list(exc.errors()))})

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": info, "labels": predictor.labels, "limits": limits, "threads": threads}

    # A plain `def`: FastAPI runs it in its thread pool, so /health answers while a batch is being scored.
    @app.post("/predict")
    def predict(request: PredictRequest) -> dict:
        texts = request.all_texts()
        problem = limit_error(texts, max_text_chars, max_batch)
        if problem:
            raise HTTPException(status_code=413, detail=problem)
        started = time.perf_counter()
        with lock:
            rows = predictor.predict(texts)
        # The client has the texts in order; echoing up to max_batch x max_text_chars back is waste.
        predictions = [{"label": row["label"], "scores": row["scores"]} for row in rows]
        return {"predictions": predictions, "count": len(predictions),
                "elapsed_ms": round((time.perf_counter() - started) * 1000, 3)}

    return app


def serve(bundle_dir: Path, host: str = "127.0.0.1", port: int = 8000, max_text_chars: int = 2000,
          max_batch: int = 64, threads: int = 2, log_level: str = "info") -> None:
    """Check and load the bundle (BundleError before listening if it is bad), then serve until interrupted."""
    import uvicorn

    app = make_app(bundle_dir, max_text_chars, max_batch, threads)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
