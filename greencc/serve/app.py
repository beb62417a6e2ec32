"""The HTTP API of a service, as an ASGI app (FastAPI):

- ``POST /v1/infer`` ``{"inputs": {name: nested list}, "variant"?}`` -> outputs, variant,
  latency_ms, energy_j, g_co2e and the energy label;
- ``POST /v1/generate`` ``{"input_ids": [...], "max_new_tokens", "stream"?}`` (decoders) ->
  tokens, J/token; with ``stream`` one JSON line per token (``application/x-ndjson``);
- ``GET /v1/models`` the variants, policy and carbon factors; ``GET /v1/switches`` the
  switch trace; ``GET /healthz`` liveness; ``GET /readyz`` readiness (503 while starting or
  draining); ``GET /metrics`` Prometheus.

Bad payloads get a 4xx JSON ``{"error": message, "hint": ...}``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from greencc.errors import GreenccError
from greencc.serve.metrics import CONTENT_TYPE
from greencc.serve.payload import PayloadError, parse_json
from greencc.serve.service import Service


def build_app(service: Service) -> FastAPI:
    """The ASGI app serving ``service``; its lifespan starts and drains the service."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="greencc serve", lifespan=lifespan)

    def refuse(exc: GreenccError, variant: str = "") -> JSONResponse:
        status = exc.status if isinstance(exc, PayloadError) else (503 if not service.ready else 422)
        service.metrics.reject(variant, status)
        return JSONResponse({"error": exc.message, "hint": exc.hint}, status_code=status)

    async def payload(request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > service.options.limits.max_body_bytes:
            raise PayloadError(413, f"request body of {declared} bytes exceeds the limit of "
                               f"{service.options.limits.max_body_bytes} bytes", hint="send fewer rows per request")
        return parse_json(await request.body(), service.options.limits)

    @app.post("/v1/infer")
    async def infer(request: Request) -> Response:
        try:
            return JSONResponse(await service.infer(await payload(request)))
        except GreenccError as exc:
            return refuse(exc)

    @app.post("/v1/generate")
    async def generate(request: Request) -> Response:
        try:
            data = await payload(request)
            events = service.generate(data)
            first = await events.__anext__()  # validation errors surface before streaming starts
        except GreenccError as exc:
            return refuse(exc)
        if data.get("stream"):
            async def lines() -> AsyncIterator[bytes]:
                yield (json.dumps(first) + "\n").encode()
                async for event in events:
                    yield (json.dumps(event) + "\n").encode()

            return StreamingResponse(lines(), media_type="application/x-ndjson")
        tokens = [first["token"]] if "token" in first else []
        final = first
        async for event in events:
            if "token" in event:
                tokens.append(event["token"])
            final = event
        return JSONResponse({**final, "new_tokens": tokens})

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return service.describe()

    @app.get("/v1/switches")
    async def switches() -> list[dict[str, Any]]:
        return [s.to_dict() for s in service.switches]

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        if not service.ready:
            return JSONResponse({"status": "not ready"}, status_code=503)
        return JSONResponse({"status": "ready", "variant": service.current})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    return app


__all__ = ["build_app"]
