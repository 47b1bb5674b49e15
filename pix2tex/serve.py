"""``pix2tex serve``: an HTTP API and a web page for reading formula images.

    pix2tex serve [--host 127.0.0.1] [--port 8502] [--checkpoint MODEL] [--engine torch|onnx]

Endpoints (described at ``/openapi.json``, browsable at ``/docs`` with assets served locally):

- ``POST /predict/`` (multipart field ``file``) and ``POST /bytes/`` (raw body, or the multipart
  field ``file``): the public pix2tex's API; both answer the LaTeX as a JSON string.
- ``POST /v1/predict``: one or more multipart ``file`` fields → ``{"results": [{"latex",
  "confidence", "seconds"} | {"error"}, …]}``.
- ``POST /v1/render``: ``{"latex": …}`` → PNG, through the sandboxed TeX renderer.
- ``GET /health``: model, engine, version, the glyph scale it reads at and the batcher's counters.
- ``GET /``: the web page (pix2tex/web).
- ``GET /local/``: with ``--web``, the in-browser reader (``pix2tex export --web``): the same
  reading done by onnxruntime-web in the visitor's browser, the image never uploaded.  Served
  cross-origin isolated (COOP/COEP), so the page may run wasm on several threads.

Requests are read on the event loop; decoding runs in one worker thread, where images from
requests that arrive close together are decoded as one batch (:class:`Batcher`).  The model
masks padded patches, so a reading does not depend on its batch-mates.
"""

import argparse
import asyncio
import ctypes
import ctypes.util
import functools
import io
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

try:
    from fastapi import APIRouter, Depends, File, HTTPException, Request, UploadFile
    from fastapi.responses import FileResponse, Response
    from fastapi.staticfiles import StaticFiles
    from fastapi_offline import FastAPIOffline
    from pydantic import BaseModel, Field
    from starlette.responses import JSONResponse
except ModuleNotFoundError as exc:
    raise ImportError(f"pix2tex serve needs its extra ({exc.name} is missing): pip install 'pix2tex[serve]'") from None
from PIL import Image

import pix2tex
from pix2tex.inference import image_error
from pix2tex.render import RenderError, render_images

__all__ = ["ServeSettings", "Batcher", "QueueFull", "create_app", "main"]

WEB_DIR = Path(__file__).parent / "web"
LOCAL_PATH = "/local"  # where --web mounts the in-browser reader
LATEX_MAX_CHARS = 4000  # a /v1/render request with a longer formula is refused (413)


@dataclass(frozen=True)
class ServeSettings:
    """What the server accepts and how it batches (the ``pix2tex serve`` options)."""

    max_upload_bytes: int = 10 * 2**20  # whole request body; more → 413
    max_pixels: int = 25_000_000  # per image, checked from the header; more → 422
    max_images: int = 16  # images in one /v1/predict request; more → 413
    max_batch: int = 8  # images decoded together
    max_wait_ms: float = 10.0  # how long the first request of a batch waits for company
    max_queue: int = 64  # images being prepared, waiting or being decoded; more → 503 with Retry-After
    # Images decoded and prepared at once.  Each holds at most preprocess.MAX_WORK_PIXELS of working
    # arrays (~20 bytes a pixel), so this bounds the memory that uploads cost, whatever their number.
    prepare_workers: int = 2
    render_workers: int = 2  # TeX runs at once for /v1/render
    render_dpi: int = 160

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_images", "max_batch", "max_queue", "prepare_workers",
                     "render_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be ≥ 0, got {self.max_wait_ms}")


class QueueFull(Exception):
    """The batcher holds ``max_queue`` images already."""


@dataclass
class _Job:
    arrays: list[Any]
    future: asyncio.Future


@dataclass
class BatchStats:
    requests: int = 0
    images: int = 0
    batches: int = 0
    largest_batch: int = 0


