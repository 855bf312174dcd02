"""Dead letters: the two shapes a dead letter takes outside the worker's core.

* ``deadletter_record(key, value, headers, limit)``: the Kafka record the
  live worker produces to ``timing.deadletter`` for a record it cannot
  apply: the original key and bytes, or, when they would not fit the
  producer's limit, their first bytes with ``truncated: true`` and
  ``original-size`` / ``original-key-size`` headers. A record without a
  value gets an empty one and ``null-value: true``.
* ``recorded_deadletter(value, headers, key)``: a consumed dead letter as
  the JSON line ``lapstream record`` writes (the "recorded" shape of
  ``schemas/json/deadletter.schema.json``).

One module, so that the worker (``agents/live.py``) and replay/record
(``streams/replay.py``) share one meaning of each (there used to be two
functions named ``deadletter_record`` with different signatures).
"""
from __future__ import annotations

import base64
from typing import Optional

MAX_RECORD_BYTES = 1_000_000        # the producer's default max.request.size, about
DEADLETTER_KEY_MAX = 1024           # a dead letter's key is cut beyond this
RECORD_OVERHEAD = 512               # batch and record framing, generously


def record_size(key: bytes | None, value: bytes | None, headers) -> int:
    """An upper bound of a record's size as a producer counts it."""
    n = RECORD_OVERHEAD + (len(key) if key else 0) + (len(value) if value else 0)
    for h, v in headers or ():
        n += len(h) + len(v) + 10
    return n


def deadletter_record(key: bytes | None, value: bytes | None, headers: list,
                      limit: int = MAX_RECORD_BYTES) -> tuple:
    """(key, value, headers) of a dead letter that fits the producer: the
    original bytes, or their first bytes with ``truncated: true`` and
    ``original-size`` (and ``original-key-size``) headers."""
    headers = list(headers)
    if value is None:    # a record without a value: a dead letter always has one
        headers.append(("null-value", b"true"))
        value = b""
    if key is not None and len(key) > DEADLETTER_KEY_MAX:
        headers.append(("original-key-size", str(len(key)).encode()))
        key = key[:DEADLETTER_KEY_MAX]
    if record_size(key, value, headers) > limit:
        headers.append(("truncated", b"true"))
        headers.append(("original-size", str(len(value)).encode()))
        value = value[:max(0, limit - record_size(key, b"", headers))]
    return key, value, headers


def recorded_deadletter(value: Optional[bytes], headers, key: bytes | None = None) -> dict:
    """A record of ``timing.deadletter`` as the JSON line ``record`` writes (the
    "recorded" shape of ``schemas/json/deadletter.schema.json``): the reason and
    the source coordinates from the headers, the record's bytes exactly
    (``raw_b64``) and, for reading, as text (``raw``).

    What the worker's headers say of the bad record is kept as fields, so that
    the line never passes a cut or an empty value off as the original:

    * a null value (a tombstone on the topic, or a worker's ``null-value: true``
      header: the bad record had none) -> an empty ``raw`` and
      ``"null_value": true``;
    * ``truncated: true`` (the value was cut to the producer's size limit) ->
      ``"truncated": true``: ``raw_b64`` holds the first bytes only, and
      ``original_size`` (from ``original-size``) the size before the cut;
    * ``original-key-size`` (the key was cut) -> ``original_key_size``.
    """
    h = {k: (v.decode("utf-8", "replace") if isinstance(v, (bytes, bytearray)) else v) for k, v in (headers or ())}
    null = value is None or _flag(h.get("null-value"))
    error = " ".join(str(h.get("error") or "").split()) or (
        "null value" if null else "no error header on the dead-letter record")
    extra: dict = {}
    if null:
        extra["null_value"] = True
    if _flag(h.get("truncated")):
        extra["truncated"] = True
    for header, name in (("original-size", "original_size"), ("original-key-size", "original_key_size")):
        n = _int(h.get(header))
        if n is not None:
            extra[name] = n
    value = value or b""
    return {"kind": "deadletter", "v": 1, "error": error, **extra,
            "raw": value.decode("utf-8", "backslashreplace"),
            "raw_b64": base64.b64encode(value).decode("ascii"),
            "source_topic": h.get("source-topic") or None,
            "source_partition": _int(h.get("source-partition")),
            "source_offset": _int(h.get("source-offset")),
            "key": key.decode("utf-8", "backslashreplace") if key is not None else None}


def _flag(x) -> bool:
    """A header that says ``true`` (any case, spaces around)."""
    return isinstance(x, str) and x.strip().lower() == "true"


def _int(x):
    try:
        n = int(x)
    except (TypeError, ValueError):
        return None
    return n if n >= 0 else None
