"""HTTP serving of an edge bundle: a real uvicorn server on a free loopback port, queried with urllib (and a
raw socket for oversized bodies); predictions equal the bundle's Predictor, size and shape limits answer
413/422 with readable messages, an oversized body is refused before it is read, /health tells only
liveness and the version, the API documentation is off, a causal-LM bundle serves /generate, a multitask
bundle answers every task in one /predict, a tampered or unpinned bundle is refused before anything listens,
and `miniaturize serve-model` runs as a process."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from components import bundle
from components.classification import export
from components.classification.edge_predict import BundleError, Predictor
from components.config import ExportConfig
from components.kit.tracking import NullTracker
from components.serve import make_app, model_info
from tests.components.causal_lm.test_edge_generate import tiny_lm_dir  # noqa: F401 - the tiny causal-LM fixture

TEXTS = ["a wonderful, moving film", "a dull, lifeless mess", "great acting and a sharp script number 7"]
MAX_TEXT_CHARS, MAX_BATCH = 50, 4  # small, so the limit tests send small requests
MAX_BODY = 4096  # bytes
CLI = Path(sys.executable).with_name("miniaturize")

# Loopback only: an http_proxy in the environment must not catch requests to 127.0.0.1.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def call(url: str, body=None, raw: bytes | None = None) -> tuple[int, dict]:
    """(status, JSON body) of a GET, or of a POST when body (JSON) or raw (bytes) is given."""
    data = json.dumps(body).encode() if body is not None else raw
    headers = {"content-type": "application/json"} if data is not None else {}
    try:
        with OPENER.open(urllib.request.Request(url, data=data, headers=headers), timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@contextmanager
def running(app):
    """The app under uvicorn in a background thread, on a port the kernel picks; yields its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def packaged(tiny_model_dir, tiny_prepared, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve_bundle")
    onnx_dir = root / "onnx"
    export.run(ExportConfig(), tiny_model_dir, tiny_prepared, onnx_dir, NullTracker(), max_length=32)
    return bundle.package(onnx_dir, root / "edge", {"path": str(onnx_dir)}, {"accuracy": 0.5}, max_length=32)


@pytest.fixture(scope="module")
def url(packaged):
    with running(
        make_app(packaged, max_text_chars=MAX_TEXT_CHARS, max_batch=MAX_BATCH, threads=1, max_body_bytes=MAX_BODY)
    ) as base:
        yield base


def expected(packaged: Path, texts: list[str]) -> list[dict]:
    return [{"label": row["label"], "scores": row["scores"]} for row in Predictor(packaged, 1).predict(texts)]


def test_health_tells_liveness_and_the_model_version_only(url):
    status, body = call(f"{url}/health")
    assert status == 200 and body == {"status": "ok", "model": {"name": None, "version": None}}
    registered = {
        "source": {"model_uri": "models:/m/3", "name": "m", "version": "3", "run_id": "r"},
        "metrics": {"accuracy": 0.5},
        "files": {"model.onnx": "ab" * 32},
    }
    assert model_info(registered) == {"name": "m", "version": "3"}


def test_the_api_documentation_is_off_unless_asked_for(url, packaged):
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        assert call(f"{url}{path}")[0] == 404, path
    with running(make_app(packaged, threads=1, docs=True)) as base:
        status, schema = call(f"{base}/openapi.json")
        assert status == 200 and "/predict" in schema["paths"]


def test_predictions_equal_the_bundle_predictor(url, packaged):
    status, body = call(f"{url}/predict", {"texts": TEXTS})
    assert status == 200 and body["count"] == 3 and body["elapsed_ms"] >= 0
    assert body["predictions"] == expected(packaged, TEXTS)
    status, one = call(f"{url}/predict", {"text": TEXTS[1]})
    assert status == 200 and one["predictions"] == expected(packaged, TEXTS[1:2])


def test_concurrent_requests_get_their_own_answers(url, packaged):
    want = expected(packaged, TEXTS)
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: call(f"{url}/predict", {"text": TEXTS[i % 3]}), range(12)))
    assert [a[1]["predictions"][0] for a in answers] == [want[i % 3] for i in range(12)]


@pytest.mark.parametrize(
    "body, words",
    [
        ({}, 'request body: give exactly one of "texts" and "text" ('),
        ({"texts": []}, "texts: List should have at least 1 item"),
        ({"texts": ["fine", 3]}, "texts.1: Input should be a valid string"),
        ({"text": ["not", "a", "string"]}, "text: Input should be a valid string"),
        ({"txt": "typo"}, "txt: Extra inputs are not permitted"),
        ({"text": "a", "texts": ["b"]}, 'give exactly one of "texts" and "text"'),
        ("just a string", "Input should be a valid dictionary"),
    ],
)
def test_a_body_of_the_wrong_shape_is_a_readable_422(url, body, words):
    status, answer = call(f"{url}/predict", body)
    assert status == 422 and words in answer["detail"], answer
    assert '{"texts": ["...", ...]}' in answer["detail"]