class Batcher:
    """Decode images from concurrent requests together, in one worker thread.

    ``read(arrays)`` is the model call (``LatexOCR.read``): it runs off the event loop, one batch
    at a time.  A batch starts with the oldest waiting request and takes every request that
    arrives within ``max_wait_s`` of it, up to ``max_batch`` images (a request is never split).
    """

    def __init__(self, read: Callable[[list[Any]], list[Any]], *, max_batch: int, max_wait_s: float,
                 max_queue: int):
        self._read, self.max_batch, self.max_wait_s, self.max_queue = read, max_batch, max_wait_s, max_queue
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pix2tex-decode")
        self.pending = 0  # images queued or being decoded
        self.stats = BatchStats()

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def submit(self, arrays: list[Any]) -> list[Any]:
        """The readings of ``arrays``, in order; raises :class:`QueueFull` at once when full."""
        if self._queue is None:
            raise RuntimeError("Batcher.start() was not awaited")
        if self.pending + len(arrays) > self.max_queue:
            raise QueueFull(f"{self.pending} images are waiting (limit {self.max_queue})")
        self.pending += len(arrays)
        job = _Job(arrays, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(job)
        try:
            return await job.future
        finally:
            self.pending -= len(arrays)

    async def _collect(self) -> list[_Job]:
        assert self._queue is not None
        jobs = [await self._queue.get()]
        size = len(jobs[0].arrays)
        deadline = time.monotonic() + self.max_wait_s
        while size < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), left)
                except TimeoutError:
                    break
            jobs.append(job)
            size += len(job.arrays)
        return jobs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [job for job in await self._collect() if not job.future.done()]  # a client may be gone
            arrays = [a for job in jobs for a in job.arrays]
            if not arrays:
                continue
            try:
                readings = await loop.run_in_executor(self._executor, self._read, arrays)
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the failure
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self.stats.requests += len(jobs)
            self.stats.images += len(arrays)
            self.stats.batches += 1
            self.stats.largest_batch = max(self.stats.largest_batch, len(arrays))
            at = 0
            for job in jobs:
                if not job.future.done():
                    job.future.set_result(readings[at : at + len(job.arrays)])
                at += len(job.arrays)


class BodyTooLarge(Exception):
    pass


class CrossOriginIsolated:
    """ASGI wrapper: every response carries COOP and COEP, which make the page cross-origin
    isolated; only such a page gets SharedArrayBuffer, which onnxruntime-web's wasm threads need."""

    HEADERS = ((b"cross-origin-opener-policy", b"same-origin"), (b"cross-origin-embedder-policy", b"require-corp"))

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        async def send_isolated(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.HEADERS]}
            await send(message)

        await self.app(scope, receive, send_isolated)


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413, never parsed or buffered.

    The declared Content-Length is checked first; a body sent without one (chunked) is counted as
    it streams in, so nothing larger than the limit is ever held in memory or spooled to disk.
    Once over the limit, whatever the application would answer (FastAPI turns a failed form parse
    into a 400) is replaced by the 413.  Before answering, the rest of the body is read and thrown
    away, up to ``drain_bytes`` in all: ordinary clients (``requests``, ``http.client``) send the
    whole body before they read an answer, and a server that closes on them unread makes them see
    a connection reset instead of the 413.  A body larger than that is refused unread.
    """

    def __init__(self, app, max_bytes: int, drain_bytes: int | None = None):
        self.app, self.max_bytes = app, max_bytes
        self.drain_bytes = 8 * max_bytes if drain_bytes is None else drain_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            if int(declared) <= self.drain_bytes:
                await self._drain(receive, 0)
            return await self._refuse(send, int(declared))
        seen = 0
        over = started = complete = False  # complete: the body's last part has arrived

        async def counting_receive():
            nonlocal seen, over, complete
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if seen > self.max_bytes:
                    over = True
                    raise BodyTooLarge()
            return message

        async def refuse_over() -> None:
            if not complete:
                await self._drain(receive, seen)
            await self._refuse(send, seen)

        async def guarded_send(message):
            nonlocal started
            if over:  # the application's answer to a body it could not finish reading
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await refuse_over()
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            if not started:
                await refuse_over()

    async def _drain(self, receive, seen: int) -> None:
        """Read and discard the rest of the request body, stopping at ``drain_bytes`` in all."""
        while seen <= self.drain_bytes:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def _refuse(self, send, size: int) -> None:
        detail = f"request body is over the {self.max_bytes:,}-byte limit ({size:,} bytes or more)"
        response = JSONResponse({"detail": detail}, status_code=413, headers={"Connection": "close"})
        await response({"type": "http"}, _no_receive, send)


async def _no_receive():
    return {"type": "http.disconnect"}


@functools.cache
def _libc_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, looked up once (find_library runs ldconfig); None where there is none."""
    if not sys.platform.startswith("linux"):
        return None

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None


