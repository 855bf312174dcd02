"""Static checks of everything under deploy/.

No Docker engine or Kubernetes cluster is needed: the files are parsed and
cross-checked against the code they describe (the metric catalogue in
streams/metrics.py, the topic catalogue in streams/topics.py), and the
Prometheus files go through promtool (`check config`, `check rules`,
`test rules`). promtool is required: CI installs it (Debian package
`prometheus`); a missing promtool fails, it is not skipped.
"""
from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from streams import metrics, topics  # noqa: E402

DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
PROM_DIR = DEPLOY / "prometheus"
DASHBOARD_FILE = DEPLOY / "grafana" / "dashboards" / "lapstream.json"
GRAFANA_DS_FILE = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_DASH_PROVIDER = DEPLOY / "grafana" / "provisioning" / "dashboards" / "lapstream.yml"
K8S_DIR = DEPLOY / "k8s"
HTTP_PORT = 9300
GATEWAY_PORT = 8000   # lapstream serve in the deploy files (LAPSTREAM_GATEWAY_PORT)

# Series the rules and dashboard may use besides the catalogue.
ALLOWED_BUILTINS = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "ALERTS",
                    "ALERTS_FOR_STATE"}
# The worker's catalogue and the gateway's (lapstream serve): one Prometheus
# and one dashboard watch both.
ALL_SPECS = tuple(metrics.CATALOGUE) + tuple(metrics.GATEWAY_CATALOGUE)
CATALOGUE_NAMES = metrics.all_exposed_names(ALL_SPECS)
KNOWN_NAMES = CATALOGUE_NAMES | ALLOWED_BUILTINS
# Labels Prometheus adds to every scraped series, plus the histogram bucket label.
TARGET_LABELS = {"job", "instance"}


# ----------------------------------------------------------------- helpers
def load_yaml_docs(path: Path) -> list:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def load_yaml(path: Path):
    docs = load_yaml_docs(path)
    assert len(docs) == 1, f"{path}: expected one YAML document, got {len(docs)}"
    return docs[0]


def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def compose() -> dict:
    return load_yaml(COMPOSE_FILE)


def spec_of(sample_name: str) -> metrics.MetricSpec | None:
    for spec in ALL_SPECS:
        if sample_name in metrics.exposed_names(spec):
            return spec
    return None


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"(?<![\w.:$])([A-Za-z_:][\w:]*)")
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
             "group_right", "bool", "offset", "inf", "nan", "atan2"}
_LABEL_VALUES = re.compile(r"label_values\(\s*([^,)]+?)\s*(?:,\s*(\w+)\s*)?\)")


def promql_series_names(expr: str) -> set[str]:
    """Metric names an expression selects (functions, keywords, labels removed).

    Understands Grafana's ``label_values(metric, label)`` variable query too.
    """
    expr = _LABEL_VALUES.sub(lambda m: m.group(1), expr)
    expr = _STRING.sub('""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = _GROUPING.sub(" ", expr)
    names = set()
    for m in _IDENT.finditer(expr):
        name = m.group(1)
        if name in _KEYWORDS or re.match(r"\s*\(", expr[m.end():]):
            continue  # keyword or function call
        names.add(name)
    return names


def lapstream_identifiers(expr: str) -> set[str]:
    return set(re.findall(r"(?<![\w.])lapstream_\w+", expr))


def check_expression(expr: str, where: str) -> list[str]:
    """Problems with one PromQL expression: unknown metrics or labels."""
    problems = []
    for name in sorted(lapstream_identifiers(expr) - CATALOGUE_NAMES):
        problems.append(f"{where}: {name} is not in streams/metrics.py ({expr!r})")
    for name in sorted(promql_series_names(expr) - KNOWN_NAMES):
        problems.append(f"{where}: unknown series {name} ({expr!r})")
    used = [spec_of(n) for n in lapstream_identifiers(expr)]
    allowed = set(TARGET_LABELS)
    has_info = False
    for spec in used:
        if spec is None:
            continue
        allowed.update(spec.labels)
        if spec.type == "histogram":
            allowed.add("le")
        has_info |= spec.type == "info"
    # Labels in selectors: metric{label="..."}
    for m in re.finditer(r"(lapstream_\w+)\s*\{([^}]*)\}", expr):
        spec = spec_of(m.group(1))
        if spec is None or spec.type == "info":
            continue
        own = set(spec.labels) | TARGET_LABELS | ({"le"} if spec.type == "histogram" else set())
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", m.group(2)):
            if label not in own:
                problems.append(f"{where}: {m.group(1)} has no label {label!r} ({expr!r})")
    # Labels in by (...), on (...), ... clauses.
    if used and not has_info:
        for m in _GROUPING.finditer(_STRING.sub('""', expr)):
            for label in filter(None, (s.strip() for s in m.group(1).split(","))):
                if label not in allowed:
                    problems.append(f"{where}: label {label!r} not on the metrics used ({expr!r})")
    return problems


def dashboard_expressions(dash: dict) -> list[tuple[str, str]]:
    """(where, expression) for every query in the dashboard."""
    out: list[tuple[str, str]] = []

    def walk(node, where):
        if isinstance(node, dict):
            for key, value in node.items():
                here = f"{where}.{key}"
                if key == "expr" and isinstance(value, str):
                    out.append((here, value))
                elif key in ("definition", "query") and isinstance(value, str) and where.startswith(
                        "templating"):
                    out.append((here, value))
                else:
                    walk(value, here)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    for section in ("panels", "annotations", "templating"):
        walk(dash.get(section), section)
    return out


def alert_rules() -> list[dict]:
    doc = load_yaml(PROM_DIR / "alerts.yml")
    return [rule for group in doc["groups"] for rule in group["rules"]]


# --------------------------------------------------------- parse everything
def test_every_yaml_and_json_file_under_deploy_parses():
    yamls = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))
    jsons = sorted(DEPLOY.rglob("*.json"))
    names = {p.relative_to(DEPLOY).as_posix() for p in yamls + jsons}
    expected = {
        "docker-compose.yml", "prometheus/prometheus.yml", "prometheus/alerts.yml",
        "prometheus/alerts_test.yml", "grafana/provisioning/datasources/prometheus.yml",
        "grafana/provisioning/dashboards/lapstream.yml", "grafana/dashboards/lapstream.json",
        "k8s/lapstream.yaml", "k8s/kustomization.yaml",
    }
    assert expected <= names, f"missing: {sorted(expected - names)}"
    for path in yamls:
        docs = load_yaml_docs(path)
        assert docs, f"{path} is empty"
        assert all(isinstance(d, dict) for d in docs), f"{path}: every document must be a mapping"
    for path in jsons:
        assert isinstance(json.loads(path.read_text()), dict), path


# ------------------------------------------------------------- metric names
def test_dashboard_uses_only_catalogue_metrics():
    dash = json.loads(DASHBOARD_FILE.read_text())
    exprs = dashboard_expressions(dash)
    assert len(exprs) >= 20, "expected the dashboard's queries to be found"
    problems = [p for where, expr in exprs for p in check_expression(expr, where)]
    assert not problems, "\n".join(problems)


def test_dashboard_shows_every_catalogue_metric():
    dash = json.loads(DASHBOARD_FILE.read_text())
    used = set()
    for _, expr in dashboard_expressions(dash):
        used |= lapstream_identifiers(expr)
    for spec in ALL_SPECS:
        assert used & set(metrics.exposed_names(spec)), f"{spec.name} is not on the dashboard"
    assert metrics.GATEWAY_CATALOGUE and set(ALL_SPECS) >= set(metrics.GATEWAY_CATALOGUE)


def test_alert_rules_use_only_catalogue_metrics():
    problems = []
    for rule in alert_rules():
        problems += check_expression(rule["expr"], rule.get("alert") or rule.get("record"))
    assert not problems, "\n".join(problems)


def test_alert_unit_tests_use_only_catalogue_metrics():
    doc = load_yaml(PROM_DIR / "alerts_test.yml")
    problems = []
    for case in doc["tests"]:
        for series in case.get("input_series", []):
            name = series["series"].split("{", 1)[0].strip()
            if name not in KNOWN_NAMES:
                problems.append(f"{case['name']}: input series {name} not in the catalogue")
            problems += check_expression(series["series"], case["name"])
        for t in case.get("promql_expr_test", []):
            problems += check_expression(t["expr"], case["name"])
    assert not problems, "\n".join(problems)


def test_metric_name_check_catches_typos():
    assert check_expression("rate(lapstream_raw_message_total[5m])", "x")
    assert check_expression('sum by (venu) (lapstream_event_time_lag_seconds)', "x")
    assert check_expression('lapstream_incidents_total{typ="fall"}', "x")
    assert check_expression("rate(process_cpu_seconds_total[1m])", "x")
    assert not check_expression(
        'histogram_quantile(0.99, sum by (instance, le) '
        '(rate(lapstream_processing_latency_seconds_bucket{job="lapstream"}[$__rate_interval])))', "x")
    assert not check_expression("label_values(lapstream_event_time_lag_seconds, venue)", "x")
    # the gateway's catalogue counts; its metrics have their own labels
    assert not check_expression(
        'histogram_quantile(0.99, sum by (instance, le) '
        '(rate(lapstream_gateway_fanout_latency_seconds_bucket[5m])))', "x")
    assert check_expression('sum by (venue) (lapstream_gateway_clients)', "x")
    assert check_expression('lapstream_gateway_slow_clients_dropped_total{transprt="sse"}', "x")
    assert check_expression("rate(lapstream_gateway_events_fanout_total[1m])", "x")


# ------------------------------------------------------------------ alerts
EXPECTED_ALERTS = {
    "LapstreamWorkerDown", "LapstreamConsumerLagGrowing", "LapstreamLatencyP99OverBudget",
    "LapstreamDeadLettersHigh", "LapstreamDecoderSilent", "LapstreamWorkerNotReady",
    "LapstreamDecoderUnheardSinceTakeover",
    "LapstreamGatewayDown", "LapstreamGatewaysAllDown", "LapstreamGatewayNotReady",
    "LapstreamGatewaySlowClientDrops", "LapstreamGatewayFanoutP99High",
    "LapstreamStaleFeedRefused", "LapstreamClockLeapRefused",
    "LapstreamIngestDown", "LapstreamP3DecoderDisconnected",
    "LapstreamKafkaBrokerMissing", "LapstreamIngestProduceErrors",
}
INGEST_ALERTS = ("LapstreamIngestDown", "LapstreamP3DecoderDisconnected", "LapstreamIngestProduceErrors")