def test_broken_json_and_a_missing_body_are_422(url):
    status, answer = call(f"{url}/predict", raw=b'{"texts": [')
    assert status == 422 and "the request body is not valid JSON" in answer["detail"]
    status, answer = call(f"{url}/predict", raw=b"")
    assert status == 422 and "request body: Field required" in answer["detail"]


def test_limits_answer_413_naming_the_limit_and_the_text(url):
    status, answer = call(f"{url}/predict", {"texts": ["short", "x" * 10, "y" * (MAX_TEXT_CHARS + 1)]})
    assert status == 413
    assert (
        answer["detail"]
        == f"texts[2] is {MAX_TEXT_CHARS + 1} characters long; the limit is max_text_chars={MAX_TEXT_CHARS}"
    )
    status, answer = call(f"{url}/predict", {"texts": ["a"] * (MAX_BATCH + 1)})
    assert (
        status == 413 and f"{MAX_BATCH + 1} texts" in answer["detail"] and f"max_batch={MAX_BATCH}" in answer["detail"]
    )
    status, _ = call(f"{url}/predict", {"texts": ["z" * MAX_TEXT_CHARS] * MAX_BATCH})  # exactly at both limits
    assert status == 200


def raw_exchange(url: str, head: bytes, parts: list[bytes], wait: float = 10.0) -> bytes:
    """What the server answers on a raw connection after `head` and each of `parts` (sent while it has not
    answered yet); a server that closes the connection early may cut the sending short."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        sock.sendall(head)
        try:
            for part in parts:
                sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        try:
            while b"\r\n\r\n" not in answer:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except socket.timeout:
            pass
        return answer


def test_a_100_mb_content_length_is_413_before_the_body_is_sent(url):
    head = (
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000000\r\n\r\n"
    )
    started = time.monotonic()
    # 1 KB of the promised 100 MB: an answer can only come before the body was read
    answer = raw_exchange(url, head, [b'{"texts": ["' + b"x" * 1000])
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert time.monotonic() - started < 5


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def test_a_chunked_body_over_the_limit_is_413_after_reading_no_more_than_the_limit(url):
    head = (
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    # 5 KB sent of a body that never ends: the answer comes once the limit (4 KB) is passed
    answer = raw_exchange(url, head, [chunk(b'{"texts": ["' + b"x" * 1024)] + [chunk(b"x" * 1024)] * 4)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    body = json.dumps({"text": TEXTS[0]}).encode()
    answer = raw_exchange(url, head, [chunk(body[:10]), chunk(body[10:]), b"0\r\n\r\n"])
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_a_body_of_exactly_the_limit_is_read_and_one_byte_more_is_413(url):
    body = json.dumps({"text": TEXTS[0]}).encode()
    status, answer = call(f"{url}/predict", raw=body + b" " * (MAX_BODY - len(body)))
    assert status == 200 and answer["count"] == 1
    status, answer = call(f"{url}/predict", raw=body + b" " * (MAX_BODY + 1 - len(body)))
    assert status == 413 and answer["detail"] == (
        f"the request body is over {MAX_BODY} bytes; the limit is max_body_bytes={MAX_BODY}"
    )


def test_unknown_routes_are_404(url):
    assert call(f"{url}/nothing-here")[0] == 404


def test_a_tampered_or_foreign_folder_is_refused_at_startup(packaged, tmp_path):
    copy = Path(shutil.copytree(packaged, tmp_path / "edge"))
    (copy / "model.onnx").write_bytes((copy / "model.onnx").read_bytes() + b"\0")
    with pytest.raises(BundleError, match="model.onnx does not match manifest.json"):
        make_app(copy)
    with pytest.raises(BundleError, match="manifest.json is missing"):
        make_app(tmp_path)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="cannot load the bundle: JSONDecodeError"):
        make_app(copy)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_model_command_serves_and_refuses_a_tampered_bundle(packaged, tmp_path):
    port = free_port()
    # cwd is a scratch folder: ONNX Runtime may write temporary files beside the process.
    process = subprocess.Popen(
        [str(CLI), "serve-model", str(packaged), "--port", str(port), "--max-batch", "2", "--threads", "1"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                status, health = call(f"http://127.0.0.1:{port}/health")
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "serve-model did not answer within 60 s"
                time.sleep(0.2)
        assert status == 200 and health["status"] == "ok"
        status, body = call(f"http://127.0.0.1:{port}/predict", {"texts": TEXTS[:2]})
        assert status == 200 and body["predictions"] == expected(packaged, TEXTS[:2])
        assert call(f"http://127.0.0.1:{port}/predict", {"texts": TEXTS})[0] == 413
    finally:
        process.terminate()
        process.wait(15)

    copy = Path(shutil.copytree(packaged, tmp_path / "edge"))
    (copy / "labels.json").write_text('["positive", "negative"]')
    refused = subprocess.run(
        [str(CLI), "serve-model", str(copy), "--port", str(port)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "refusing to serve" in refused.stderr and "labels.json does not match manifest.json" in refused.stderr
    missing = subprocess.run(
        [str(CLI), "serve-model", str(tmp_path / "nope")], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_serve_model_refuses_a_bundle_whose_manifest_is_not_the_pinned_one(packaged, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    refused = CliRunner().invoke(app, ["serve-model", str(packaged), "--expect-manifest", "0" * 64])
    assert refused.exit_code == 2
    assert "refusing to serve" in refused.output and "not the bundle that was pinned" in refused.output
    with pytest.raises(BundleError, match="not the expected"):
        make_app(packaged, expect_manifest="0" * 64)
    assert make_app(packaged, threads=1, expect_manifest=bundle.manifest_sha256(packaged))


# ---------------------------------------------------------------- a causal-LM bundle


@pytest.fixture(scope="module")
def lm_url(tiny_lm_dir, tmp_path_factory):  # noqa: F811 - the fixture imported above
    out = bundle.package(
        tiny_lm_dir,
        tmp_path_factory.mktemp("serve_lm") / "edge",
        {"name": "tiny-lm", "version": "2"},
        {},
        max_length=64,
    )
    with running(make_app(out, max_text_chars=MAX_TEXT_CHARS, threads=1, max_new_tokens=8)) as base:
        yield base, out


def test_a_causal_lm_bundle_serves_generate(lm_url):
    from components.causal_lm.edge_generate import Generator

    url, out = lm_url
    status, body = call(f"{url}/generate", {"prompt": "the film was", "max_new_tokens": 5})
    assert status == 200, body
    assert body["continuation"] == Generator(out, 1).continuation("the film was", 5)
    assert 0 < body["tokens"] <= 5 and body["elapsed_ms"] >= 0
    assert call(f"{url}/health")[1] == {"status": "ok", "model": {"name": "tiny-lm", "version": "2"}}
    assert call(f"{url}/predict", {"text": "x"})[0] == 404


@pytest.mark.parametrize(
    "request_body, status, words",
    [
        ({"prompt": "the film", "max_new_tokens": 9}, 413, "the limit is max_new_tokens=8"),
        ({"prompt": "x" * (MAX_TEXT_CHARS + 1)}, 413, f"the limit is max_text_chars={MAX_TEXT_CHARS}"),
        ({"prompt": ""}, 422, "prompt: String should have at least 1 character"),
        ({"text": "the film"}, 422, 'send {"prompt": "...", "max_new_tokens": n}'),
        ({"prompt": "a", "max_new_tokens": 0}, 422, "max_new_tokens: Input should be greater than or equal to 1"),
    ],
)
def test_generate_limits_and_shapes_answer_readably(lm_url, request_body, status, words):
    answer = call(f"{lm_url[0]}/generate", request_body)
    assert answer[0] == status and words in answer[1]["detail"], answer


# ---------------------------------------------------------------- a multitask bundle


@pytest.fixture(scope="module")
def multitask_url(tiny_model_dir, tiny_multitask_prepared, tmp_path_factory):
    from tests.components.classification.test_export import multitask_export

    root = tmp_path_factory.mktemp("serve_multitask")
    onnx_dir = multitask_export(root, tiny_model_dir, tiny_multitask_prepared)
    out = bundle.package(onnx_dir, root / "edge", {"name": "tiny-multitask", "version": "1"}, {}, max_length=32)
    with running(make_app(out, threads=1)) as base:
        yield base, out


def test_a_multitask_bundle_serves_every_task_in_one_predict(multitask_url):
    url, out = multitask_url
    status, body = call(f"{url}/predict", {"texts": TEXTS[:2]})
    assert status == 200 and body["count"] == 2
    want = Predictor(out, 1).predict(TEXTS[:2])
    assert body["predictions"] == [{"tasks": row["tasks"]} for row in want]
    assert set(body["predictions"][0]["tasks"]) == {"sentiment", "length"}
    assert set(body["predictions"][0]["tasks"]["length"]) == {"label", "scores"}
    assert call(f"{url}/health")[1] == {"status": "ok", "model": {"name": "tiny-multitask", "version": "1"}}