def _release_free_memory() -> None:
    """Hand freed heap memory back to the system (glibc's malloc_trim; elsewhere nothing).

    Decoding an upload frees tens of megabytes of arrays; glibc keeps such blocks in its arenas (one
    per thread that allocated them), so without this the server's RSS stays at its peak after a
    burst of large images."""
    trim = _libc_malloc_trim()
    if trim is not None:
        trim(0)


class Reading(BaseModel):
    latex: str | None = Field(None, description="the LaTeX (null when the image could not be read)")
    confidence: float | None = Field(
        None, description="mean log-probability of the chosen tokens: 0 is certain, -1 means e^-1 = 0.37 "
                          "per token on average")
    seconds: float | None = Field(None, description="this image's preparation plus an even share of its "
                                                    "batch's decoding time (not the time in the queue)")
    error: str | None = Field(None, description="why this image could not be read (one line)")


class Readings(BaseModel):
    results: list[Reading]


class RenderRequest(BaseModel):
    latex: str = Field(..., description="a formula, as in $...$ (no delimiters)")
    dpi: int | None = Field(None, ge=50, le=400,
                            description="resolution of the PNG (default: the server's --render-dpi, 160)")


def _busy(reason: str) -> HTTPException:
    return HTTPException(503, f"server busy: {reason}", headers={"Retry-After": "1"})


@dataclass
class _Server:
    """What the routes share: the model, the batcher, the worker pools and the load counters."""

    ocr: Any  # a LatexOCR
    settings: ServeSettings
    model_name: str
    engine: str
    web: bool = False  # the in-browser reader is mounted at LOCAL_PATH
    batcher: Batcher = field(init=False)
    prepare_pool: ThreadPoolExecutor = field(init=False)
    render_pool: ThreadPoolExecutor = field(init=False)
    images_in_flight: int = 0  # uploaded images being prepared, waiting for the decoder or decoded
    renders_pending: int = 0  # /v1/render requests running or waiting for a worker

    def __post_init__(self) -> None:
        s = self.settings
        self.batcher = Batcher(self.ocr.read, max_batch=s.max_batch, max_wait_s=s.max_wait_ms / 1000,
                               max_queue=s.max_queue)
        self.prepare_pool = ThreadPoolExecutor(max_workers=s.prepare_workers, thread_name_prefix="pix2tex-prepare")
        self.render_pool = ThreadPoolExecutor(max_workers=s.render_workers, thread_name_prefix="pix2tex-render")

    async def start(self) -> None:
        await self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        self.prepare_pool.shutdown(wait=False, cancel_futures=True)
        self.render_pool.shutdown(wait=False, cancel_futures=True)

    def prepare_one(self, data: bytes, name: str) -> tuple[Any, float | str]:
        """(array, seconds) or (None, one-line reason) for one upload."""
        start = time.perf_counter()
        try:
            return self.ocr.prepare(data, name=name), time.perf_counter() - start
        except (ValueError, OSError) as exc:
            return None, image_error(exc, name)

    async def read_uploads(self, uploads: Sequence[tuple[bytes, str]]) -> list[Reading]:
        # Admission: every image counts from its arrival to its reading, so a burst of uploads waits
        # as compressed bytes (bounded by the body limit) or is turned away, never piles up decoded.
        if self.images_in_flight + len(uploads) > self.settings.max_queue:
            raise _busy(f"{self.images_in_flight} images are being read (limit {self.settings.max_queue})")
        loop = asyncio.get_running_loop()
        self.images_in_flight += len(uploads)
        try:
            prepared = await asyncio.gather(*(loop.run_in_executor(self.prepare_pool, self.prepare_one, data, name)
                                              for data, name in uploads))
            good = [arr for arr, _ in prepared if arr is not None]
            try:
                readings = iter(await self.batcher.submit(good)) if good else iter(())
            except QueueFull as exc:
                raise _busy(str(exc)) from None
        finally:
            self.images_in_flight -= len(uploads)
            if self.images_in_flight == 0:  # idle: give back what the burst's arrays took
                await loop.run_in_executor(self.prepare_pool, _release_free_memory)
        out = []
        for arr, extra in prepared:
            if arr is None:
                out.append(Reading(error=extra))
            else:
                latex, confidence, decode_s = next(readings)
                out.append(Reading(latex=latex, confidence=round(confidence, 4), seconds=round(extra + decode_s, 4)))
        return out

    async def read_one(self, data: bytes, name: str) -> str:
        (reading,) = await self.read_uploads([(data, name)])
        if reading.error is not None:
            raise HTTPException(422, reading.error)
        return reading.latex or ""

    async def render(self, latex: str, dpi: int) -> Image.Image:
        if self.renders_pending >= 4 * self.settings.render_workers:  # each TeX run is a process: shed load early
            raise HTTPException(503, "renderer busy", headers={"Retry-After": "1"})
        self.renders_pending += 1
        try:
            (result,) = await asyncio.get_running_loop().run_in_executor(
                self.render_pool, lambda: render_images([latex], dpi=dpi))
        except RenderError as exc:  # TeX itself is missing or broken: the server's fault, not the client's
            raise HTTPException(500, str(exc)) from None
        finally:
            self.renders_pending -= 1
        if result.image is None:
            raise HTTPException(422, result.error or "TeX could not render the formula")
        return result.image


