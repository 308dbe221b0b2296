"""Serve an edge bundle over HTTP: the model of `miniaturize package` behind one JSON endpoint.

    miniaturize serve-model edge/ [--host 127.0.0.1] [--port 8000]     # what the command line runs
    curl -s localhost:8000/health
    curl -s localhost:8000/predict -H 'content-type: application/json' -d '{"texts": ["a moving, funny film"]}'

`make_app(bundle_dir, ...)` checks the bundle (its file set, every file against the manifest, and the
manifest against `expect_manifest` when given) and loads the model once, before the app exists: a bundle
that fails the check raises `BundleError` and nothing is served. `serve(...)` runs that app with uvicorn.

    GET  /health    -> {"status": "ok", "model": {"name": ..., "version": ...}}   (liveness, nothing more)
    POST /predict   {"texts": ["...", ...]} or {"text": "..."}                    (a classification bundle)
                    -> {"predictions": [{"label": ..., "scores": {label: p}}], "count": n, "elapsed_ms": ms}
    POST /predict   the same request                                              (a multitask bundle)
                    -> {"predictions": [{"tasks": {task: {"label": ..., "scores": {label: p}}, ...}}], ...}
    POST /generate  {"prompt": "...", "max_new_tokens": n}                        (a causal-LM bundle)
                    -> {"continuation": "...", "tokens": n, "elapsed_ms": ms}

Errors answer JSON {"detail": "<one readable sentence>"}: 422 for a body of the wrong shape (no text,
an empty list, a non-string, an unknown key), 413 for a body over `max_body_bytes` (answered from the
Content-Length header before the body is read, or after at most `max_body_bytes` + 1 bytes of a chunked
body), more than `max_batch` texts, a text or prompt longer than `max_text_chars` characters, or more than
`max_new_tokens` tokens asked for (the message names the limit). The interactive documentation (/docs,
/redoc, /openapi.json) is off unless `docs=True`.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator

from components import causal_lm, classification
from components.classification.edge_predict import BundleError, Predictor

USAGE = 'send {"texts": ["...", ...]} or {"text": "..."}'
GENERATE_USAGE = 'send {"prompt": "...", "max_new_tokens": n}'
MAX_BODY_BYTES = 1 << 20  # 1 MiB: 64 texts of 2000 characters, even JSON-escaped non-ASCII, fit
CAUSAL_LM = causal_lm.KIND


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


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: StrictStr = Field(min_length=1)
    max_new_tokens: StrictInt = Field(default=32, ge=1)


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413 before the app sees it. A Content-Length
    over the limit is answered at once, without reading any of the body; a body without one (chunked) is
    read only up to `max_bytes` + 1 bytes. A body within the limit is handed on whole."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self.too_large(send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self.too_large(send)
                return
            more = message.get("more_body", False)
        await self.app(scope, replay(body, receive), send)

    async def too_large(self, send) -> None:
        detail = f"the request body is over {self.max_bytes} bytes; the limit is max_body_bytes={self.max_bytes}"
        payload = json.dumps({"detail": detail}).encode()
        # "connection: close": the server drops the connection instead of reading the rest of the body.
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def replay(body: bytes, receive):
    """An ASGI receive that gives `body` once, then passes through to the real one (for disconnects)."""
    sent = False

    async def receive_again():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive_again


def bundle_task(bundle_dir: Path) -> str:
    """The task manifest.json names, read only to pick the loader; that loader's check then holds the bundle
    to its kind's file set (a manifest that lies about its task fails that check)."""
    try:
        manifest = json.loads((bundle_dir / "manifest.json").read_text())
        return manifest.get("task", classification.KIND) if isinstance(manifest, dict) else classification.KIND
    except (OSError, ValueError):
        return classification.KIND  # the loader's check then says what is wrong


def load_model(bundle_dir: Path, threads: int, expect_manifest: str | None = None):
    """The bundle's Predictor (classification or multitask) or Generator (causal-LM) after its check; anything
    that stops it loading becomes a BundleError."""
    from components.causal_lm.edge_generate import BundleError as GenerateBundleError, Generator

    try:
        if bundle_task(bundle_dir) == CAUSAL_LM:
            return Generator(bundle_dir, threads, expect_manifest)
        return Predictor(bundle_dir, threads, expect_manifest)
    except BundleError:
        raise
    except GenerateBundleError as err:  # the causal-LM script's own (identical) exception class
        raise BundleError(str(err)) from err
    except Exception as err:  # noqa: BLE001 - a bad manifest or an unloadable model: one clear line at startup
        raise BundleError(f"{bundle_dir}: cannot load the bundle: {type(err).__name__}: {err}") from err


