"""The HTTP side of `python -m job serve`: FastAPI on uvicorn, SageMaker's inference contract, dynamic batching.

- `GET /ping`: 200 once the model is loaded, 503 before; it never waits on generation, which runs on one worker
  thread, off the request loop.
- `POST /invocations`: JSON (`dialogue` or `dialogues`) or JSON Lines (one record per line, one answer line per
  line, in order). Every dialogue of every request goes to one queue; the worker takes the oldest, then waits up to
  `max_wait_s` for more with the same model (fine-tuned or base) and max_new_tokens, up to the batch size, and
  generates them together.
- `GET /`: a page to try the model, the base model's summary beside it, and the run's ROUGE table.

Bad requests get a 4xx with `{"error": "..."}`: one line saying what is wrong and how to fix it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from job.errors import JobError

log = logging.getLogger("job.serve")

JSON_TYPES = ("application/json",)
JSON_LINES_TYPES = ("application/jsonlines", "application/jsonl", "application/x-jsonlines")
MODELS = ("finetuned", "base")
DRAIN_LIMIT = 64 * 2**20
"""An over-size body is read this far (and dropped) so the client gets its 413 instead of a reset connection."""
GRACEFUL_SHUTDOWN_S = 120
"""On SIGTERM: how long in-flight requests may take to finish (a full batch at the max_new_tokens cap)."""


@dataclass
class Limits:
    max_body_bytes: int
    max_dialogues: int
    max_records: int
    max_new_tokens: int
    max_wait_s: float


class BadRequest(Exception):
    """A request the server refuses: its status code and one line saying what to do."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# ----------------------------------------------------------------------------------------------
# Dynamic batching


@dataclass
class Item:
    """One dialogue of one request, waiting for its summary."""

    ids: list[int]
    base: bool
    max_new_tokens: int
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop

    @property
    def key(self) -> tuple[bool, int]:
        return self.base, self.max_new_tokens


class Batcher:
    """One worker thread that generates every batch: items of one key (model, max_new_tokens), up to `batch_size`,
    gathered for at most `max_wait_s` after the first. Items of another key wait for a later batch, oldest first."""

    def __init__(
        self, summarize: Callable[[list[list[int]], bool, int], list[Any]], batch_size: int, max_wait_s: float
    ):
        self.summarize = summarize
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self.batches = 0
        self._queue: queue.Queue[Item | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="generation", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)

    def submit(self, items: list[Item]) -> None:
        for item in items:
            self._queue.put(item)

    def _next_batch(self, held: deque[Item]) -> list[Item] | None:
        first = held.popleft() if held else self._queue.get()
        if first is None:
            return None
        batch = [first]
        for item in list(held):
            if len(batch) < self.batch_size and item.key == first.key:
                held.remove(item)
                batch.append(item)
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.batch_size:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # stop after this batch
                break
            (batch if item.key == first.key else held).append(item)
        return batch

    def _work(self) -> None:
        held: deque[Item] = deque()
        while (batch := self._next_batch(held)) is not None:
            batch = [item for item in batch if not item.future.cancelled()]  # its client went away
            if not batch:
                continue
            try:
                results = self.summarize([i.ids for i in batch], batch[0].base, batch[0].max_new_tokens)
                self.batches += 1
            except BaseException as e:  # noqa: BLE001 - the requests of this batch fail, the server keeps serving
                log.exception("generating a batch of %d failed", len(batch))
                for item in batch:
                    item.loop.call_soon_threadsafe(_settle, item.future, None, e)
                continue
            for item, result in zip(batch, results):
                item.loop.call_soon_threadsafe(_settle, item.future, result, None)


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


# ----------------------------------------------------------------------------------------------
# Reading requests


@dataclass
class Record:
    id: Any
    dialogue: str
    model: str
    max_new_tokens: int


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(400, f"{what} must be a string, got {type(value).__name__}; send the dialogue as text")
    if not value.strip():
        raise BadRequest(400, f"{what} is empty; send the dialogue's text")
    return value.strip()  # as `job predict` reads it


def _options(obj: dict, where: str, served, limits: Limits) -> tuple[str, int]:
    model = obj.get("model", "finetuned")
    if model not in MODELS:
        raise BadRequest(400, f'{where}model must be "finetuned" or "base", got {json.dumps(model)[:80]}')
    if model == "base" and not served.adapter:
        raise BadRequest(
            400,
            f'{where}model "base": this server has no adapter to switch off ({served.method} run'
            f"{' served merged' if served.method != 'full' else ''}); leave out model",
        )
    cap = max(limits.max_new_tokens, served.max_new_tokens)
    n = obj.get("max_new_tokens", served.max_new_tokens)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= cap:
        raise BadRequest(400, f"{where}max_new_tokens must be a whole number from 1 to {cap}, got {json.dumps(n)[:80]}")
    return model, n