def _server(request: Request) -> _Server:
    return request.app.state.server


Server = Annotated[_Server, Depends(_server)]
router = APIRouter()


@router.post("/predict/", summary="LaTeX of one image (the public pix2tex's endpoint)", response_model=str)
async def predict_file(server: Server, file: UploadFile = File(..., description="the image")) -> str:
    return await server.read_one(await file.read(), file.filename or "upload")


@router.post("/bytes/", summary="LaTeX of raw image bytes (or the multipart field 'file')", response_model=str,
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                 "multipart/form-data": {"schema": {"type": "object", "properties": {
                     "file": {"type": "string", "format": "binary"}}}}}}})
async def predict_bytes(request: Request, server: Server) -> str:
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        async with request.form(max_files=1, max_fields=1) as form:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise HTTPException(422, "multipart request without a 'file' field")
            return await server.read_one(await upload.read(), upload.filename or "upload")
    return await server.read_one(await request.body(), "body")


@router.post("/v1/predict", response_model=Readings, response_model_exclude_none=True,
             summary="Read one or more images (multipart 'file' fields); each gets its reading or its error",
             responses={413: {"description": "body or image count over the limit"},
                        422: {"description": "no image could be read"},
                        503: {"description": "queue full (see Retry-After)"}})
async def predict_v1(server: Server, file: list[UploadFile] = File(..., description="one or more images")) -> Readings:
    if len(file) > server.settings.max_images:
        raise HTTPException(413, f"{len(file)} images in one request, over the limit of {server.settings.max_images}")
    uploads = [(await f.read(), f.filename or f"upload {k}") for k, f in enumerate(file)]
    results = await server.read_uploads(uploads)
    if all(r.error is not None for r in results):
        raise HTTPException(422, "; ".join(r.error for r in results if r.error))
    return Readings(results=results)


@router.post("/v1/render", summary="LaTeX in, PNG out (TeX in a sandbox)",
             response_class=Response, responses={200: {"content": {"image/png": {}}},
                                                413: {"description": "formula too long"},
                                                422: {"description": "TeX refused the formula (its reason)"},
                                                503: {"description": "all render slots busy"}})
async def render(body: RenderRequest, server: Server) -> Response:
    latex = body.latex.strip()
    if not latex:
        raise HTTPException(422, "empty formula")
    if len(latex) > LATEX_MAX_CHARS:
        raise HTTPException(413, f"formula is {len(latex)} characters, over the limit of {LATEX_MAX_CHARS}")
    image = await server.render(latex, body.dpi or server.settings.render_dpi)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return Response(buffer.getvalue(), media_type="image/png")


@router.get("/health", summary="Model, engine, version and batching counters")
async def health(server: Server) -> dict[str, Any]:
    s, ocr = server.batcher.stats, server.ocr
    return {"status": "ok", "model": server.model_name, "engine": server.engine, "version": pix2tex.__version__,
            "device": str(ocr.device), "glyph_scale": ocr.glyph_scale,
            "glyph_estimator": ocr.glyph_estimator, "pending": server.images_in_flight,
            "web": f"{LOCAL_PATH}/" if server.web else None,
            "batches": {"requests": s.requests, "images": s.images, "batches": s.batches,
                        "largest": s.largest_batch, "max_batch": server.settings.max_batch,
                        "max_wait_ms": server.settings.max_wait_ms}}


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html")


