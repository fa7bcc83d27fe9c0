"""The demo server: one generator loaded at start, a static page, and a validated API.

Every endpoint is a GET whose parameters are checked before any work is done: a bad value
gets a 4xx answer `{"error": "<one line>"}`, which the page shows as it is. Generation (and
image encoding) runs on one worker thread, one request at a time: on a CPU, PyTorch already
spreads one batch over every core, so parallel batches would only fight for them, and each
extra thread that allocates tensors keeps its own malloc arena (16 clients through FastAPI's
40-thread pool peaked at 1.9 GB; one worker thread keeps it near the model's own size).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import sys
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import uvicorn
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..data import CLASSES
from ..errors import UserError
from ..generate import TrainedGenerator, load_generator
from ..noise import DISTRIBUTIONS
from ..viz import encode_gif, encode_grid

STATIC = Path(__file__).parent / "static"
MAX_COUNT = 256  # images per request: 256 digits are 0.2 MB of pixels and ~0.1 s on a CPU
MAX_STEPS = 64  # interpolation frames
MAX_BODY = 1024  # bytes: the API takes no bodies, so anything larger is refused unread
MAX_CONNECTIONS = 64  # uvicorn answers 503 beyond this many at once

Noise = Literal[tuple(DISTRIBUTIONS)]  # type: ignore[valid-type]
Count = Annotated[int, Query(ge=1, le=MAX_COUNT, description="images to make")]
Seed = Annotated[int, Query(ge=0, lt=2**63, description="noise seed: same seed, same images")]
Digit = Annotated[int | None, Query(ge=0, le=CLASSES - 1, description="conditional models: this digit")]
Scale = Annotated[int, Query(ge=1, le=8, description="pixels per image pixel")]


def create_app(source: str | Path | TrainedGenerator) -> FastAPI:
    """The app for a run folder or generator .safetensors file (loaded here, once)."""
    gen = source if isinstance(source, TrainedGenerator) else load_generator(source)
    name = gen.name
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mnistgan-generate")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        worker.shutdown(cancel_futures=True)

    # No Swagger page: it loads its scripts from a CDN, which an offline machine cannot reach;
    # the OpenAPI description itself is served.
    app = FastAPI(title="mnistgan", summary=f"digits from {name}", docs_url=None,
                  redoc_url=None, openapi_url="/api/openapi.json", lifespan=lifespan)

    async def on_worker(work: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(worker, work)

    @app.middleware("http")
    async def refuse_bodies(request: Request, call_next: Any) -> Response:
        length = request.headers.get("content-length")
        if (length is not None and (not length.isdigit() or int(length) > MAX_BODY)) or \
                "chunked" in request.headers.get("transfer-encoding", ""):
            return error(413, f"request body over {MAX_BODY} bytes: the API takes its "
                              "parameters in the query string")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        field = str(first["loc"][-1])
        given = request.query_params.get(field)
        shown = f"{field}={given}" if given is not None else field
        return error(422, f"{shown}: {first['msg']}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        hint = ": the API is /api/info, /api/grid.png, /api/samples and /api/interpolation.gif" \
            if exc.status_code == 404 else ""
        return error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}{hint}")

    @app.exception_handler(UserError)
    async def refused(request: Request, exc: UserError) -> JSONResponse:
        # The API's parameters have the command line's names: "--digit 3: ..." -> "digit=3: ..."
        return error(400, re.sub(r"^--([a-z]+) ", r"\1=", str(exc)))

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        """What the page needs to draw its controls."""
        config = gen.config
        return {"name": name, "preset": config.name, "description": config.description,
                "conditional": bool(gen.classes), "classes": gen.classes,
                "noise": config.noise.dist, "noises": list(DISTRIBUTIONS),
                "latent_dim": config.noise.dim, "max_count": MAX_COUNT, "max_steps": MAX_STEPS}

    @app.get("/api/grid.png", response_class=Response,
             responses={200: {"content": {"image/png": {}}}})
    async def grid(n: Count = 64, seed: Seed = 0, noise: Noise | None = None, digit: Digit = None,
                   by_class: bool = False, scale: Scale = 2) -> Response:
        """`n` digits tiled into a square PNG grid; with `by_class`, `n` of each digit, one
        row per digit."""
        if by_class:
            if not gen.classes:
                raise UserError("by_class=true needs a class-conditional generator (this one was "
                                "trained without labels): train one with --preset best")
            if digit is not None:
                raise UserError("by_class=true shows every digit: leave out digit")
            if n * len(gen.classes) > MAX_COUNT:
                raise UserError(f"n={n} with by_class=true makes {n * len(gen.classes)} images: "
                                f"ask for at most {MAX_COUNT // len(gen.classes)} of each digit")

        def work() -> bytes:
            if by_class:
                return encode_grid(gen.sample_by_class(n, seed=seed, noise=noise), nrow=n, scale=scale)
            return encode_grid(gen.sample(n, seed=seed, noise=noise, digit=digit), scale=scale)

        return Response(await on_worker(work), media_type="image/png")

    @app.get("/api/samples")
    async def samples(n: Count = 16, seed: Seed = 0, noise: Noise | None = None,
                      digit: Digit = None) -> dict[str, Any]:
        """`n` digits as nested lists of 0-255 pixel values, (n, 28, 28)."""
        def work() -> dict[str, Any]:
            labels = gen.labels(n, digit, seed)
            return {"seed": seed, "noise": noise or gen.config.noise.dist,
                    "labels": None if labels is None else labels.tolist(),
                    "images": gen.sample(n, seed=seed, noise=noise, digit=digit).tolist()}

        return await on_worker(work)

    @app.get("/api/interpolation.gif", response_class=Response,
             responses={200: {"content": {"image/gif": {}}}})
    async def interpolation(seed_a: Seed = 0, seed_b: Seed = 1,
                            steps: Annotated[int, Query(ge=2, le=MAX_STEPS)] = 24,
                            noise: Noise | None = None, digit: Digit = None,
                            scale: Scale = 4) -> Response:
        """A looping GIF walking from seed_a's first digit to seed_b's and back."""
        def work() -> bytes:
            frames = gen.interpolation(seed_a, seed_b, steps, noise=noise, digit=digit)
            there_and_back = np.concatenate([frames, frames[-2:0:-1]])
            scaled = there_and_back.repeat(scale, axis=1).repeat(scale, axis=2)
            return encode_gif(list(scaled), duration_ms=60, hold_last=False)

        return Response(await on_worker(work), media_type="image/gif")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def serve(source: str | Path | TrainedGenerator, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Load the generator (unless given one), bind host:port, and answer until Ctrl-C."""
    app = create_app(source)
    shown_source = source.source if isinstance(source, TrainedGenerator) else source
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # before the address is printed: from then on, connections queue
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}): "
                        "choose another with --port, or stop what holds it") from None
    port = sock.getsockname()[1]
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"mnistgan: note: listening on {host}, reachable from other machines", file=sys.stderr)
    shown = "localhost" if host in ("127.0.0.1", "::1") else f"[{host}]" if ":" in host else host
    print(f"mnistgan: serving {shown_source} at http://{shown}:{port}/ (Ctrl-C stops)",
          file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="warning", limit_concurrency=MAX_CONNECTIONS,
                            h11_max_incomplete_event_size=16 * 1024)
    # uvicorn re-raises Ctrl-C once it has shut down cleanly: that is the normal way to stop.
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run(sockets=[sock])
    print("mnistgan: stopped", file=sys.stderr)
