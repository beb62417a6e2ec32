"""Running a service: ``local`` (the default: uvicorn in this process, one command on one
machine, up in about a second) or ``ray`` (Ray Serve: the same app in each of
``replicas`` replicas across a Ray cluster, behind Ray's HTTP proxy).

Both drain on SIGTERM/SIGINT: the listener closes, requests in flight finish, queued
batches run, then the process exits. Ray Serve took 10 s to start and 4 s to stop on
this 2-core machine (``ray.init`` + ``serve.run`` of a one-route app), which is why the
single-machine default is uvicorn; with Ray, each replica keeps its own ``/metrics``.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import asdict
from typing import Any

import uvicorn

from greencc.errors import UsageError
from greencc.serve.app import build_app
from greencc.serve.payload import Limits
from greencc.serve.service import Service, ServiceOptions
from greencc.serve.variants import load_variants

ENGINES = ("local", "ray")
# Seconds in-flight requests get to finish after SIGTERM before connections are closed.
GRACEFUL_SHUTDOWN_S = 30


def uvicorn_server(service: Service, host: str = "127.0.0.1", port: int = 8000) -> Any:
    """A ``uvicorn.Server`` for ``service`` (``.run()`` blocks, handles SIGTERM/SIGINT)."""
    config = uvicorn.Config(build_app(service), host=host, port=port, log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, access_log=False)
    return uvicorn.Server(config)


def run_local(service: Service, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until SIGTERM/SIGINT, then drain; returns after a SIGTERM drain (Ctrl-C raises
    ``KeyboardInterrupt`` after its drain)."""
    # uvicorn re-raises the signal it drained on under the handler found at start: a no-op
    # for SIGTERM makes a drained service exit 0 instead of dying of the signal.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn_server(service, host, port).run()
    finally:
        signal.signal(signal.SIGTERM, previous)


class BackgroundServer:
    """A local service on a thread of this process (tests, benchmarks): ``start()`` waits
    until it is ready; ``stop()`` drains it like SIGTERM would."""

    def __init__(self, service: Service, host: str = "127.0.0.1", port: int = 0) -> None:
        self.service = service
        self._server = uvicorn_server(service, host, port)
        self._thread = threading.Thread(target=self._server.run, name="greencc-serve", daemon=True)

    @property
    def url(self) -> str:
        """``http://host:port`` it listens on."""
        sockets = [s for server in self._server.servers for s in server.sockets]
        host, port = sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def start(self, timeout_s: float = 30.0) -> BackgroundServer:
        """Start and wait for readiness."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not (self._server.started and self.service.ready):
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise UsageError("the service did not start", hint="see its log")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Drain and stop."""
        self._server.should_exit = True
        self._thread.join(GRACEFUL_SHUTDOWN_S + 5)


def run_ray(specs: list[str], options: ServiceOptions, *, threads: int | None = None, host: str = "127.0.0.1",
            port: int = 8000, replicas: int = 1, block: bool = True) -> Any:
    """Deploy the service with Ray Serve (``replicas`` copies, each loading the artifacts),
    on the Ray cluster ``ray.init`` finds (a local one by default). With ``block``, serves
    until SIGTERM or Ctrl-C, then shuts Serve down, draining the replicas; returns the
    deployment handle."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise UsageError("the ray engine needs Ray Serve", hint="pip install 'greencc[serve]'") from None
    options_dict = asdict(options)

    @serve.ingress()
    class GreenccService:
        def __init__(self, specs: list[str], options: dict[str, Any], threads: int | None) -> None:
            limits = Limits(**options.pop("limits"))
            self.service = Service(load_variants(specs, threads), ServiceOptions(**options, limits=limits))

        def __serve_build_asgi_app__(self) -> Any:
            return build_app(self.service)

    deployment = serve.deployment(GreenccService, name="greencc", num_replicas=replicas,
                                  graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_S)
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    if not block:
        serve.start(http_options={"host": host, "port": port})
        return serve.run(deployment.bind(specs, options_dict, threads), name="greencc", route_prefix="/")
    # After ray.init, which installs its own SIGTERM handler: a SIGTERM while deploying or
    # serving ends the wait below and drains.
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        handle = serve.run(deployment.bind(specs, options_dict, threads), name="greencc", route_prefix="/")
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        serve.shutdown()  # replicas finish their requests within GRACEFUL_SHUTDOWN_S
    return handle


__all__ = ["BackgroundServer", "ENGINES", "run_local", "run_ray", "uvicorn_server"]