def create_app(ocr, settings: ServeSettings = ServeSettings(), *, model_name: str = "bundled",
               engine: str = "torch", web_dir: str | os.PathLike | None = None) -> FastAPIOffline:
    """The FastAPI application around a loaded :class:`~pix2tex.inference.LatexOCR`; with
    ``web_dir`` (a ``pix2tex export --web`` folder), the in-browser reader at ``/local/`` too."""
    server = _Server(ocr, settings, model_name, engine, web=web_dir is not None)

    @asynccontextmanager
    async def lifespan(_app):
        await server.start()
        try:
            yield
        finally:
            await server.stop()

    app = FastAPIOffline(title="pix2tex", version=pix2tex.__version__, lifespan=lifespan,
                         description="Read an image of a math formula and write its LaTeX.")
    app.state.server = server
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    if web_dir is not None:
        app.mount(LOCAL_PATH, CrossOriginIsolated(StaticFiles(directory=web_dir, html=True)), name="local")
    return app


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    d = ServeSettings()
    p = argparse.ArgumentParser(prog="pix2tex serve", description="Serve the model over HTTP with a web page at /.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8502)
    p.add_argument("--checkpoint", help="model folder (default: the bundled model)")
    p.add_argument("--engine", choices=("auto", "onnx", "torch"), default="auto",
                   help="auto: onnxruntime when the model folder has ONNX graphs (the bundled one does), "
                        "else PyTorch")
    p.add_argument("--device", help="cpu, cuda, … (torch engine; default: CUDA when available)")
    p.add_argument("--beam", type=int, default=1, help="beam size (1: greedy)")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="images decoded together")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms,
                   help="how long a request waits for others to share its batch")
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="images waiting at most; more get 503")
    p.add_argument("--max-upload-mb", type=float, default=d.max_upload_bytes / 2**20, help="request body limit")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels, help="pixels per image at most")
    p.add_argument("--max-images", type=int, default=d.max_images, help="images per /v1/predict request")
    p.add_argument("--prepare-workers", type=int, default=d.prepare_workers,
                   help="images decoded and prepared at once (bounds the memory uploads take)")
    p.add_argument("--threads", type=int, help="CPU threads for the model")
    p.add_argument("--web", nargs="?", const="", metavar="DIR",
                   help="also offer the in-browser reader at /local/: a `pix2tex export --web` folder, or with "
                        "no DIR one exported for the served model at start (needs onnxruntime-web: make web)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        settings = ServeSettings(max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels,
                                 max_images=args.max_images, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                                 max_queue=args.max_queue, prepare_workers=args.prepare_workers)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        import uvicorn
    except ImportError:
        print("error: the server needs its extra: pip install 'pix2tex[serve]'", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="pix2tex-web-") as tmp:
        try:
            web_dir = _web_folder(args.web, args.checkpoint, Path(tmp))  # first: a wrong folder fails fast
        except ValueError as exc:  # WebExportError, CheckpointError and ExportError are ValueErrors
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return _serve(args, settings, web_dir, uvicorn)


def _serve(args: argparse.Namespace, settings: ServeSettings, web_dir: Path | None, uvicorn) -> int:
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8")  # see cli.predict_main
    from pix2tex.inference import LatexOCR

    try:
        ocr = LatexOCR(args.checkpoint, device=args.device, beam=args.beam, batch_size=settings.max_batch,
                       engine=args.engine, threads=args.threads, max_pixels=settings.max_pixels)
    except (ValueError, ImportError) as exc:  # CheckpointError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.threads and ocr.engine == "torch":
        import torch  # only the torch engine has it; onnxruntime got the threads above

        torch.set_num_threads(args.threads)
    app = create_app(ocr, settings, model_name=args.checkpoint or "bundled", engine=ocr.engine, web_dir=web_dir)
    local = f", in-browser reading at {LOCAL_PATH}/" if web_dir is not None else ""
    print(f"pix2tex serve: http://{args.host}:{args.port}/ (API docs at /docs{local})", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _web_folder(web: str | None, checkpoint: str | None, tmp: Path) -> Path | None:
    """The in-browser reader to mount: none (no --web), the export ``web`` names, or one
    exported for ``checkpoint`` into ``tmp`` (--web alone)."""
    if web is None:
        return None
    from pix2tex.web_export import check_web_export, export_web

    return check_web_export(web) if web else export_web(checkpoint, tmp / "web")


if __name__ == "__main__":
    sys.exit(main())