def _object(text: str, where: str) -> dict:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadRequest(
            400, f"{where}not JSON ({e.msg} at line {e.lineno} column {e.colno}); send a JSON object"
        ) from None
    if not isinstance(obj, dict):
        raise BadRequest(400, f"{where}a JSON object is expected, got {type(obj).__name__}")
    return obj


def parse_json(text: str, served, limits: Limits) -> list[Record]:
    """`{"dialogue": ..., "id": ...}` or `{"dialogues": [...], "ids": [...]}`, with `model` and `max_new_tokens`."""
    obj = _object(text, "")
    model, n = _options(obj, "", served, limits)
    column = served.dialogue_column
    single = obj.get("dialogue", obj.get(column)) if column != "dialogues" else obj.get("dialogue")
    if "dialogues" in obj and single is not None:
        raise BadRequest(400, "give either dialogue or dialogues, not both")
    if "dialogues" not in obj:
        if single is None:
            raise BadRequest(400, 'no dialogue: send {"dialogue": "..."} or {"dialogues": ["...", ...]}')
        return [Record(obj.get("id", 0), _text(single, "dialogue"), model, n)]
    dialogues = obj["dialogues"]
    if not isinstance(dialogues, list) or not dialogues:
        raise BadRequest(400, "dialogues must be a non-empty list of strings")
    if len(dialogues) > limits.max_dialogues:
        raise BadRequest(
            400,
            f"{len(dialogues)} dialogues in one request; at most {limits.max_dialogues} (split them, or use "
            "application/jsonlines for larger batches)",
        )
    ids = obj.get("ids", list(range(len(dialogues))))
    if not isinstance(ids, list) or len(ids) != len(dialogues):
        raise BadRequest(400, f"ids must be a list as long as dialogues ({len(dialogues)})")
    return [Record(i, _text(d, f"dialogues[{k}]"), model, n) for k, (i, d) in enumerate(zip(ids, dialogues))]


def parse_json_lines(text: str, served, limits: Limits) -> list[Record]:
    """One `{"id": ..., "dialogue": "..."}` per line (Batch Transform's SplitType Line); a final newline is fine."""
    lines = text.split("\n")
    if lines and not lines[-1].strip():
        lines.pop()
    lines = [line.rstrip("\r") for line in lines]
    if not lines:
        raise BadRequest(400, "the body holds no lines; send one JSON object per line")
    if len(lines) > limits.max_records:
        raise BadRequest(
            400, f"{len(lines)} lines in one request; at most {limits.max_records} (lower MaxPayloadInMB or split)"
        )
    records = []
    for number, line in enumerate(lines, 1):
        where = f"line {number}: "
        if not line.strip():
            raise BadRequest(400, f"{where}empty; send one JSON object per line")
        obj = _object(line, where)
        model, n = _options(obj, where, served, limits)
        value = obj.get("dialogue", obj.get(served.dialogue_column))
        if value is None:
            raise BadRequest(400, f'{where}no dialogue: send {{"id": ..., "dialogue": "..."}}')
        records.append(Record(obj.get("id", number - 1), _text(value, f"{where}dialogue"), model, n))
    return records


def media_type(header: str | None) -> str:
    return (header or "").split(";", 1)[0].strip().lower()


