"""The HTTP inference service: ``create_app(predictor_factory, settings) -> FastAPI``.

Routes: ``GET /live`` (the process answers), ``GET /ready`` (200 only once the model is
loaded and warmed up), ``GET /metrics`` (Prometheus), ``GET /v1/models``, ``POST
/v1/predict`` (multipart ``file`` parts or one raw body; ``?outputs=json,nifti,seg,sr,png``;
``?format=zip`` for a zip of every output; ``?modality=MR`` states a NIfTI/NRRD input's
modality). The answer's ``warnings`` (also in ``summary``) says when the input's modality was
assumed or is not one the model was trained on. ``GET /openapi.json`` and ``GET /docs`` (unless
``settings.api_docs`` is off) describe these routes. Everything but the probes needs the bearer
token.

The model loads in a background thread started at startup, so ``/live`` answers at once.
A request passes, outermost first: metrics, the drain (an early answer waits until the rest of
a bounded body is read, so closing does not reset it away), the error shield (any exception a route did
not turn into an answer becomes a one-line log and a JSON 500, never a traceback), token
check, body limit (413 before the body is read), then the route: a full prediction queue
(503 at once), the upload streamed to disk on an upload slot at a minimum pace (408 if
slower), the declared volume against the memory budget (413), the queue, a compute slot,
the prediction in a worker thread (504 at the deadline, and the prediction is cancelled).
Connection-level guards (head deadline, connection cap, 431) are in ``connections``.
Temporary files are deleted once the answer is sent.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import FileResponse, JSONResponse, Response

from medssl import __version__
from medssl.errors import MedsslError
from medssl.inference.predictor import OUTPUT_KINDS, Predictor
from medssl.inference.server.auth import OPEN_PATHS, BearerAuth
from medssl.inference.server.drain import DrainBeforeAnswer
from medssl.inference.server.jobs import JobFolder, JobResult, run_job
from medssl.inference.server.limits import (
    BodyLimit,
    ConcurrencyGate,
    UploadSlots,
    paced,
    run_with_deadline,
)
from medssl.inference.server.memory import MemoryGuard
from medssl.inference.server.metrics import MetricsMiddleware, ServiceMetrics
from medssl.inference.server.openapi import (
    FORMAT_QUERY,
    MODALITY_QUERY,
    NOT_READY,
    OUTPUTS_QUERY,
    PREDICT_BODY,
    PREDICT_ERRORS,
    PREDICT_OK,
    TOKEN_ERRORS,
    ModelsAnswer,
    ProbeAnswer,
    bearer_openapi,
    errors,
)
from medssl.inference.server.responses import ApiError, error_response, send_error
from medssl.inference.server.settings import ServerSettings
from medssl.inference.server.uploads import receive_upload

log = logging.getLogger("medssl.serve")
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


class ModelState:
    """The predictor once loaded, or why it is not (yet)."""

    def __init__(
        self, metrics: ServiceMetrics, on_ready: Callable[[], None] = lambda: None
    ) -> None:
        self.predictor: Predictor | None = None
        self.failure: str | None = None
        self.metrics, self.on_ready = metrics, on_ready

    def load(self, factory: Callable[[], Predictor]) -> None:
        """Build and warm up the predictor (runs in its own thread); never raises."""
        try:
            predictor = factory()
            predictor.warmup()
        except MedsslError as err:  # its message is safe to show by contract (medssl.errors)
            self.failure = f"{type(err).__name__}: {err}"
        except BaseException as err:  # noqa: BLE001 - the server stays up and says why
            self.failure = f"{type(err).__name__} while loading the model"
        else:
            self.on_ready()
            self.predictor = predictor
            self.metrics.model_ready.set(1)
            log.info("model loaded and warmed up: ready")
            return
        log.error("model not loaded: %s", self.failure)

    def require(self) -> Predictor:
        if self.predictor is None:
            detail = (
                f"model failed to load: {self.failure}" if self.failure else "model still loading"
            )
            raise ApiError(503, "not_ready", detail, headers={"retry-after": "5"}, close=True)
        return self.predictor


class ErrorShield:
    """ASGI middleware: an unexpected exception becomes a JSON 500 and one log line, no traceback."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive, send) -> None:
        started = False

        async def watched_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except Exception as exc:  # noqa: BLE001 - the whole point of this middleware
            log.error("internal error on %s: %s", scope.get("path", "?"), type(exc).__name__)
            if scope["type"] == "http" and not started:
                await send_error(
                    send, ApiError(500, "internal", "internal server error", close=True)
                )


