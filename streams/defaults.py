"""Defaults of the worker's settings, in one place (``streams.app.Settings``,
the ``lapstream`` command and the demo read them from here). Light on purpose:
the command line imports it without importing Faust."""
from __future__ import annotations

HTTP_HOST = "127.0.0.1"      # LAPSTREAM_HTTP_HOST, --http-host: loopback unless told otherwise
HTTP_PORT = 9300             # LAPSTREAM_HTTP_PORT, --http-port: /metrics /healthz /readyz
WORKER_ID = "lapstream-1"    # LAPSTREAM_WORKER_ID, --worker-id
BOOTSTRAP = "127.0.0.1:9092"  # LAPSTREAM_BROKER, --broker (as kafka://127.0.0.1:9092)