def decode(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(400, f"the body is not UTF-8 (byte {e.start}); encode the request as UTF-8") from None


# ----------------------------------------------------------------------------------------------
# The app


class Service:
    """The server's state: what it serves, the model once loaded (or why it could not load), the batcher."""

    def __init__(self, served, load: Callable[[], Any], limits: Limits):
        self.served = served
        self.limits = limits
        self._load = load
        self.model: Any = None
        self.batcher: Batcher | None = None
        self.error: BaseException | None = None
        self.on_failure: Callable[[], None] = lambda: None

    def load(self) -> None:
        try:
            model = self._load()
            self.served.dtype = model.dtype
            self.served.adapter = self.served.adapter and model.adapter
            batcher = Batcher(model.summarize, self.served.batch_size, self.limits.max_wait_s)
            batcher.start()
            self.model, self.batcher = model, batcher
            log.info("model loaded: %s (%s), batches of up to %d", self.served.run, model.dtype, batcher.batch_size)
        except BaseException as e:  # noqa: BLE001 - reported by `run` after the server stops
            self.error = e
            self.on_failure()

    async def summarize(self, records: list[Record]) -> list[tuple[str, int, int]]:
        loop = asyncio.get_running_loop()
        ids = [self.model.prompt_ids(r.dialogue) for r in records]
        items = [Item(i, r.model == "base", r.max_new_tokens, loop.create_future(), loop) for i, r in zip(ids, records)]
        self.batcher.submit(items)
        try:
            results = await asyncio.gather(*(item.future for item in items))
        except asyncio.CancelledError:
            for item in items:
                item.future.cancel()
            raise
        return [(text, len(i), n) for i, (text, n) in zip(ids, results)]


def error(status: int, message: str):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


async def read_body(request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    too_big = BadRequest(413, f"the body is over {limit // 2**20} MB; send fewer dialogues per request")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit or (declared.isdigit() and int(declared) > limit):
            if size > DRAIN_LIMIT:
                break
            continue
        chunks.append(chunk)
    if size > limit:
        raise too_big
    return b"".join(chunks)


def create_app(service: Service):
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException

    from job import page

    @contextlib.asynccontextmanager
    async def lifespan(app):
        threading.Thread(target=service.load, name="load-model", daemon=True).start()
        yield
        if service.batcher is not None:
            service.batcher.stop()

    app = FastAPI(title="dialogsum-qlora", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc):
        detail = exc.detail if isinstance(exc.detail, str) else "bad request"
        if exc.status_code == 404:
            detail = f"no {request.url.path} here; the server answers GET /ping, POST /invocations and GET /"
        elif exc.status_code == 405:
            detail = f"{request.method} {request.url.path} is not served; see GET /ping and POST /invocations"
        return error(exc.status_code, detail)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc):
        return error(400, "the request does not match the contract; see docs/serving.md")

    def ping_body() -> dict:
        s = service.served
        return {"status": "ok", "run": s.run, "method": s.method, "dtype": s.dtype, "base": s.adapter}

    @app.get("/ping")
    async def ping():
        if service.model is None:
            status = "failed" if service.error is not None else "loading"
            return JSONResponse({"status": status, "run": service.served.run}, status_code=503)
        return ping_body()

    @app.post("/invocations")
    async def invocations(request: Request):
        start = time.perf_counter()
        kind = media_type(request.headers.get("content-type"))
        try:
            if kind not in JSON_TYPES + JSON_LINES_TYPES:
                raise BadRequest(
                    415,
                    f"Content-Type {kind or '(none)'} is not served; send application/json or application/jsonlines",
                )
            body = await read_body(request, service.limits.max_body_bytes)
            text = decode(body)
            lines = kind in JSON_LINES_TYPES
            parse = parse_json_lines if lines else parse_json
            records = parse(text, service.served, service.limits)
        except BadRequest as e:
            return error(e.status, str(e))
        if service.model is None:
            return error(503, "the model is still loading; retry once GET /ping answers 200")
        results = await service.summarize(records)
        answers = [
            {"id": r.id, "summary": s, "prompt_tokens": p, "new_tokens": n} for r, (s, p, n) in zip(records, results)
        ]
        if lines:
            out = "".join(
                json.dumps({**a, "model": r.model}, ensure_ascii=False) + "\n" for a, r in zip(answers, records)
            )
            return Response(out, media_type="application/jsonlines")
        return {
            "summaries": answers,
            "model": records[0].model,
            "dtype": service.served.dtype,
            "run": service.served.run,
            "seconds": round(time.perf_counter() - start, 3),
        }

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return page.render(service.served)

    return app


def make_server(served, load: Callable[[], Any], limits: Limits):
    """The uvicorn server of the app and the service behind it; a model that fails to load stops the server."""
    import uvicorn

    service = Service(served, load, limits)
    config = uvicorn.Config(
        create_app(service), log_config=None, access_log=False, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S
    )
    server = uvicorn.Server(config)
    service.on_failure = lambda: setattr(server, "should_exit", True)
    return server, service


def run(sock, served, load: Callable[[], Any], limits: Limits) -> int:
    """Serve on the bound socket until SIGTERM or SIGINT (in-flight requests finish first, then the process ends as
    SIGTERM ends it); a model that fails to load is reported as the job's error."""
    server, service = make_server(served, load, limits)
    host, port = sock.getsockname()[:2]
    log.info(
        "serving %s on http://%s:%d (loading the model; /ping answers 200 once it is loaded)", served.run, host, port
    )
    server.run(sockets=[sock])
    if service.error is not None:
        if isinstance(service.error, (JobError, OSError, RuntimeError)):
            raise service.error
        raise RuntimeError(f"loading the model failed: {service.error!r}") from service.error
    log.info("stopped after %d batches", service.batcher.batches if service.batcher else 0)
    return 0
