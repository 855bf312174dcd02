"""schemas/asyncapi.yaml: valid AsyncAPI 3.0, and the very topics, keys and schemas
of the code.

The official AsyncAPI 3.0.0 JSON Schema comes from the npm package
``@asyncapi/specs`` (``make deps`` installs it into build/npm; nothing is fetched
at run time). The topics come from ``streams/topics.py``: a topic added there
must be described here, or this test fails.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft7Validator
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from schemas import decode
from streams import topics as T
from streams.topics import TOPIC_OF_KIND

REPO = Path(__file__).resolve().parents[1]
DOC_PATH = REPO / "schemas" / "asyncapi.yaml"
SCHEMA_DIR = REPO / "schemas" / "json"
SPECS = Path(os.environ.get("LAPSTREAM_ASYNCAPI_SPECS", "")
             or REPO / "build" / "npm" / "node_modules" / "@asyncapi" / "specs")
RAW_KINDS = set(decode.RAW_KINDS) - {"record_ref"}     # on timing.raw; record_ref has a topic of its own


@pytest.fixture(scope="module")
def doc() -> dict:
    return yaml.safe_load(DOC_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def official() -> Draft7Validator:
    path = SPECS / "schemas" / "3.0.0.json"
    assert path.is_file(), (f"the official AsyncAPI 3.0.0 JSON Schema is not at {path}: "
                            "run 'make deps' (npm install --prefix build/npm @asyncapi/specs)")
    meta = json.loads(path.read_text(encoding="utf-8"))
    # the bundle holds every definition under its $id: resolve them there, offline
    registry = Registry().with_resources(
        (uri, Resource.from_contents(sub, default_specification=DRAFT7))
        for uri, sub in meta["definitions"].items())
    return Draft7Validator(meta, registry=registry)


def deref(doc: dict, node: dict) -> dict:
    """Follow a local $ref ('#/components/...') to what it names."""
    while "$ref" in node and node["$ref"].startswith("#/"):
        target = doc
        for part in node["$ref"][2:].split("/"):
            target = target[part]
        node = target
    return node


def channel_messages(doc: dict, channel: dict) -> dict[str, dict]:
    return {name: deref(doc, m) for name, m in channel["messages"].items()}


def schema_files(node) -> set[str]:
    """Every file a $ref names (relative to asyncapi.yaml), anywhere in the document."""
    out = set()
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and not v.startswith("#"):
                out.add(v)
            else:
                out |= schema_files(v)
    elif isinstance(node, list):
        for v in node:
            out |= schema_files(v)
    return out


def test_the_document_is_valid_asyncapi_3(doc, official):
    error = best_match(official.iter_errors(doc))
    assert error is None, f"{error.json_path}: {error.message}"
    assert doc["asyncapi"] == "3.0.0"


def test_the_official_schema_rejects_a_broken_document(doc, official):
    # the validator is not a pushover: a channel with a bad binding, an operation
    # without its action, an unknown top-level field
    broken = json.loads(json.dumps(doc))
    broken["channels"]["raw"]["bindings"]["kafka"]["partitions"] = 0
    assert not official.is_valid(broken)
    broken = json.loads(json.dumps(doc))
    del broken["operations"]["receiveRaw"]["action"]
    assert not official.is_valid(broken)
    assert not official.is_valid(dict(doc, topics=[]))


def test_the_channels_are_exactly_the_topics_of_the_code(doc):
    channels = doc["channels"].values()
    assert sorted(c["address"] for c in channels) == sorted(t.name for t in T.ALL)
    for c in channels:
        spec = next(t for t in T.ALL if t.name == c["address"])
        kafka = c["bindings"]["kafka"]
        assert kafka["topic"] == spec.name
        assert kafka["partitions"] == spec.partitions, spec.name
        policy = kafka["topicConfiguration"]["cleanup.policy"]
        assert policy == (["compact"] if spec.compacted else ["delete"]), spec.name
        for name, value in spec.configs:
            assert str(kafka["topicConfiguration"][name]) == value, (spec.name, name)


def test_every_kind_is_on_its_topic_with_its_schema(doc):
    by_topic = {c["address"]: channel_messages(doc, c) for c in doc["channels"].values()}
    want = {T.RAW.name: RAW_KINDS, T.RECORDS_REF.name: {"record_ref"},
            T.DEADLETTER.name: {"deadletter"}, T.SNAPSHOTS.name: {"snapshot"}}
    for kind, topic in TOPIC_OF_KIND.items():
        want.setdefault(topic, set()).add(kind)
    assert {topic: {m["name"] for m in msgs.values()} for topic, msgs in by_topic.items()} == want
    for topic, msgs in by_topic.items():
        for m in msgs.values():
            assert "key" in m["bindings"]["kafka"], (topic, m["name"])
            if topic in (T.DEADLETTER.name, T.SNAPSHOTS.name):
                continue      # (bytes: the original record / the workers' own format)
            assert m["payload"]["schemaFormat"] == "application/schema+json;version=draft-2020-12"
            assert m["payload"]["schema"] == {"$ref": f"./json/{m['name']}.schema.json"}


def test_it_names_exactly_the_schemas_of_schemas_json(doc):
    files = schema_files(doc)
    assert files == {f"./json/{p.name}" for p in SCHEMA_DIR.glob("*.schema.json")}
    for ref in files:
        assert (DOC_PATH.parent / ref).is_file(), ref


def headers_the_worker_writes() -> dict[str, set[str]]:
    """topic -> header names, as the live adapter (agents/live.py) sends them for the
    Beijing 2022 final A (a fall, an Olympic record) with a bad line in it (in memory,
    no broker)."""
    import asyncio

    from agents.live import LiveAdapter
    from streams import beijing

    lines = (beijing.FEEDS_DIR / beijing.FINAL_A_FILE).read_bytes().splitlines()
    refs = [ln for ln in lines if b'"record_ref"' in ln]
    raw = [ln for ln in lines if b'"record_ref"' not in ln]
    raw.insert(3, b'{"kind":"passing","v":1,"seq":"x"}')
    sent: dict[str, set[str]] = {}

    async def send(topic, key, value, headers):
        sent.setdefault(topic, set()).update(name for name, _ in headers or ())

    async def go():
        adapter = LiveAdapter(send)
        for ref in refs:
            adapter.on_ref(ref)
        for offset, value in enumerate(raw):
            await adapter.on_raw(0, offset, b"NSO", value)

    asyncio.run(go())
    return sent


def test_headers_are_the_ones_the_worker_writes(doc):
    sent = headers_the_worker_writes()
    # (timing.snapshots: the worker's own, written by a timer of streams/app.py, not per record)
    assert set(sent) == {t.name for t in T.ALL} - {T.RAW.name, T.SNAPSHOTS.name}, "every output topic was written"
    schemas = doc["components"]["schemas"]
    for c in doc["channels"].values():
        topic = c["address"]
        for m in channel_messages(doc, c).values():
            described = set(deref(doc, m["headers"])["properties"]) if "headers" in m else set()
            assert described == sent.get(topic, set()), (topic, m["name"])
    assert set(schemas["derivedHeaders"]["properties"]) == {"lapstream-source"}
    assert set(schemas["deadletterHeaders"]["required"]) == sent[T.DEADLETTER.name]


def test_the_servers_are_production_kafka_and_the_embedded_broker(doc):
    servers = doc["servers"]
    assert set(servers) == {"production", "embedded"}
    assert all(s["protocol"] == "kafka" for s in servers.values())
    assert servers["embedded"]["host"].startswith("127.0.0.1:")
    k8s = (REPO / "deploy" / "k8s" / "lapstream.yaml").read_text(encoding="utf-8")
    assert servers["production"]["host"] in k8s