def test_alert_rules_are_complete():
    rules = {r["alert"]: r for r in alert_rules() if "alert" in r}
    assert EXPECTED_ALERTS <= set(rules), f"missing: {EXPECTED_ALERTS - set(rules)}"
    for name, rule in rules.items():
        assert rule.get("for"), f"{name} has no 'for:'"
        assert rule.get("labels", {}).get("severity") in ("critical", "warning", "info"), name
        assert rule.get("annotations", {}).get("summary"), f"{name} has no summary"
        assert rule.get("annotations", {}).get("description"), f"{name} has no description"
    assert 'job="lapstream"' in rules["LapstreamWorkerDown"]["expr"]
    assert "0.025" in rules["LapstreamLatencyP99OverBudget"]["expr"]
    # Silence by the worker's clock, not the feed's: replays of old feeds must not page.
    silent = rules["LapstreamDecoderSilent"]["expr"]
    assert "lapstream_active_races" in silent
    assert "lapstream_decoder_silence_seconds" in silent
    assert "lapstream_decoder_heartbeat_age_seconds" not in silent
    unheard = rules["LapstreamDecoderUnheardSinceTakeover"]["expr"]
    assert "unless on (job, instance, venue, source)" in unheard
    assert "lapstream_decoder_silence_seconds" in unheard and "lapstream_active_races" in unheard
    assert "deriv(" in rules["LapstreamConsumerLagGrowing"]["expr"]
    # The latency budget must be a bucket bound for the comparison to be exact.
    assert 0.025 in metrics.BY_NAME["lapstream_processing_latency_seconds"].buckets
    # Gateway alerts select the gateways' job, worker alerts never match a gateway.
    assert 'job="lapstream-gateway"' in rules["LapstreamGatewayDown"]["expr"]
    assert 'absent(up{job="lapstream-gateway"})' in rules["LapstreamGatewaysAllDown"]["expr"]
    assert "lapstream_gateway_ready == 0" in rules["LapstreamGatewayNotReady"]["expr"]
    assert "rate(lapstream_gateway_slow_clients_dropped_total" in rules["LapstreamGatewaySlowClientDrops"]["expr"]
    fanout = rules["LapstreamGatewayFanoutP99High"]["expr"]
    assert "lapstream_gateway_fanout_latency_seconds_bucket" in fanout and "> 0.05" in fanout
    assert 0.05 in metrics.BY_NAME["lapstream_gateway_fanout_latency_seconds"].buckets
    gateway_names = metrics.all_exposed_names(metrics.GATEWAY_CATALOGUE)
    p3_names = metrics.all_exposed_names(metrics.P3_CATALOGUE)
    for name, rule in rules.items():
        # P3 ingest's alerts: its metrics and job only, and no other alert reads them
        ingest = name in INGEST_ALERTS
        assert ingest == bool(lapstream_identifiers(rule["expr"]) & p3_names or "lapstream-ingest" in rule["expr"]), name
        if ingest:
            assert lapstream_identifiers(rule["expr"]) <= p3_names, name
            continue
        if name.startswith("LapstreamGateway"):
            assert lapstream_identifiers(rule["expr"]) <= gateway_names or "up{" in rule["expr"], name
        else:
            assert not lapstream_identifiers(rule["expr"]) & gateway_names, name
            assert "lapstream-gateway" not in rule["expr"], name


def test_alert_unit_tests_cover_firing_and_silence_for_every_alert():
    doc = load_yaml(PROM_DIR / "alerts_test.yml")
    fired, silent = set(), set()
    for case in doc["tests"]:
        for t in case.get("alert_rule_test", []):
            (fired if t.get("exp_alerts") else silent).add(t["alertname"])
    names = {r["alert"] for r in alert_rules() if "alert" in r}
    assert names <= fired, f"never shown firing: {names - fired}"
    assert names <= silent, f"never shown not firing: {names - silent}"