def parse_outputs(text: str) -> frozenset[str]:
    wanted = frozenset(part.strip().lower() for part in text.split(",") if part.strip())
    unknown = sorted(wanted - OUTPUT_KINDS)
    if unknown or not wanted:
        shown = [u[:20] for u in unknown[:5]]
        raise ApiError(
            422,
            "invalid_query",
            f"outputs {shown or 'empty'}: choose from {sorted(OUTPUT_KINDS)}",
            close=True,
        )
    return wanted


def create_app(predictor_factory: Callable[[], Predictor], settings: ServerSettings) -> FastAPI:
    """The service; the model is built by ``predictor_factory()`` in a thread at startup."""
    metrics = ServiceMetrics()
    memory = MemoryGuard(settings.memory_budget_gb, settings.max_concurrent)
    model = ModelState(metrics, on_ready=memory.settle)
    uploads = UploadSlots(settings.max_uploads)
    executor = ThreadPoolExecutor(settings.max_concurrent, thread_name_prefix="medssl-predict")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.gate = ConcurrencyGate(settings.max_concurrent, settings.max_queued)
        threading.Thread(
            target=model.load, args=(predictor_factory,), name="medssl-model-load", daemon=True
        ).start()
        yield
        executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="medssl inference service",
        version=__version__,
        description=_describe(settings),
        lifespan=lifespan,
        docs_url="/docs" if settings.api_docs else None,
        openapi_url="/openapi.json" if settings.api_docs else None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    if settings.token is not None:
        app.openapi = bearer_openapi(app, OPEN_PATHS)
    app.state.model, app.state.settings = model, settings

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, err: ApiError) -> JSONResponse:
        return error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, err: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(err.status_code, "error")
        return error_response(
            ApiError(err.status_code, code, str(err.detail)[:200], headers=err.headers)
        )

    @app.exception_handler(RequestValidationError)
    async def _query_error(_request: Request, err: RequestValidationError) -> JSONResponse:
        fields = sorted({".".join(str(p) for p in e.get("loc", ())) for e in err.errors()})[:5]
        return error_response(
            ApiError(422, "invalid_query", f"invalid request parameters {fields}", close=True)
        )

    @app.get(
        "/live",
        tags=["probes"],
        response_model=ProbeAnswer,
        summary="Liveness: the process answers (no token)",
        response_description="alive",
    )
    async def live() -> dict[str, str]:
        return {"status": "alive"}

    @app.get(
        "/ready",
        tags=["probes"],
        response_model=ProbeAnswer,
        responses=errors({503: NOT_READY}),
        summary="Readiness: 200 once the model is loaded and warmed up (no token)",
        response_description="the model is loaded and warmed up",
    )
    async def ready() -> dict[str, str]:
        model.require()
        return {"status": "ready"}

    @app.get(
        "/metrics",
        tags=["monitoring"],
        summary="Prometheus metrics of this server",
        response_class=Response,
        response_description="Prometheus text exposition",
        responses={
            200: {"content": {metrics.content_type: {"schema": {"type": "string"}}}},
            **errors(TOKEN_ERRORS),
        },
    )
    async def metrics_text() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get(
        "/v1/models",
        tags=["models"],
        response_model=ModelsAnswer,
        summary="The served model: labels, modalities, heads, outputs",
        response_description="one entry: the model this server loaded",
        responses=errors({**TOKEN_ERRORS, 503: NOT_READY}),
    )
    async def models() -> dict[str, Any]:
        return {"models": [dict(model.require().info)]}

    @app.post(
        "/v1/predict",
        tags=["prediction"],
        summary="Predict on one uploaded series or volume",
        openapi_extra={"requestBody": PREDICT_BODY},
        responses={200: PREDICT_OK, **errors(PREDICT_ERRORS)},
    )
    async def predict(
        request: Request,
        outputs: Annotated[str, OUTPUTS_QUERY] = "json",
        format: Annotated[str, FORMAT_QUERY] = "json",
        modality: Annotated[str | None, MODALITY_QUERY] = None,
    ) -> Response:
        """Streams the upload to a private folder (an upload slot, no compute slot, a minimum
        pace), checks the declared volume against the memory budget, joins the prediction
        queue, waits for a compute slot, predicts in a worker thread. The request timeout
        covers upload + wait + prediction; a prediction past it is cancelled."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.request_timeout_s
        predictor = model.require()
        wanted = parse_outputs(outputs)
        if format not in ("json", "zip"):
            raise ApiError(422, "invalid_query", "format must be 'json' or 'zip'", close=True)
        gate: ConcurrencyGate = request.app.state.gate
        gate.check_room()  # a full queue answers 503 before the body is read
        folder = JobFolder(settings.workdir)
        admitted = thread_owns = False
        try:
            inputs = await _receive(request, folder, deadline)
            gate.admit()
            admitted = True
            await gate.take_slot(deadline - loop.time())
            thread_owns = True
            metrics.predictions_running.inc()

            def done(_future: Future) -> None:
                metrics.predictions_running.dec()
                gate.free_slot()
                gate.leave()
                folder.release()

            cancel = threading.Event()
            job = partial(
                run_job,
                predictor,
                folder,
                inputs,
                wanted,
                max_files=settings.max_files,
                want_archive=format == "zip",
                stow=settings.stow,
                modality=modality.strip().upper() if modality and modality.strip() else None,
                memory=memory,
                cancel=cancel,
                on_peak=metrics.observe_peak,
            )
            result: JobResult = await run_with_deadline(
                executor, job, deadline - loop.time(), done, cancel
            )
            if result.archive is not None:
                response = FileResponse(
                    result.archive,
                    media_type="application/zip",
                    filename="prediction.zip",
                    background=BackgroundTask(folder.release),
                )
                folder = None  # the response's background task lets go after sending
                return response
            return JSONResponse(result.body())
        finally:
            if admitted and not thread_owns:
                gate.leave()
            if folder is not None:
                folder.release()
                if not thread_owns:
                    folder.release()  # the thread's share: it never started

    async def _receive(request: Request, folder: JobFolder, deadline: float) -> tuple[Path, ...]:
        """The upload, on an upload slot, at a minimum pace, before the deadline."""
        uploads.enter()
        metrics.uploads_arriving.inc()
        try:
            chunks = paced(
                request.stream(),
                settings.min_upload_bytes_per_s,
                settings.upload_grace_s,
                deadline,
            )
            return await receive_upload(
                chunks,
                request.headers.get("content-type"),
                folder.inputs,
                max_files=settings.max_files,
                max_header_bytes=settings.max_header_bytes,
            )
        finally:
            uploads.leave()
            metrics.uploads_arriving.dec()

    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(BearerAuth, token=settings.token)
    app.add_middleware(ErrorShield)
    app.add_middleware(DrainBeforeAnswer, max_bytes=settings.max_upload_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def _describe(settings: ServerSettings) -> str:
    """The schema's description: authentication and this server's limits."""
    auth = (
        "Every route but `/live` and `/ready` needs `Authorization: Bearer <token>`."
        if settings.token is not None
        else "Authentication is off (loopback only)."
    )
    return (
        f'{auth} Errors are JSON `{{"error": code, "detail": reason}}`; any route may answer '
        "500 `internal` (never a traceback). Limits of this server: request body "
        f"{settings.max_upload_bytes} bytes, {settings.max_files} files, "
        f"{settings.max_concurrent} predictions running and {settings.max_queued} waiting "
        f"(one more is 503 `busy`), {settings.max_uploads} uploads arriving at once at "
        f"{settings.min_upload_bytes_per_s} bytes/s or more after {settings.upload_grace_s:g} s "
        f"(else 408), {settings.request_timeout_s:g} s per request (upload + wait + "
        "prediction), request heads within "
        f"{settings.header_timeout_s:g} s and {settings.max_request_head_bytes} bytes (else "
        "408/431); a declared volume over the memory budget is 413 before it is read."
    )
