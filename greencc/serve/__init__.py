"""Serving compiled models over HTTP with energy and carbon watched per request.

``greencc serve ARTIFACT…`` holds one or several compiled variants of a model
(:mod:`~greencc.serve.variants`), checks each JSON payload against the signature
(:mod:`~greencc.serve.payload`), micro-batches requests under a latency target
(:mod:`~greencc.serve.batching`) inside energy windows, lets a policy pick the variant by
grid carbon intensity, an hourly energy budget or a power cap
(:mod:`~greencc.serve.policy`, :mod:`~greencc.serve.signals`), and exports Prometheus
metrics (:mod:`~greencc.serve.metrics`). :mod:`~greencc.serve.app` is the ASGI app,
:mod:`~greencc.serve.engines` runs it (uvicorn on one machine, Ray Serve to scale out) and
:mod:`~greencc.serve.advise` finds the energy-optimal threads and batch size.
FastAPI, uvicorn, prometheus-client and Ray are the ``serve`` extra, imported here only.
"""