# ----------------------------------------------------------------- promtool
def promtool(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool not found on PATH: install it (Debian/Ubuntu: "
                    "apt-get install -y prometheus) to validate deploy/prometheus/")
    return subprocess.run([exe, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_promtool_check_rules():
    r = promtool("check", "rules", "deploy/prometheus/alerts.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_check_config():
    # rule_files in prometheus.yml resolve relative to the config file.
    r = promtool("check", "config", "deploy/prometheus/prometheus.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 1 rule files found" in r.stdout + r.stderr


def test_promtool_test_rules():
    r = promtool("test", "rules", "deploy/prometheus/alerts_test.yml")
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------- prometheus
def test_prometheus_scrapes_both_workers_and_loads_alerts():
    cfg = load_yaml(PROM_DIR / "prometheus.yml")
    assert cfg["rule_files"] == ["alerts.yml"]
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    job = jobs["lapstream"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    workers = {name for name in compose()["services"] if name.startswith("worker-")}
    assert targets == {f"{w}:{HTTP_PORT}" for w in workers}
    # the gateways: a job of their own (the worker alerts select job="lapstream")
    gw = jobs["lapstream-gateway"]
    assert gw.get("metrics_path", "/metrics") == "/metrics"
    gw_targets = {t for sc in gw["static_configs"] for t in sc["targets"]}
    gateways = {name for name, svc in compose()["services"].items() if svc.get("command") == ["serve"]}
    assert gateways and gw_targets == {f"{g}:{GATEWAY_PORT}" for g in gateways}


# ----------------------------------------------------------------- compose
KAFKA_NODES = ("kafka-1", "kafka-2", "kafka-3")


def kafka_env(svc: dict) -> dict:
    return {k: str(v) for k, v in svc["environment"].items()}


def listeners(value: str) -> dict[str, tuple[str, int]]:
    out = {}
    for item in value.split(","):
        name, rest = item.split("://", 1)
        host, port = rest.rsplit(":", 1)
        out[name] = (host, int(port))
    return out


def test_compose_services_and_pinned_images():
    services = compose()["services"]
    for name in (*KAFKA_NODES, "kafka-init", "worker-1", "worker-2", "gateway", "prometheus", "grafana"):
        assert name in services, f"service {name} missing"
    for name, svc in services.items():
        if "image" in svc:
            image = svc["image"]
            assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image}"
    assert all(services[n]["image"].startswith("apache/kafka:") for n in (*KAFKA_NODES, "kafka-init"))
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")


def test_compose_kafka_kraft_cluster():
    services = compose()["services"]
    envs = {n: kafka_env(services[n]) for n in KAFKA_NODES}
    ids = {n: int(e["KAFKA_NODE_ID"]) for n, e in envs.items()}
    assert len(set(ids.values())) == 3
    voters_expected = {f"{ids[n]}@{n}:9093" for n in KAFKA_NODES}
    for name, env in envs.items():
        assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
        assert set(env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")) == voters_expected
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", env["CLUSTER_ID"]), "CLUSTER_ID: 16 bytes base64url"
        lst = listeners(env["KAFKA_LISTENERS"])
        adv = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
        proto = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
        controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
        inter = env["KAFKA_INTER_BROKER_LISTENER_NAME"]
        assert controller in lst and lst[controller][1] == 9093
        assert controller not in adv
        assert inter in lst and inter in adv and adv[inter] == (name, 9092)
        assert set(lst) == set(proto), "every listener needs a security protocol"
        assert set(adv) <= set(lst)
        for listener, (host, port) in adv.items():
            if host == "localhost":  # published to the host (loopback only) on the same port
                assert f"127.0.0.1:{port}:{port}" in services[name].get("ports", []), (name, listener)
            # every listener a client reaches is TLS + SASL
            assert proto[listener] == "SASL_SSL", (name, listener)
        assert env["KAFKA_SASL_MECHANISM_INTER_BROKER_PROTOCOL"] in env["KAFKA_SASL_ENABLED_MECHANISMS"].split(",")
        assert env["KAFKA_SSL_KEYSTORE_LOCATION"] == f"/run/secrets/{name}-keystore"
        assert f"{name}-keystore" in services[name]["secrets"]
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2"
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
        assert "healthcheck" in services[name]
    assert len({e["CLUSTER_ID"] for e in envs.values()}) == 1


def init_script() -> str:
    init = compose()["services"]["kafka-init"]
    command = init["command"]
    return command if isinstance(command, str) else "\n".join(command)


def parse_create(line: str) -> dict:
    args = shlex.split(line)
    out = {"configs": {}}
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--topic":
            out["name"] = args[i + 1]
        elif a == "--partitions":
            out["partitions"] = int(args[i + 1])
        elif a == "--replication-factor":
            out["replication"] = int(args[i + 1])
        elif a == "--config":
            key, value = args[i + 1].split("=", 1)
            out["configs"][key] = value
        i += 1
    return out


def test_compose_creates_exactly_the_topics_of_topics_py():
    creates = [parse_create(line) for line in init_script().splitlines()
               if "kafka-topics.sh" in line and "--create" in line]
    by_name = {c["name"]: c for c in creates}
    assert len(by_name) == len(creates), "a topic is created twice"
    assert set(by_name) == {t.name for t in topics.ALL}
    for spec in topics.ALL:
        c = by_name[spec.name]
        assert c["partitions"] == spec.partitions, spec.name
        assert c["replication"] == 3, spec.name
        assert c["configs"].get("min.insync.replicas") == "2", spec.name
        policy = c["configs"].get("cleanup.policy", "delete")
        assert policy == ("compact" if spec.compacted else "delete"), spec.name
        for key, value in spec.configs:
            assert c["configs"].get(key) == value, (spec.name, key)
    assert by_name["timing.raw"]["configs"]["retention.ms"] == str(7 * 24 * 3600 * 1000)
    assert by_name["timing.records.ref"]["configs"]["min.compaction.lag.ms"] == str(7 * 24 * 3600 * 1000)


def test_compose_topic_block_is_what_gen_topics_prints():
    gen = load_module("gen_topics", DEPLOY / "gen_topics.py")
    assert gen.compose_block(COMPOSE_FILE.read_text()) == gen.topic_commands()
    assert gen.main(["--check"]) == 0
    init = compose()["services"]["kafka-init"]
    for node in KAFKA_NODES:
        assert init["depends_on"][node]["condition"] == "service_healthy"
    for node in KAFKA_NODES:
        assert f"{node}:9092" in gen.BOOTSTRAP


def test_compose_workers():
    services = compose()["services"]
    workers = {n: s for n, s in services.items() if n.startswith("worker-")}
    assert len(workers) >= 2
    ids = set()
    for name, svc in workers.items():
        build = svc["build"]
        context = (DEPLOY / build["context"]).resolve()
        assert context == REPO
        assert (context / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
        assert svc["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
        env = {k: str(v) for k, v in svc["environment"].items()}
        assert env["LAPSTREAM_BROKER"] == "kafka://" + ",".join(f"{n}:9092" for n in KAFKA_NODES)
        assert env["LAPSTREAM_HTTP_HOST"] == "0.0.0.0"
        assert env["LAPSTREAM_HTTP_PORT"] == str(HTTP_PORT)
        ids.add(env["LAPSTREAM_WORKER_ID"])
        assert any(str(p).endswith(f":{HTTP_PORT}") for p in svc.get("ports", [])), name
    assert len(ids) == len(workers), "worker ids must differ"


def test_compose_gateway(monkeypatch):
    """lapstream serve from the workers' image, after the topics exist, bound to
    all interfaces inside its container and published on loopback only, its
    healthcheck on /readyz of its own port."""
    services = compose()["services"]
    gw = services["gateway"]
    worker = services["worker-1"]
    assert gw["build"] == worker["build"]
    assert gw["command"] == ["serve"]
    assert gw["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    env = {k: str(v) for k, v in gw["environment"].items()}
    assert env["LAPSTREAM_BROKER"] == "kafka://" + ",".join(f"{n}:9092" for n in KAFKA_NODES)
    assert env["LAPSTREAM_GATEWAY_HOST"] == "0.0.0.0"
    assert env["LAPSTREAM_GATEWAY_PORT"] == str(GATEWAY_PORT)
    assert gw["ports"] == [f"127.0.0.1:{GATEWAY_PORT}:{GATEWAY_PORT}"]
    test = gw["healthcheck"]["test"]
    assert test[0] == "CMD" and "/usr/local/bin/lapstream-healthcheck" in test
    assert test[-2:] == ["/readyz", str(GATEWAY_PORT)]
    # the flags / env the serve command reads (streams/cli_live.py) are these
    from streams.cli import build_parser

    for k in ("LAPSTREAM_GATEWAY_HOST", "LAPSTREAM_GATEWAY_PORT"):
        monkeypatch.setenv(k, env[k])
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port) == ("0.0.0.0", GATEWAY_PORT)


def mount_target(svc: dict, source: str) -> str:
    for volume in svc["volumes"]:
        parts = volume.split(":")
        if parts[0] == source:
            return parts[1]
    raise AssertionError(f"{source} is not mounted")


def test_compose_prometheus_and_grafana_mounts():
    services = compose()["services"]
    prom = services["prometheus"]
    assert mount_target(prom, "./prometheus") == "/etc/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    assert "127.0.0.1:9090:9090" in prom["ports"]
    graf = services["grafana"]
    assert mount_target(graf, "./grafana/provisioning") == "/etc/grafana/provisioning"
    provider = load_yaml(GRAFANA_DASH_PROVIDER)["providers"][0]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == mount_target(graf, "./grafana/dashboards")
    assert "127.0.0.1:3000:3000" in graf["ports"]
    for volume in prom["volumes"] + graf["volumes"]:
        source = volume.split(":")[0]
        if source.startswith("."):
            assert (DEPLOY / source).exists(), source


# ----------------------------------------------------------------- grafana
def test_grafana_datasource_and_dashboard_agree():
    ds = load_yaml(GRAFANA_DS_FILE)["datasources"]
    assert len(ds) == 1 and ds[0]["type"] == "prometheus"
    uid = ds[0]["uid"]
    assert ds[0]["url"] == "http://prometheus:9090"
    dash = json.loads(DASHBOARD_FILE.read_text())
    assert 36 <= dash["schemaVersion"] <= 41
    assert dash["uid"] and dash["title"]
    refs = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("datasource"), dict):
                refs.append(node["datasource"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(dash)
    prom_refs = [r for r in refs if r.get("type") == "prometheus"]
    assert prom_refs and all(r.get("uid") == uid for r in prom_refs)
    assert all(r.get("type") in ("prometheus", "grafana") for r in refs)


def test_grafana_dashboard_panels_variables_and_annotations():
    dash = json.loads(DASHBOARD_FILE.read_text())
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels:
        assert {"h", "w", "x", "y"} <= set(p["gridPos"]), p["title"]
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
        if p["type"] not in ("row", "alertlist"):   # an alert list reads the alert rules, not a query
            assert p.get("targets") and all(t.get("expr") for t in p["targets"]), p["title"]
    assert sum(p["type"] == "stat" for p in panels) >= 4
    venue = {v["name"]: v for v in dash["templating"]["list"]}["venue"]
    query = venue["query"]["query"] if isinstance(venue["query"], dict) else venue["query"]
    assert query == "label_values(lapstream_event_time_lag_seconds, venue)"
    assert any('venue=~"$venue"' in t["expr"] for p in panels for t in p.get("targets", []))
    annos = {a["name"]: a for a in dash["annotations"]["list"]}
    assert 'lapstream_incidents_total{type="fall"}' in annos["Falls"]["expr"]
    assert "lapstream_records_total" in annos["Records"]["expr"]
    for name in ("Falls", "Records"):
        assert "increase(" in annos[name]["expr"] and annos[name]["enable"]
    latency = " ".join(t["expr"] for p in panels for t in p.get("targets", []))
    for q in ("0.50", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(lapstream_processing_latency_seconds_bucket" \
            in latency


# ------------------------------------------------------------ Dockerfile
def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile():
    ins = dockerfile_instructions()
    args = {rest.split("=", 1)[0]: rest.split("=", 1)[1] for w, rest in ins if w == "ARG" and "=" in rest}
    froms = [args.get(r.split()[0].strip("${}"), r.split()[0]) for w, r in ins if w == "FROM"]
    assert froms and all(f == "python:3.11-slim" for f in froms)
    final = ins[max(i for i, (w, _) in enumerate(ins) if w == "FROM"):]
    users = [r for w, r in final if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert ("EXPOSE", str(HTTP_PORT)) in final
    assert ("EXPOSE", str(GATEWAY_PORT)) in final
    health = [r for w, r in final if w == "HEALTHCHECK"]
    assert health and "/healthz" in health[0]
    assert ("ENTRYPOINT", '["lapstream"]') in final
    # topics: the admin's job; Faust's data dir where the image's lapstream user owns it
    assert ("CMD", '["worker", "--no-create-topics", "--data-dir", "/var/lib/lapstream/data"]') in final
    assert ("COPY", "deploy/wait_topics.py /usr/local/bin/lapstream-wait-topics") in final
    assert any(w == "RUN" and "pip" in r and "install" in r for w, r in final)
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert "!deploy/healthcheck.py" in ignore
    assert "!deploy/wait_topics.py" in ignore


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_healthcheck_script(monkeypatch):
    hc = load_module("lapstream_healthcheck", DEPLOY / "healthcheck.py")
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("LAPSTREAM_HTTP_PORT", str(server.server_port))
        assert hc.main(["hc"]) == 0
        assert hc.main(["hc", "/readyz"]) == 1
        # the gateway's form: path and port as arguments (LAPSTREAM_HTTP_PORT is the worker's)
        monkeypatch.setenv("LAPSTREAM_HTTP_PORT", "1")
        assert hc.main(["hc", "/healthz", str(server.server_port)]) == 0
        assert hc.main(["hc", "/readyz", str(server.server_port)]) == 1
        assert hc.main(["hc", "/healthz", "x"]) == 2
    finally:
        server.shutdown()
        server.server_close()
    monkeypatch.setenv("LAPSTREAM_HTTP_PORT", str(server.server_port))
    assert hc.main(["hc"]) == 1  # nothing listening


# -------------------------------------------------------------- kubernetes
def k8s_objects() -> list[dict]:
    objs = []
    for path in sorted(K8S_DIR.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in load_yaml_docs(path):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), path
            objs.append(doc)
    return objs


def k8s_by_kind(kind: str, component: str | None = None) -> list[dict]:
    """Objects of a kind; with ``component``, those whose pods (selector) are
    that app.kubernetes.io/component (worker, gateway)."""
    out = [o for o in k8s_objects() if o["kind"] == kind]
    if component is not None:
        out = [o for o in out if _selected_component(o) == component]
    return out


def _selected_component(obj: dict):
    spec = obj.get("spec", {})
    sel = spec.get("selector", {})
    sel = sel.get("matchLabels", sel) if isinstance(sel, dict) else {}
    if not sel and "scaleTargetRef" in spec:
        return "worker" if spec["scaleTargetRef"]["name"] == "lapstream-worker" else None
    return sel.get("app.kubernetes.io/component")


def config_map(name: str = "lapstream-config") -> dict:
    (cm,) = [o for o in k8s_by_kind("ConfigMap") if o["metadata"]["name"] == name]
    return cm


def resolve_port(port, container: dict) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in named, f"named port {port} not declared"
    return named[port]


def test_k8s_deployment_probes_resources_and_config():
    assert len(k8s_by_kind("Deployment")) == 3   # the workers, the gateways, P3 ingest
    (deploy,) = k8s_by_kind("Deployment", "worker")
    spec = deploy["spec"]
    assert spec["replicas"] >= 2
    template = spec["template"]
    assert set(spec["selector"]["matchLabels"].items()) <= set(template["metadata"]["labels"].items())
    (container,) = template["spec"]["containers"]
    live, ready = container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"]
    assert live["path"] == "/healthz"
    assert ready["path"] == "/readyz"
    assert resolve_port(live["port"], container) == HTTP_PORT
    assert resolve_port(ready["port"], container) == HTTP_PORT
    if "startupProbe" in container:
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    cm = config_map()
    refs = [e["configMapRef"]["name"] for e in container.get("envFrom", []) if "configMapRef" in e]
    assert cm["metadata"]["name"] in refs
    assert cm["data"]["LAPSTREAM_HTTP_PORT"] == str(HTTP_PORT)
    assert cm["data"]["LAPSTREAM_HTTP_HOST"] == "0.0.0.0"
    assert cm["data"]["LAPSTREAM_BROKER"].startswith("kafka://")
    env = {e["name"]: e for e in container.get("env", [])}
    assert env["LAPSTREAM_WORKER_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert template["spec"]["securityContext"]["runAsNonRoot"] is True


def test_k8s_service_pdb_and_hpa_match_the_workers():
    (deploy,) = k8s_by_kind("Deployment", "worker")
    pod_labels = set(deploy["spec"]["template"]["metadata"]["labels"].items())
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    (svc,) = k8s_by_kind("Service", "worker")
    assert set(svc["spec"]["selector"].items()) <= pod_labels
    (port,) = svc["spec"]["ports"]
    assert resolve_port(port["targetPort"], container) == HTTP_PORT
    ann = svc["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert ann["prometheus.io/port"] == str(HTTP_PORT)
    assert ann["prometheus.io/path"] == "/metrics"
    (pdb,) = k8s_by_kind("PodDisruptionBudget", "worker")
    assert set(pdb["spec"]["selector"]["matchLabels"].items()) <= pod_labels
    assert "maxUnavailable" in pdb["spec"] or "minAvailable" in pdb["spec"]
    for hpa in k8s_by_kind("HorizontalPodAutoscaler"):
        # More workers than timing.raw partitions would sit idle.
        assert hpa["spec"]["maxReplicas"] <= topics.RAW.partitions
        assert hpa["spec"]["scaleTargetRef"]["name"] == deploy["metadata"]["name"]
    kust = load_yaml(K8S_DIR / "kustomization.yaml")
    for res in kust["resources"]:
        assert (K8S_DIR / res).is_file(), res


# ------------------------------------------------------ compose: hardening
def published_ports(svc: dict) -> list[tuple[str | None, str]]:
    """(host ip or None, the whole entry) for every port a service publishes."""
    out = []
    for p in svc.get("ports", []):
        if isinstance(p, dict):   # long syntax
            out.append((p.get("host_ip"), str(p)))
            continue
        text = str(p)
        if text.startswith("["):  # [::1]:HOST:CONTAINER
            out.append((text[1:text.index("]")], text))
            continue
        parts = text.split(":")
        out.append((parts[0] if len(parts) == 3 else None, text))
    return out


def test_compose_publishes_on_loopback_only():
    services = compose()["services"]
    seen = 0
    for name, svc in services.items():
        assert "network_mode" not in svc or svc["network_mode"] != "host", name
        for host_ip, entry in published_ports(svc):
            seen += 1
            assert host_ip in ("127.0.0.1", "::1"), f"{name} publishes {entry} on every interface"
    assert seen >= 8   # 3 Kafka EXTERNAL listeners, 2 workers, the gateway, Prometheus, Grafana
    # the KRaft controllers are never published
    for node in KAFKA_NODES:
        assert not any(entry.endswith(":9093") for _, entry in published_ports(services[node]))


def test_prometheus_has_no_lifecycle_api():
    prom = compose()["services"]["prometheus"]
    assert not any("web.enable-lifecycle" in str(arg) for arg in prom["command"])
    assert not any("web.enable-admin-api" in str(arg) for arg in prom["command"])


def test_grafana_has_no_default_admin_password():
    graf = compose()["services"]["grafana"]
    env = {k: str(v) for k, v in graf["environment"].items()}
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env, "a password in the compose file"
    path = env["GF_SECURITY_ADMIN_PASSWORD__FILE"]
    secret = path.rsplit("/", 1)[1]
    assert path == f"/run/secrets/{secret}" and secret in graf["secrets"]
    assert compose()["secrets"][secret]["file"].startswith("./secrets/")
    assert env.get("GF_USERS_ALLOW_SIGN_UP") == "false"
    assert env.get("GF_AUTH_ANONYMOUS_ORG_ROLE", "Viewer") == "Viewer"


def test_no_secret_value_in_the_compose_file():
    doc = compose()
    for name, svc in doc["services"].items():
        env = svc.get("environment") or {}
        for key, value in env.items():
            if re.search(r"PASSWORD|SECRET|JAAS|CREDENTIAL", key) and not key.endswith("_FILE"):
                # only a reference to a file (Kafka's FileConfigProvider; $$ is compose's escape)
                assert str(value).startswith("$${file:/run/secrets/"), f"{name}: {key} holds a value"
    for secret in doc["secrets"].values():
        assert set(secret) == {"file"} and secret["file"].startswith("./secrets/")


def test_compose_workers_use_sasl_ssl_from_secret_files():
    doc = compose()
    clients = [name for name, svc in doc["services"].items()
               if name.startswith("worker-") or svc.get("command") == ["serve"]]
    assert "gateway" in clients
    for name in clients:
        svc = doc["services"][name]
        env = {k: str(v) for k, v in svc["environment"].items()}
        assert env["LAPSTREAM_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert env["LAPSTREAM_KAFKA_SASL_MECHANISM"] in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
        assert "LAPSTREAM_KAFKA_SASL_PASSWORD" not in env
        for key in ("LAPSTREAM_KAFKA_SASL_PASSWORD_FILE", "LAPSTREAM_KAFKA_SSL_CAFILE"):
            secret = env[key].removeprefix("/run/secrets/")
            assert secret in svc["secrets"] and secret in doc["secrets"], (name, key)


def test_gen_secrets_makes_what_compose_reads_and_it_fits_together(tmp_path):
    """deploy/gen_secrets.sh makes every secret file the compose file names;
    the workers' settings load with them (streams/kafka_security.py); the
    brokers' key stores open with the key password and pass a TLS handshake
    with the workers' client settings (CA + host name kafka-N); the JAAS
    users' passwords are those the clients use."""
    import socket
    import ssl

    from streams.kafka_security import KafkaSecurity

    if shutil.which("openssl") is None:
        pytest.fail("openssl not found: it makes the compose stack's secrets")
    out = tmp_path / "secrets"
    r = subprocess.run(["sh", str(DEPLOY / "gen_secrets.sh"), str(out)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert (out.stat().st_mode & 0o077) == 0, "the secrets directory must be private"
    doc = compose()
    files = {name: out / Path(s["file"]).name for name, s in doc["secrets"].items()}
    for name, path in files.items():
        assert path.is_file(), f"gen_secrets.sh did not make {name} ({path.name})"
    # a second run does not overwrite them
    again = subprocess.run(["sh", str(DEPLOY / "gen_secrets.sh"), str(out)], capture_output=True, text=True)
    assert again.returncode != 0

    def host_path(value: str) -> str:
        return str(files[value.removeprefix("/run/secrets/")])

    worker_env = {k: str(v) for k, v in doc["services"]["worker-1"]["environment"].items()}
    env = {k: (host_path(v) if v.startswith("/run/secrets/") else v)
           for k, v in worker_env.items() if k.startswith("LAPSTREAM_KAFKA_")}
    sec = KafkaSecurity.from_env(env)
    lapstream_pw = sec.sasl_password.reveal()
    jaas = files["kafka-jaas"].read_text()
    assert f'user_{sec.sasl_username}="{lapstream_pw}"' in jaas
    admin_pw = re.search(r'user_admin="([^"]+)"', jaas).group(1)
    client_props = files["kafka-client-properties"].read_text()
    assert f'username="admin" password="{admin_pw}"' in client_props
    assert "security.protocol=SASL_SSL" in client_props
    key_password = re.search(r"^key\.password=(.+)$", files["kafka-ssl-properties"].read_text(), re.M).group(1)
    kafka_env = doc["x-kafka-env"]
    assert kafka_env["KAFKA_SSL_KEY_PASSWORD"] == "$${file:/run/secrets/kafka-ssl-properties:key.password}"
    for node in KAFKA_NODES:
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(files[f"{node}-keystore"], password=key_password)
        a, b = socket.socketpair()
        errors = []

        def serve():
            try:
                with server.wrap_socket(a, server_side=True) as s:
                    s.recv(1)
            except Exception as exc:  # shown below if the client failed too
                errors.append(exc)

        t = threading.Thread(target=serve)
        t.start()
        try:
            with sec.ssl_context().wrap_socket(b, server_hostname=node) as c:
                assert c.version() in ("TLSv1.2", "TLSv1.3")
                c.sendall(b"x")
        finally:
            t.join(10)
        assert not errors, errors


@pytest.mark.parametrize("component,user,secret", [("worker", "lapstream", "lapstream-kafka"),
                                                    ("gateway", "gateway", "lapstream-kafka-gateway"),
                                                    ("ingest", "ingest", "lapstream-kafka-ingest")])
def test_k8s_workers_and_gateways_use_sasl_ssl_with_a_mounted_secret(component, user, secret):
    """Each component is a Kafka user of its own (the ACLs of gen_topics.py),
    with its own Secret; the shared ConfigMap names no user."""
    (deploy,) = k8s_by_kind("Deployment", component)
    cm = config_map()
    data = cm["data"]
    assert data["LAPSTREAM_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert "LAPSTREAM_KAFKA_SASL_PASSWORD" not in data
    assert "LAPSTREAM_KAFKA_SASL_USERNAME" not in data
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert cm["metadata"]["name"] in [e["configMapRef"]["name"] for e in container["envFrom"]]
    kafka_env = {e["name"]: e.get("value") for e in container.get("env", []) if e["name"].startswith("LAPSTREAM_KAFKA_")}
    assert kafka_env == {"LAPSTREAM_KAFKA_SASL_USERNAME": user}
    gen = load_module("gen_topics", DEPLOY / "gen_topics.py")
    assert user in {principal for principal, *_ in gen.ACLS}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    for key in ("LAPSTREAM_KAFKA_SASL_PASSWORD_FILE", "LAPSTREAM_KAFKA_SSL_CAFILE"):
        folder = data[key].rsplit("/", 1)[0]
        (vol,) = [n for n, m in mounts.items() if m["mountPath"] == folder]
        assert vol in secrets and mounts[vol]["readOnly"] is True
        assert secrets[vol] == secret


def test_k8s_gateway_deployment_services_and_pdb():
    """lapstream serve: 2+ interchangeable pods, liveness on /healthz, readiness
    on /readyz (its port), a ClusterIP Service for the load balancer (ready
    pods only) and a headless metrics Service that keeps not-ready pods
    scraped; a PodDisruptionBudget."""
    (deploy,) = k8s_by_kind("Deployment", "gateway")
    spec = deploy["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    template = spec["template"]
    pod_labels = set(template["metadata"]["labels"].items())
    assert set(spec["selector"]["matchLabels"].items()) <= pod_labels
    (container,) = template["spec"]["containers"]
    assert container["args"] == ["serve"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LAPSTREAM_GATEWAY_HOST"] == "0.0.0.0"
    assert env["LAPSTREAM_GATEWAY_PORT"] == str(GATEWAY_PORT)
    live, ready = container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"]
    assert (live["path"], ready["path"]) == ("/healthz", "/readyz")
    assert resolve_port(live["port"], container) == resolve_port(ready["port"], container) == GATEWAY_PORT
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    assert template["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    services = {s["metadata"]["name"]: s for s in k8s_by_kind("Service", "gateway")}
    assert set(services) == {"lapstream-gateway", "lapstream-gateway-lb"}
    for svc in services.values():
        assert set(svc["spec"]["selector"].items()) <= pod_labels
        (port,) = svc["spec"]["ports"]
        assert resolve_port(port["targetPort"], container) == GATEWAY_PORT
    lb = services["lapstream-gateway-lb"]
    assert lb["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert not lb["spec"].get("publishNotReadyAddresses")        # clients go to ready pods only
    assert "prometheus.io/scrape" not in lb["metadata"].get("annotations", {})
    metrics_svc = services["lapstream-gateway"]
    assert metrics_svc["spec"]["clusterIP"] == "None" and metrics_svc["spec"]["publishNotReadyAddresses"]
    ann = metrics_svc["metadata"]["annotations"]
    assert (ann["prometheus.io/scrape"], ann["prometheus.io/port"], ann["prometheus.io/path"]) == \
        ("true", str(GATEWAY_PORT), "/metrics")
    # the workers' Service does not select gateway pods, nor the gateways' a worker
    (worker_svc,) = k8s_by_kind("Service", "worker")
    assert not set(worker_svc["spec"]["selector"].items()) <= pod_labels
    (pdb,) = k8s_by_kind("PodDisruptionBudget", "gateway")
    assert set(pdb["spec"]["selector"]["matchLabels"].items()) <= pod_labels
    # the optional ServiceMonitor names the job "lapstream-gateway" (the Service's name)
    monitors = {m["metadata"]["name"]: m for m in k8s_by_kind("ServiceMonitor")}
    sel = monitors["lapstream-gateway"]["spec"]["selector"]["matchLabels"]
    assert set(sel.items()) <= set(metrics_svc["metadata"]["labels"].items())
    assert not set(sel.items()) <= set(lb["metadata"]["labels"].items())


# ------------------------------------------------------- P3 ingest (ops)
INGEST_PORT = 9310   # lapstream ingest p3 --http-port default (LAPSTREAM_P3_HTTP_PORT)


def ingest_services() -> dict:
    return {n: s for n, s in compose()["services"].items() if s.get("command", [])[:2] == ["ingest", "p3"]}


def test_compose_ingest(monkeypatch):
    """lapstream ingest p3 from the workers' image, after the topics and ACLs
    exist, its HTTP on 9310 in the container (what the CLI reads from its env),
    published on loopback only, its decoders and map from the env and a
    read-only mount of deploy/p3/, scraped as job lapstream-ingest."""
    from streams.cli import build_parser
    from streams.p3.ingest import parse_address
    from streams.p3.mapping import DecoderMap

    services = ingest_services()
    assert list(services) == ["ingest-p3"]
    svc = services["ingest-p3"]
    assert svc["build"] == compose()["services"]["worker-1"]["build"]
    assert svc["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    env = {k: str(v) for k, v in svc["environment"].items()}
    assert svc["ports"] == [f"127.0.0.1:{INGEST_PORT}:{INGEST_PORT}"]
    assert svc["healthcheck"]["test"][-2:] == ["/healthz", str(INGEST_PORT)]
    for k in ("LAPSTREAM_HTTP_HOST", "LAPSTREAM_P3_HTTP_PORT", "LAPSTREAM_P3_MAP"):
        monkeypatch.setenv(k, env[k])
    args = build_parser().parse_args(["ingest", "p3"])
    assert (args.http_host, args.http_port) == ("0.0.0.0", INGEST_PORT)
    assert args.map == env["LAPSTREAM_P3_MAP"]
    folder, name = env["LAPSTREAM_P3_MAP"].rsplit("/", 1)
    source = [v.split(":")[0] for v in svc["volumes"] if v.split(":")[1] == folder]
    assert source == ["./p3"] and svc["volumes"][0].endswith(":ro")
    dmap = DecoderMap.load(DEPLOY / "p3" / name)
    decoders = env["LAPSTREAM_P3_DECODERS"].split(",")
    assert decoders
    for d in decoders:
        parse_address(d)
        assert dmap.resolve(None, d) is not None, f"{d} is not in deploy/p3/{name}"
    cfg = load_yaml(PROM_DIR / "prometheus.yml")
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    targets = {t for sc in jobs["lapstream-ingest"]["static_configs"] for t in sc["targets"]}
    assert targets == {f"{n}:{INGEST_PORT}" for n in services}


def test_ingest_takes_its_decoders_from_the_env(monkeypatch, tmp_path):
    """LAPSTREAM_P3_DECODERS (the deploy files' setting) is what --decoder
    gives: a bad address there is refused with exit 2 like a bad flag."""
    from streams.cli import build_parser

    monkeypatch.setenv("LAPSTREAM_P3_MAP", str(DEPLOY / "p3" / "decoders.json"))
    monkeypatch.setenv("LAPSTREAM_P3_DECODERS", "192.0.2.11:5403, not-an-address")
    args = build_parser().parse_args(["ingest", "p3"])
    assert args.func(args) == 2
    assert args.decoder == ["192.0.2.11:5403", "not-an-address"]


def test_compose_kafka_authorizer_super_users_and_controller_mtls():
    services = compose()["services"]
    for node in KAFKA_NODES:
        env = kafka_env(services[node])
        assert env["KAFKA_AUTHORIZER_CLASS_NAME"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
        assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
        supers = set(env["KAFKA_SUPER_USERS"].split(";"))
        assert supers == {"User:broker", "User:admin"} | {f"User:CN={n}" for n in KAFKA_NODES}
        proto = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
        controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
        assert proto[controller] == "SSL"
        assert "PLAINTEXT" not in proto.values() and "SASL_PLAINTEXT" not in proto.values()
        assert env[f"KAFKA_LISTENER_NAME_{controller}_SSL_CLIENT_AUTH"] == "required"


def acl_lines() -> list[list[str]]:
    return [shlex.split(line) for line in init_script().splitlines() if "kafka-acls.sh" in line and "--add" in line]


def test_compose_acls_are_least_privilege_per_principal():
    """kafka-init adds exactly the ACLs gen_topics.py prints: the workers read
    timing.raw / records.ref / snapshots and their group, write the derived
    topics, dead letters, records.ref and snapshots; the gateway reads the
    derived topics and timing.raw (what it subscribes to), nothing else; P3
    ingest writes timing.raw, nothing else. No wildcard, no super user."""
    from streams.app import Settings
    from streams.gateway_state import TOPIC_NAMES

    gen = load_module("gen_topics", DEPLOY / "gen_topics.py")
    assert gen.compose_block(COMPOSE_FILE.read_text(), gen.ACL_BEGIN, gen.ACL_END) == gen.acl_commands()
    grants: dict[str, set] = {}
    for args in acl_lines():
        principal = args[args.index("--allow-principal") + 1]
        ops = {args[i + 1] for i, a in enumerate(args) if a == "--operation"}
        ((rtype, name),) = [(a[2:], args[i + 1]) for i, a in enumerate(args) if a in ("--topic", "--group",
                                                                                        "--cluster",
                                                                                        "--transactional-id")]
        assert "--resource-pattern-type" not in args and name != "*", args
        for op in ops:
            grants.setdefault(principal, set()).add((op, rtype, name))
    assert set(grants) == {"User:lapstream", "User:gateway", "User:ingest", "User:venue"}
    # the venue feed (race, start, photo, decision, record_ref lines): exactly where replay routes it
    assert grants["User:venue"] == {("Write", "topic", topics.RAW.name), ("Write", "topic", topics.RECORDS_REF.name)}
    derived = {t.name for t in topics.DERIVED}
    assert grants["User:ingest"] == {("Write", "topic", topics.RAW.name)}
    assert grants["User:gateway"] == {("Read", "topic", n) for n in TOPIC_NAMES}
    assert set(TOPIC_NAMES) == derived | {topics.RAW.name}
    worker = grants["User:lapstream"]
    group = Settings.app_id if isinstance(Settings.app_id, str) else Settings().app_id
    assert ("Read", "group", group) in worker
    assert {(op, n) for op, kind, n in worker if kind == "topic"} == (
        {("Read", n) for n in (topics.RAW.name, topics.RECORDS_REF.name, topics.SNAPSHOTS.name)}
        | {("Write", n) for n in derived | {topics.DEADLETTER.name, topics.RECORDS_REF.name,
                                             topics.SNAPSHOTS.name}})
    assert not any(op == "Write" and n == topics.RAW.name for op, _, n in worker)
    # every client service logs in as a principal that has ACLs, and not as a super user
    users = {}
    for name, svc in compose()["services"].items():
        env = svc.get("environment") or {}
        if "LAPSTREAM_KAFKA_SASL_USERNAME" in env:
            users[name] = env["LAPSTREAM_KAFKA_SASL_USERNAME"]
    assert users["gateway"] == "gateway" and users["ingest-p3"] == "ingest"
    assert {users[n] for n in users if n.startswith("worker-")} == {"lapstream"}
    assert {f"User:{u}" for u in users.values()} == set(grants) - {"User:venue"}   # venue: from the host


def test_gen_secrets_gives_every_principal_its_own_password_and_the_nodes_mutual_tls(tmp_path):
    """Every Kafka client service of the compose file logs in with a password
    file that gen_secrets.sh made for its own user (in the JAAS file, distinct
    passwords, none printed); the brokers' certificates carry the CN the super
    users name, and a node's key store opens a mutual-TLS session with another
    node's (what the controller listener requires)."""
    import socket
    import ssl

    out = tmp_path / "secrets"
    r = subprocess.run(["sh", str(DEPLOY / "gen_secrets.sh"), str(out)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    doc = compose()
    files = {name: out / Path(s["file"]).name for name, s in doc["secrets"].items()}
    jaas = files["kafka-jaas"].read_text()
    passwords = {}
    for name, svc in doc["services"].items():
        env = {k: str(v) for k, v in (svc.get("environment") or {}).items()}
        if "LAPSTREAM_KAFKA_SASL_USERNAME" not in env:
            continue
        user = env["LAPSTREAM_KAFKA_SASL_USERNAME"]
        secret = env["LAPSTREAM_KAFKA_SASL_PASSWORD_FILE"].removeprefix("/run/secrets/")
        assert secret in svc["secrets"], name
        pw = files[secret].read_text().strip()
        assert f'user_{user}="{pw}"' in jaas, name
        assert passwords.setdefault(user, pw) == pw
        assert pw not in r.stdout + r.stderr, "a password was printed"
    assert set(passwords) == {"lapstream", "gateway", "ingest"}
    all_pw = re.findall(r'user_\w+="([^"]+)"', jaas)
    assert len(all_pw) == len(set(all_pw)) == 6        # broker, admin, lapstream, gateway, ingest, venue
    # venue (the race office's feed, from the host) is no compose service: its password file and
    # lapstream config are the host's only, so they are 0600 (kafka_security refuses nothing less
    # for a config holding a password; a password file others can read is a leak anyway)
    assert f'user_venue="{(out / "venue-kafka-password").read_text().strip()}"' in jaas
    key_password = re.search(r"^key\.password=(.+)$", files["kafka-ssl-properties"].read_text(), re.M).group(1)
    ca = str(files["kafka-ca"])
    for node in KAFKA_NODES:
        cert = ssl._ssl._test_decode_cert(str(files[f"{node}-keystore"]))
        assert dict(x[0] for x in cert["subject"]) == {"commonName": node}
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(files["kafka-1-keystore"], password=key_password)
    server.load_verify_locations(ca)
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_cert_chain(files["kafka-2-keystore"], password=key_password)
    client.load_verify_locations(ca)
    a, b = socket.socketpair()
    peer = {}

    def serve():
        try:
            with server.wrap_socket(a, server_side=True) as s:
                peer["cert"] = s.getpeercert()
                s.recv(1)
        except Exception as exc:
            peer["error"] = exc

    t = threading.Thread(target=serve)
    t.start()
    try:
        with client.wrap_socket(b, server_hostname="kafka-1") as c:
            c.sendall(b"x")
    finally:
        t.join(10)
    assert "error" not in peer, peer
    assert dict(x[0] for x in peer["cert"]["subject"]) == {"commonName": "kafka-2"}


def test_k8s_ingest_deployment_and_metrics_service():
    (deploy,) = k8s_by_kind("Deployment", "ingest")
    spec = deploy["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    template = spec["template"]
    pod_labels = set(template["metadata"]["labels"].items())
    (container,) = template["spec"]["containers"]
    assert container["args"] == ["ingest", "p3"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LAPSTREAM_P3_HTTP_PORT"] == str(INGEST_PORT)
    assert config_map()["data"]["LAPSTREAM_HTTP_HOST"] == "0.0.0.0"
    live, ready = container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"]
    assert (live["path"], ready["path"]) == ("/healthz", "/readyz")
    assert resolve_port(live["port"], container) == INGEST_PORT
    assert template["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # the map: a ConfigMap mounted where LAPSTREAM_P3_MAP points
    folder, name = env["LAPSTREAM_P3_MAP"].rsplit("/", 1)
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == folder]
    (vol,) = [v for v in template["spec"]["volumes"] if v["name"] == mount["name"]]
    data = config_map(vol["configMap"]["name"])["data"]
    assert json.loads(data[name])["decoders"]
    (svc,) = k8s_by_kind("Service", "ingest")
    assert set(svc["spec"]["selector"].items()) <= pod_labels
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"]
    ann = svc["metadata"]["annotations"]
    assert (ann["prometheus.io/scrape"], ann["prometheus.io/port"]) == ("true", str(INGEST_PORT))
    monitors = {m["metadata"]["name"]: m for m in k8s_by_kind("ServiceMonitor")}
    sel = monitors["lapstream-ingest"]["spec"]["selector"]["matchLabels"]
    assert set(sel.items()) <= set(svc["metadata"]["labels"].items())


# ------------------------------------- topic creation under the authorizer
# The brokers run the StandardAuthorizer and only admin (kafka-init) may
# create topics. The KRaft controller answers a CreateTopics request from a
# user without the Create ACL with TOPIC_AUTHORIZATION_FAILED (29) for every
# topic in it, existing ones too; a component that sends one crash-loops.
import ast  # noqa: E402
import asyncio  # noqa: E402
import inspect  # noqa: E402
import types  # noqa: E402

from hypothesis import HealthCheck, given, settings as hsettings, strategies as st  # noqa: E402

# identifiers of every way a Kafka client of ours could ask for a topic
CREATING = {"ensure_topics", "create_topics", "create_topic", "NewTopic", "CreateTopicsRequest"}


def _resolve_module(name: str, level: int, package: str):
    if level:
        base = package.split(".")
        base = base[: len(base) - level + 1]
        name = ".".join(base + ([name] if name else []))
    return importlib.import_module(name)


def _ours(obj) -> bool:
    """Code of this repository (streams/, agents/, deploy/), not a library's."""
    if isinstance(obj, types.ModuleType):
        path = getattr(obj, "__file__", None)
    elif isinstance(obj, types.FunctionType):
        path = obj.__code__.co_filename
    else:
        mod = sys.modules.get(getattr(obj, "__module__", None) or "")
        path = getattr(mod, "__file__", None)
    if not path:
        return False
    path = Path(path).resolve()
    return any(path.is_relative_to(REPO / d) for d in ("streams", "agents", "deploy"))


def topic_creating_identifiers(entry) -> dict[str, set[str]]:
    """Every identifier of CREATING that code reachable from ``entry`` (a
    function) names, by where: the function, the functions and globals it
    uses, and what it imports (an imported function: its own source; a class
    or a module: its whole module), transitively, within streams/ and agents/."""
    found: dict[str, set[str]] = {}
    seen: set[str] = set()
    todo = [entry]
    while todo:
        obj = todo.pop()
        key = getattr(obj, "__qualname__", "") + "@" + (obj.__name__ if isinstance(obj, types.ModuleType)
                                                        else obj.__module__)
        if key in seen:
            continue
        seen.add(key)
        if isinstance(obj, types.ModuleType):
            tree, package, scope = ast.parse(inspect.getsource(obj)), obj.__package__ or obj.__name__, vars(obj)
        else:
            tree = ast.parse(inspect.getsource(obj).lstrip() if not inspect.getsource(obj)[:1].isspace()
                             else "if 1:\n" + inspect.getsource(obj))
            scope = obj.__globals__
            package = scope.get("__package__") or scope["__name__"]
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                names.add(node.id)
                if isinstance(scope.get(node.id), types.FunctionType) and _ours(scope[node.id]):
                    todo.append(scope[node.id])
            elif isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    names.add(alias.name.rsplit(".", 1)[-1])
                    if alias.name.split(".")[0] in ("streams", "agents"):
                        todo.append(importlib.import_module(alias.name))
            elif isinstance(node, ast.ImportFrom):
                if not node.level and (node.module or "").split(".")[0] not in ("streams", "agents"):
                    names.update(a.name for a in node.names)
                    continue
                mod = _resolve_module(node.module or "", node.level, package)
                for alias in node.names:
                    names.add(alias.name)
                    target = getattr(mod, alias.name, None)
                    if target is None:
                        target = importlib.import_module(f"{mod.__name__}.{alias.name}")
                    if isinstance(target, types.FunctionType) and _ours(target):
                        todo.append(target)
                    elif isinstance(target, types.ModuleType) and _ours(target):
                        todo.append(target)
                    elif _ours(target):
                        todo.append(sys.modules[target.__module__])
        hit = names & CREATING
        if hit:
            found[key] = hit
    return found


def test_topic_creation_scan_finds_what_creates():
    """The scan is not blind: the worker (without --no-create-topics), the
    demo and the embedded broker command do reach topic creation."""
    from streams import cli_live

    for handler in (cli_live._cmd_worker, cli_live._cmd_demo, cli_live._cmd_broker):
        assert topic_creating_identifiers(handler), handler.__name__


def lapstream_containers() -> list[tuple[str, list[str], dict]]:
    """(where, argv after the image's entrypoint or the command, env) of every
    container of the lapstream image in compose and k8s (init containers too)."""
    ins = dockerfile_instructions()
    entrypoint = json.loads(dict(ins)["ENTRYPOINT"])
    cmd = json.loads([r for w, r in ins if w == "CMD"][-1])
    out = []
    services = compose()["services"]
    image_build = services["worker-1"]["build"]
    for name, svc in services.items():
        if svc.get("build") != image_build:
            continue
        assert "entrypoint" not in svc, name
        out.append((f"compose {name}", entrypoint + list(svc.get("command", cmd)),
                    {k: str(v) for k, v in svc.get("environment", {}).items()}))
    cm = config_map()["data"]
    for obj in k8s_by_kind("Deployment"):
        pod = obj["spec"]["template"]["spec"]
        for c in pod.get("initContainers", []) + pod["containers"]:
            if not c["image"].startswith("lapstream:"):
                continue
            argv = (list(c["command"]) + list(c.get("args", [])) if "command" in c
                    else entrypoint + list(c.get("args", cmd)))
            env = {}
            for ref in c.get("envFrom", []):
                if ref.get("configMapRef", {}).get("name") == "lapstream-config":
                    env.update(cm)
            env.update({e["name"]: e.get("value") for e in c.get("env", []) if "value" in e})
            out.append((f"k8s {obj['metadata']['name']}/{c['name']}", argv, env))
    return out


def test_no_lapstream_container_creates_topics(monkeypatch):
    """Every lapstream container of compose and k8s connects to Kafka and none
    of them can send a CreateTopics: the workers run with --no-create-topics,
    and every other command (gateway, ingest, the init container) reaches no
    topic-creating code at all."""
    from streams import cli_live
    from streams.cli import build_parser

    copied = {r.split()[1]: r.split()[0] for w, r in dockerfile_instructions() if w == "COPY" and
              r.startswith("deploy/")}
    containers = lapstream_containers()
    seen = set()
    for where, argv, env in containers:
        assert env.get("LAPSTREAM_BROKER", "").startswith("kafka://"), where
        if argv[0] == "lapstream":
            for k, v in env.items():   # the CLI reads its defaults from the env
                monkeypatch.setenv(k, v)
            args = build_parser().parse_args(argv[1:])
            if args.func is cli_live._cmd_worker:
                assert args.no_create_topics, f"{where}: a worker must run with --no-create-topics"
                seen.add("worker")
                continue
            entry = args.func
        else:   # a script of the image: python /usr/local/bin/NAME
            assert argv[0] == "python" and argv[1] in copied, where
            entry = load_module(Path(argv[1]).name.replace("-", "_"), REPO / copied[argv[1]]).main
        seen.add(entry.__name__)
        hits = topic_creating_identifiers(entry)
        assert not hits, f"{where}: {' '.join(argv)} reaches topic creation: {hits}"
    # the deployment's components, in both files
    assert {"worker", "_cmd_serve", "_cmd_ingest_p3", "main"} <= seen
    wheres = [w for w, _, _ in containers]
    assert sum(w.startswith("compose worker-") for w in wheres) >= 2
    assert any(w.startswith("k8s lapstream-worker/worker") for w in wheres)


def test_the_workers_faust_app_declares_no_topic():
    """Faust itself creates nothing: no topic declarations, no assignor leader
    topic, no tables (so no changelog topics)."""
    from streams.app import Settings, create_app

    app = create_app(Settings(bootstrap="127.0.0.1:1", http_port=1))
    assert app.conf.topic_allow_declare is False
    assert app.conf.topic_disable_leader is True
    assert len(app.tables) == 0
    # LAPSTREAM_FAUST_SETTINGS cannot turn them back on quietly: a second value is refused
    with pytest.raises(TypeError):
        create_app(Settings(bootstrap="127.0.0.1:1", http_port=1, extra={"topic_allow_declare": True}))


def test_every_lapstream_service_starts_after_kafka_init():
    services = compose()["services"]
    build = services["worker-1"]["build"]
    ours = [n for n, s in services.items() if s.get("build") == build]
    assert len(ours) >= 4
    for name in ours:
        assert services[name]["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully", name
        assert services["kafka-init"]["restart"] == "no"


def test_k8s_workers_wait_for_the_topics_as_their_own_user():
    (deploy,) = k8s_by_kind("Deployment", "worker")
    pod = deploy["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    (worker,) = pod["containers"]
    assert init["image"] == worker["image"]
    assert init["command"] == ["python", "/usr/local/bin/lapstream-wait-topics"]
    assert init["envFrom"] == worker["envFrom"]
    user = {e["name"]: e.get("value") for e in worker["env"]}["LAPSTREAM_KAFKA_SASL_USERNAME"]
    assert {e["name"]: e.get("value") for e in init["env"]}["LAPSTREAM_KAFKA_SASL_USERNAME"] == user
    mounts = {m["name"]: m for m in worker["volumeMounts"]}
    for m in init["volumeMounts"]:
        assert mounts[m["name"]]["mountPath"] == m["mountPath"]
    assert "kafka-secret" in {m["name"] for m in init["volumeMounts"]}
    assert init["securityContext"]["readOnlyRootFilesystem"] is True
    args = dict(zip(init["args"][::2], init["args"][1::2]))
    assert set(args) == {"--interval", "--timeout"}
    # how often it looks, and how long before the pod starts over (README: 5 s, 10 minutes)
    assert (float(args["--interval"]), float(args["--timeout"])) == (5.0, 600.0)


def _layout(present: dict[str, int]):
    from streams.broker import TopicLayout

    return lambda names: {n: TopicLayout(n, present.get(n), {}) for n in names}


WAIT_ENV = {"LAPSTREAM_BROKER": "kafka://k1:9092,k2:9092"}


def test_wait_topics_waits_until_every_topic_is_there(capsys):
    wt = load_module("wait_topics", DEPLOY / "wait_topics.py")
    now = [0.0]
    looks = []
    full = {t.name: t.partitions for t in topics.ALL}
    half = dict(list(full.items())[:3])
    answers = [RuntimeError("no broker yet"), half, half, full]

    def describe(names):
        assert sorted(names) == sorted(full)
        looks.append(now[0])
        a = answers[len(looks) - 1]
        if isinstance(a, Exception):
            raise a
        return _layout(a)(names)

    def sleep(s):
        now[0] += s

    rc = wt.main(["--interval", "5", "--timeout", "60"], describe=describe, sleep=sleep,
                 clock=lambda: now[0], env=WAIT_ENV)
    assert rc == 0 and looks == [0, 5, 10, 15]
    err = capsys.readouterr().err
    assert "no broker yet" in err
    (line,) = [x for x in err.splitlines() if "waiting: no topic" in x]
    assert line.endswith(", ".join(n for n in full if n not in half))
    assert err.count("waiting: no topic") == 1   # said once while it does not change


def test_wait_topics_gives_up_and_refuses_a_wrong_layout():
    wt = load_module("wait_topics", DEPLOY / "wait_topics.py")
    now = [0.0]

    def sleep(s):
        now[0] += s

    assert wt.main(["--interval", "5", "--timeout", "30"], describe=_layout({}), sleep=sleep,
                   clock=lambda: now[0], env=WAIT_ENV) == 1
    assert now[0] == 30
    wrong = {t.name: t.partitions for t in topics.ALL}
    wrong[topics.RAW.name] = 4
    assert wt.main([], describe=_layout(wrong), sleep=sleep, clock=lambda: now[0], env=WAIT_ENV) == 2
    assert wt.main([], describe=_layout({}), sleep=sleep, clock=lambda: now[0],
                   env={"LAPSTREAM_BROKER": "embedded"}) == 2
    assert wt.main([], describe=_layout({}), sleep=sleep, clock=lambda: now[0],
                   env={"LAPSTREAM_BROKER": "localhost:9092"}) == 2


class FakeKraftAdmin:
    """What aiokafka's admin client gets from a KRaft cluster with the
    StandardAuthorizer: Metadata (all topics) lists the topics; CreateTopics
    from a user without the Create ACL answers 29 for every topic in the
    request, existing ones included; ``appear`` are topics another client (the
    admin's job) creates at the moment of the request."""

    def __init__(self, existing: dict[str, int], may_create: bool, appear: dict[str, int] | None = None):
        self.topics = dict(existing)
        self.may_create = may_create
        self.appear = dict(appear or {})
        self.create_requests: list[list[str]] = []
        self.closed = False

    async def start(self):
        pass

    async def close(self):
        self.closed = True

    async def describe_topics(self, topics=None):
        assert topics is None   # naming topics would auto-create them
        return [{"topic": n, "error_code": 0, "partitions": [{"partition": i} for i in range(p)]}
                for n, p in self.topics.items()]

    async def create_topics(self, new_topics, timeout_ms=None):
        self.create_requests.append([t.name for t in new_topics])
        errors = []
        for t in new_topics:
            if not self.may_create:
                errors.append((t.name, 29, "Authorization failed."))
            elif t.name in self.topics:
                errors.append((t.name, 36, "Topic already exists."))
            else:
                self.topics[t.name] = t.num_partitions
                errors.append((t.name, 0, None))
        self.topics.update(self.appear)
        return types.SimpleNamespace(topic_errors=errors)


def _ensure(monkeypatch, fake, specs=topics.ALL):
    from streams import broker

    monkeypatch.setattr(broker, "_admin", lambda *a, **k: fake)
    return asyncio.run(broker.ensure_topics("k1:9092", specs, timeout=5.0))


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(existing=st.sets(st.sampled_from([t.name for t in topics.ALL])), may_create=st.booleans())
def test_ensure_topics_asks_only_for_missing_topics(monkeypatch, existing, may_create):
    from streams.broker import TopicLayoutError

    parts = {t.name: t.partitions for t in topics.ALL}
    fake = FakeKraftAdmin({n: parts[n] for n in existing}, may_create)
    missing = [t.name for t in topics.ALL if t.name not in existing]
    if not missing:   # the worker's case after kafka-init: no CreateTopics at all
        assert _ensure(monkeypatch, fake) == {n: "exists" for n in parts}
        assert fake.create_requests == []
    elif may_create:
        got = _ensure(monkeypatch, fake)
        assert fake.create_requests == [missing]
        assert got == {n: ("exists" if n in existing else "created") for n in parts}
    else:
        with pytest.raises(TopicLayoutError) as info:
            _ensure(monkeypatch, fake)
        assert fake.create_requests == [missing]   # never an existing topic
        msg = str(info.value)
        assert all(f"{n}: error 29" in msg for n in missing)
        assert not any(f"{n}: error" in msg for n in existing)
        assert "TOPIC_AUTHORIZATION_FAILED" in msg and "--no-create-topics" in msg
    assert fake.closed


def test_ensure_topics_takes_a_refused_topic_that_exists_meanwhile(monkeypatch):
    """Refused (29) because another client (the admin's job) made it at the
    same moment: it exists, so that is fine."""
    parts = {t.name: t.partitions for t in topics.ALL}
    fake = FakeKraftAdmin({}, may_create=False, appear=parts)
    assert _ensure(monkeypatch, fake) == {n: "exists" for n in parts}
    assert fake.create_requests == [list(parts)]


def test_ensure_topics_refuses_an_existing_topic_with_other_partitions(monkeypatch):
    from streams.broker import TopicLayoutError

    parts = {t.name: t.partitions for t in topics.ALL}
    parts[topics.RAW.name] = 3
    fake = FakeKraftAdmin(parts, may_create=False)
    with pytest.raises(TopicLayoutError, match=r"timing\.raw 3/12"):
        _ensure(monkeypatch, fake)
    assert fake.create_requests == []


def test_replay_from_the_host_needs_more_than_ingest_may():
    """deploy/README.md: the race office's feed goes in as user venue, because
    a feed's record_ref lines go to timing.records.ref, which ingest may not
    write; venue may write exactly timing.raw and timing.records.ref."""
    from streams.replay import route

    gen = load_module("gen_topics", DEPLOY / "gen_topics.py")
    ref = json.dumps({"kind": "record_ref", "t_us": 1, "record": "WR", "format": "long_track",
                                    "gender": "W", "distance_m": 500}).encode()
    assert route(ref, {}, None)[0] == topics.RECORDS_REF.name
    assert route(b'{"kind": "passing", "venue": "V"}', {}, None)[0] == topics.RAW.name
    ingest_writes = {name for who, rtype, name, ops in gen.ACLS
                     if who == gen.INGEST_USER and rtype == "topic" and "Write" in ops}
    assert ingest_writes == {topics.RAW.name}
    # the venue user (race office) writes exactly the two topics a replay routes to
    venue_writes = {name for who, rtype, name, ops in gen.ACLS
                    if who == gen.VENUE_USER and rtype == "topic" and "Write" in ops}
    assert venue_writes == {topics.RAW.name, topics.RECORDS_REF.name}
    assert not any(who == gen.VENUE_USER and "Write" not in ops for who, _, _, ops in gen.ACLS)
    text = " ".join((DEPLOY / "README.md").read_text().split())
    assert "as user `venue`, which may write those two topics and nothing else" in text


# ------------------------------------------------------ ops: reviewer's findings
# Brokers restart, a broker missing alerts, alerts reach Alertmanager, the
# ingest produce-error alert, the k8s pods' network and token, Faust's data dir.
def test_every_long_running_compose_service_restarts_the_brokers_too():
    services = compose()["services"]
    for name, svc in services.items():
        if name == "kafka-init":
            assert svc.get("restart") == "no"          # a one-shot job
            continue
        assert svc.get("restart") == "unless-stopped", f"{name} has no restart policy"
    for node in KAFKA_NODES:
        assert services[node]["restart"] == "unless-stopped"


def test_kafka_broker_missing_alert_compares_with_the_compose_cluster():
    rules = {r["alert"]: r for r in alert_rules() if "alert" in r}
    rule = rules["LapstreamKafkaBrokerMissing"]
    expr = " ".join(rule["expr"].split())
    assert "lapstream_kafka_brokers" in expr and 'job="lapstream"' in expr
    # expected count: at least the compose cluster's brokers, or the most seen in 6 h
    m = re.search(r"clamp_min\(max_over_time\(.*\[6h:\w+\]\), (\d+)\)", expr)
    assert m and int(m.group(1)) == len(KAFKA_NODES), expr
    assert "> 0" in expr     # no answer at all: LapstreamBrokerUnreachable's business
    assert rule["labels"]["severity"] == "critical"
    # the worker exports the gauge (its own process's catalogue), label-free
    spec = metrics.BY_NAME.get("lapstream_kafka_brokers") or spec_of("lapstream_kafka_brokers")
    assert spec is not None and spec.type == "gauge" and spec.labels == ()
    assert spec in metrics.WORKER_CATALOGUE
    assert "metrics.kafka_brokers.set(len(cluster.brokers()))" in (REPO / "streams" / "app.py").read_text()
    produce = rules["LapstreamIngestProduceErrors"]
    assert "increase(lapstream_p3_produce_errors_total[" in produce["expr"]
    assert metrics.BY_NAME["lapstream_p3_produce_errors_total"] in metrics.P3_CATALOGUE   # ingest's only


def test_kafka_brokers_gauge_counts_the_brokers_of_the_metadata(monkeypatch):
    """The probe of streams/app.py sets lapstream_kafka_brokers from the
    Metadata answer's broker list, and 0 when no answer comes."""
    import asyncio

    import aiokafka.client as akc
    from aiokafka.cluster import ClusterMetadata
    from prometheus_client import generate_latest

    from streams.app import Settings, create_app
    from streams.kafka_security import PLAINTEXT

    answers = [3, 2, None]

    class FakeClient:
        def __init__(self, **kw):
            pass

        async def bootstrap(self):
            return None

        async def fetch_all_metadata(self):
            n = answers.pop(0) if answers else None
            if n is None:
                raise OSError("no broker answers")
            md = ClusterMetadata()
            md._brokers = {i: object() for i in range(n)}
            return md

        async def close(self):
            return None

    monkeypatch.setattr(akc, "AIOKafkaClient", FakeClient)
    app = create_app(Settings(worker_id="probe-test", security=PLAINTEXT, bootstrap="127.0.0.1:1"))
    (task,) = [t.__wrapped__ for t in app._app_tasks if getattr(t, "__name__", "") == "broker_probe"]
    seen = []

    async def sleep(_s):
        seen.append(app.lapstream_metrics.kafka_brokers._value.get())
        if len(seen) >= 3:
            raise asyncio.CancelledError

    monkeypatch.setattr("streams.app.asyncio.sleep", sleep)
    try:
        asyncio.run(task())
    except asyncio.CancelledError:
        pass
    assert seen == [3, 2, 0]
    assert b"lapstream_kafka_brokers 0.0" in generate_latest(app.lapstream_metrics.registry)


def test_alertmanager_receives_the_alerts():
    services = compose()["services"]
    am = services["alertmanager"]
    assert am["image"].startswith("prom/alertmanager:v")
    assert mount_target(am, "./alertmanager") == "/etc/alertmanager"
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in am["command"]
    assert "127.0.0.1:9093:9093" in am["ports"]
    cfg = load_yaml(PROM_DIR / "prometheus.yml")
    targets = [t for a in cfg["alerting"]["alertmanagers"] for sc in a["static_configs"] for t in sc["targets"]]
    assert targets == ["alertmanager:9093"]
    am_cfg = load_yaml(DEPLOY / "alertmanager" / "alertmanager.yml")
    receivers = {r["name"] for r in am_cfg["receivers"]}
    route = am_cfg["route"]
    assert route["receiver"] in receivers
    assert all(r.get("receiver", route["receiver"]) in receivers for r in route.get("routes", []))
    # no credential committed: secrets only by *_file settings
    text = (DEPLOY / "alertmanager" / "alertmanager.yml").read_text()
    body = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    assert not re.search(r"(password|api_key|routing_key|service_key|token|secret)\s*:", body), body
    # the dashboard shows the alerts
    dash = json.loads(DASHBOARD_FILE.read_text())
    kinds = {p["type"] for p in dash["panels"]}
    assert "alertlist" in kinds
    assert any("ALERTS{" in t["expr"] for p in dash["panels"] for t in p.get("targets", []))


def test_amtool_check_config():
    exe = shutil.which("amtool")
    if exe is None:
        pytest.fail("amtool not found on PATH: install it (Debian/Ubuntu: apt-get install -y "
                    "prometheus-alertmanager; the Makefile's deps target does) to validate deploy/alertmanager/")
    r = subprocess.run([exe, "check-config", "deploy/alertmanager/alertmanager.yml"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def _pod_specs() -> list[tuple[str, dict]]:
    out = []
    for o in k8s_objects():
        tpl = o.get("spec", {}).get("template", {}).get("spec")
        if tpl is not None:
            out.append((f'{o["kind"]}/{o["metadata"]["name"]}', tpl))
        if o["kind"] == "Pod":
            out.append((f'Pod/{o["metadata"]["name"]}', o["spec"]))
    return out


def test_k8s_pods_mount_no_service_account_token():
    specs = _pod_specs()
    assert len(specs) >= 3
    for where, spec in specs:
        assert spec.get("automountServiceAccountToken") is False, where


def _policies() -> list[dict]:
    return k8s_by_kind("NetworkPolicy")


def test_k8s_network_policies_deny_by_default_and_allow_what_each_needs():
    pols = _policies()
    kust = load_yaml(K8S_DIR / "kustomization.yaml")
    assert "networkpolicy.yaml" in kust["resources"]
    (deny,) = [p for p in pols if p["spec"]["podSelector"] == {}]
    assert set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny["spec"] and "egress" not in deny["spec"]

    def applying(component: str, direction: str) -> list[dict]:
        got = []
        for p in pols:
            sel = p["spec"]["podSelector"].get("matchLabels", {})
            if direction not in p["spec"]["policyTypes"] or not sel:
                continue
            if sel.get("app.kubernetes.io/name") == "lapstream" and sel.get("app.kubernetes.io/component",
                                                                             component) == component:
                got.append(p)
        return got

    def ports(rules: list[dict]) -> set[int]:
        return {pt["port"] for r in rules for pt in r.get("ports", [])}

    expect_in = {"worker": {HTTP_PORT}, "gateway": {GATEWAY_PORT}, "ingest": {INGEST_PORT}}
    for deploy in k8s_by_kind("Deployment"):
        comp = deploy["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        rules_in = [r for p in applying(comp, "Ingress") for r in p["spec"].get("ingress", [])]
        assert ports(rules_in) == expect_in[comp], comp
        # every ingress rule names its sources (no "from anywhere")
        assert all(r.get("from") for r in rules_in), comp
        rules_out = [r for p in applying(comp, "Egress") for r in p["spec"].get("egress", [])]
        out_ports = ports(rules_out)
        assert 9092 in out_ports and 53 in out_ports, comp
        assert out_ports <= {9092, 53, 5403}, comp
        assert (5403 in out_ports) == (comp == "ingest"), comp
    # the workers' metrics port: Prometheus only (one source, the monitoring namespace)
    (wp,) = applying("worker", "Ingress")
    (rule,) = wp["spec"]["ingress"]
    assert len(rule["from"]) == 1


def test_k8s_ingress_example_does_not_publish_metrics():
    (ing,) = k8s_by_kind("Ingress")
    kust = load_yaml(K8S_DIR / "kustomization.yaml")
    assert not any("ingress" in r for r in kust["resources"])   # optional: host and class are yours
    paths = [(p["path"], p["pathType"]) for rule in ing["spec"]["rules"] for p in rule["http"]["paths"]]
    backends = {p["backend"]["service"]["name"] for rule in ing["spec"]["rules"] for p in rule["http"]["paths"]}
    assert backends == {"lapstream-gateway-lb"}

    def routed(url: str) -> bool:
        for path, kind in paths:
            if kind == "Exact" and url == path:
                return True
            if kind == "Prefix":
                parts = [x for x in path.split("/") if x]
                if [x for x in url.split("/") if x][:len(parts)] == parts:
                    return True
        return False

    for url in ("/", "/static/app.js", "/openapi.yaml", "/api/v1/races", "/api/v1/stream", "/api/v1/ws"):
        assert routed(url), url
    for url in ("/metrics", "/healthz", "/readyz"):
        assert not routed(url), url
    # the gateway's routes are those (streams/gateway.py)
    src = (REPO / "streams" / "gateway.py").read_text()
    for route in ('"/metrics"', '"/static/{name}"', '"/openapi.yaml"', 'API + "/stream"'):
        assert route in src


def test_faust_data_dir_is_passed_where_the_volumes_are():
    from streams.cli import build_parser

    parser = build_parser()
    services = compose()["services"]
    cmds = [("compose " + n, s["command"]) for n, s in services.items() if n.startswith("worker-")]
    for o in k8s_by_kind("Deployment", "worker"):
        (c,) = o["spec"]["template"]["spec"]["containers"]
        cmds.append(("k8s", c["args"]))
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        vols = {v["name"]: v for v in o["spec"]["template"]["spec"]["volumes"]}
        data_dir = c["args"][c["args"].index("--data-dir") + 1]
        assert data_dir.startswith(mounts["data"] + "/"), "Faust's data dir must be on the data emptyDir"
        assert "emptyDir" in vols["data"]
    for where, cmd in cmds:
        args = parser.parse_args(cmd)
        assert args.data_dir == "/var/lib/lapstream/data", where