def model_info(manifest: dict) -> dict:
    """What /health tells about the model: its registered name and version, no paths, hashes or metrics."""
    source = manifest.get("source") if isinstance(manifest.get("source"), dict) else {}
    return {"name": source.get("name"), "version": source.get("version")}


def limit_error(texts: list[str], max_text_chars: int, max_batch: int) -> str | None:
    """Why a request breaks a size limit (413), or None when it is within both."""
    if len(texts) > max_batch:
        return f"{len(texts)} texts in one request; the limit is max_batch={max_batch}: split the request"
    for index, text in enumerate(texts):
        if len(text) > max_text_chars:
            return f"texts[{index}] is {len(text)} characters long; the limit is max_text_chars={max_text_chars}"
    return None


def generate_limit_error(request: GenerateRequest, max_text_chars: int, max_new_tokens: int) -> str | None:
    """Why a generation request breaks a size limit (413), or None when it is within both."""
    if len(request.prompt) > max_text_chars:
        return f"the prompt is {len(request.prompt)} characters long; the limit is max_text_chars={max_text_chars}"
    if request.max_new_tokens > max_new_tokens:
        return f"max_new_tokens={request.max_new_tokens} asked for; the limit is max_new_tokens={max_new_tokens}"
    return None


def readable(errors: list[dict], usage: str = USAGE) -> str:
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
    return "; ".join(parts) + f" ({usage})"


def make_app(
    bundle_dir: Path,
    max_text_chars: int = 2000,
    max_batch: int = 64,
    threads: int = 2,
    max_new_tokens: int = 64,
    max_body_bytes: int = MAX_BODY_BYTES,
    docs: bool = False,
    expect_manifest: str | None = None,
) -> FastAPI:
    model = load_model(Path(bundle_dir), threads, expect_manifest)
    causal_lm = bundle_task(Path(bundle_dir)) == CAUSAL_LM
    info = model_info(model.manifest)
    # One inference at a time: each already uses `threads` cores, so concurrent runs would only contend
    # for them, and the tokenizer is then never used from two threads at once.
    lock = threading.Lock()

    app = FastAPI(
        title="miniaturize edge model",
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    usage = GENERATE_USAGE if causal_lm else USAGE

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": readable(list(exc.errors()), usage)})

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": info}

    if causal_lm:
        add_generate(app, model, lock, max_text_chars, max_new_tokens)
    else:
        add_predict(app, model, lock, max_text_chars, max_batch)
    return app


def add_predict(app: FastAPI, predictor: Predictor, lock: threading.Lock, max_text_chars: int, max_batch: int) -> None:
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
        # The client has the texts in order; echoing up to max_batch x max_text_chars back is waste. The rest
        # of a row is the prediction: label and scores, or every task's of a multitask bundle.
        predictions = [{key: value for key, value in row.items() if key != "text"} for row in rows]
        return {
            "predictions": predictions,
            "count": len(predictions),
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
        }


def add_generate(app: FastAPI, generator, lock: threading.Lock, max_text_chars: int, max_new_tokens: int) -> None:
    @app.post("/generate")
    def generate(request: GenerateRequest) -> dict:
        problem = generate_limit_error(request, max_text_chars, max_new_tokens)
        if problem:
            raise HTTPException(status_code=413, detail=problem)
        started = time.perf_counter()
        with lock:
            try:
                ids = list(generator.generate(request.prompt, request.max_new_tokens))
            except ValueError as err:  # an empty or over-long prompt, in tokens
                raise HTTPException(status_code=422, detail=str(err)) from None
            text = generator.tokenizer.decode(ids, skip_special_tokens=True)
        return {
            "continuation": text,
            "tokens": len(ids),
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
        }


def serve(
    bundle_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_text_chars: int = 2000,
    max_batch: int = 64,
    threads: int = 2,
    log_level: str = "info",
    max_new_tokens: int = 64,
    max_body_bytes: int = MAX_BODY_BYTES,
    docs: bool = False,
    expect_manifest: str | None = None,
) -> None:
    """Check and load the bundle (BundleError before listening if it is bad), then serve until interrupted."""
    import uvicorn

    app = make_app(
        bundle_dir, max_text_chars, max_batch, threads, max_new_tokens, max_body_bytes, docs, expect_manifest
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level)
