"""`gsv serve`: an HTTP service that embeds and classifies splats, and its client (`gsv send`).

An application over the library (the library never imports it):

  settings.py  ServeSettings: the limits, the batching window, the token, the device
  errors.py    ServeError: a refused request as (status, reason, message) -> a JSON 4xx answer
  payloads.py  the request body (one or several concatenated .gsv files) -> checked Splats per image
  labels.py    named label sets (clip_benchmark's datasets, the demo's world tasks) and custom labels
  engine.py    the model on its device: embeddings of mixed images, cached zero-shot classifiers
  batcher.py   requests arriving together gathered into one forward, run on one worker thread
  metrics.py   counters, batch sizes and latency percentiles for GET /metrics
  app.py       the Starlette application: /embed, /classify, /health, /metrics
  server.py    loading the model (eval.models) and running uvicorn (one or several workers)
  client.py    send(): the one-function Python client (standard library only)
"""
