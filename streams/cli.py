"""``wagate``: run the gate and its tools. Settings come from the environment (see the README)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from pydantic import ValidationError

from streams.settings import Settings

EPILOG = """\
configuration: environment variables, e.g. KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092,
WAGATE_PARTITIONS=4, WAGATE_TOPIC_PREFIX=, WAGATE_DATA_DIR=var/wagate (full list in README.md)
"""

WEBHOOK_HELP = """\
Answers Meta's webhook calls on WAGATE_WEBHOOK_HOST:WAGATE_WEBHOOK_PORT (default 127.0.0.1:8080),
path WAGATE_WEBHOOK_PATH (default /webhook):
  GET   the verification handshake: echoes hub.challenge when hub.verify_token equals
        WAGATE_WEBHOOK_VERIFY_TOKEN (403 otherwise; unset: always 403; set but empty: refused at start)
  POST  checks X-Hub-Signature-256 against WAGATE_WEBHOOK_APP_SECRET (required; 401 missing,
        403 wrong), then writes the body byte for byte to wa.webhooks with acks=all before it answers
        200; 503 when Kafka does not ack within WAGATE_WEBHOOK_PRODUCE_TIMEOUT_SECONDS (Meta retries);
        413 over WAGATE_WEBHOOK_MAX_BODY_BYTES
  Access log lines name the route, never the path or query (the token, identifiers).
GET /metrics and GET /health are served apart, on WAGATE_WEBHOOK_ADMIN_HOST:WAGATE_WEBHOOK_ADMIN_PORT
(default 127.0.0.1:8081), so that only Prometheus and the kubelet need to reach them.
The gate's workers normalize wa.webhooks into wa.inbound and wa.templates.
"""


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        lines = [
            # A rule across several settings has no single field: its message names the variables.
            f"  WAGATE_{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            if err["loc"]
            else f"  {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        ]
        sys.exit("wagate: invalid configuration:\n" + "\n".join(lines))


def _check_kafka(settings: Settings, command: str = "wagate", start_when_unreachable: bool = False) -> None:
    """Reach and log in to Kafka before anything starts; exit naming the setting to fix. With
    ``start_when_unreachable``, only a refusal (login, TLS trust) exits: Kafka merely away is waited for."""
    from streams.kafka_security import KafkaConnectionFailed, check_connection

    try:
        asyncio.run(check_connection(settings))
    except KafkaConnectionFailed as exc:
        if start_when_unreachable and not exc.misconfigured:
            print(f"{command}: Kafka not reachable yet ({exc}); answering 503 until it is", file=sys.stderr)
            return
        hint = (
            " (start one with `make kafka-start`)" if settings.kafka_security_protocol == "PLAINTEXT" else ""
        )
        sys.exit(f"{command}: cannot use Kafka{hint}: {exc}")


def _ensure_topics(settings: Settings) -> list[str]:
    from aiokafka.errors import KafkaConnectionError

    from streams.admin import TopologyError, ensure_topics
    from streams.topology import topology

    _check_kafka(settings)
    try:
        return asyncio.run(ensure_topics(settings, topology(settings)))
    except KafkaConnectionError:
        sys.exit(
            f"wagate: cannot reach Kafka at KAFKA_BOOTSTRAP_SERVERS={settings.kafka_bootstrap_servers}: "
            "start a broker (`make kafka-start`) or point the variable at one"
        )
    except TopologyError as exc:
        sys.exit(f"wagate: {exc}")


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings()
    from streams.app import create_app
    from streams.faust_private import FaustIncompatible, check_faust

    try:
        check_faust()  # before anything reaches Kafka: a wrong faust-streaming fails here, by name
    except FaustIncompatible as exc:
        sys.exit(f"wagate: {exc}")
    _ensure_topics(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # RocksDB does not create parent folders
    from streams.worker import GateWorker

    gate = create_app(settings)
    GateWorker(
        gate.app,
        loglevel=settings.log_level.upper(),
        data_dir=settings.data_dir,
        committed_state_only=settings.processing_guarantee == "exactly_once",
        log_format=settings.log_format,
    ).execute_from_commandline()
    return 0


def cmd_webhook(args: argparse.Namespace) -> int:
    settings = _settings()
    from streams.web.receiver import check_secrets, run_receiver

    try:
        check_secrets(settings)
    except ValueError as exc:
        sys.exit(f"wagate webhook: {exc}")
    # Kafka away: the receiver starts anyway and answers 503 (Meta retries) until it is back; a login
    # or TLS trust to fix stops it (answering 503 for ever would hide it).
    _check_kafka(settings, "wagate webhook", start_when_unreachable=True)

    try:
        run_receiver(settings)
    except ValueError as exc:
        sys.exit(f"wagate webhook: {exc}")
    return 0


def cmd_templates_load(args: argparse.Namespace) -> int:
    import json
    import time

    from pydantic import ValidationError as RecordError

    from streams.client import GateClient
    from streams.policy.templates import records_from_listing, template_key

    settings = _settings()
    try:
        document = json.loads(Path(args.file).read_text())
        records = records_from_listing(document, args.waba_id, time.time())
    except (OSError, ValueError, RecordError) as exc:
        sys.exit(f"wagate templates load: {args.file}: {exc}")

    async def produce() -> None:
        async with GateClient(settings) as client:
            for record in records:
                key = template_key(record.waba_id, record.name, record.language)
                await client.produce(client.topo.templates.name, key, record.model_dump(exclude_none=True))

    _ensure_topics(settings)
    asyncio.run(produce())
    print(f"{len(records)} template(s) of account {args.waba_id} written to the registry")
    return 0


def cmd_window(args: argparse.Namespace) -> int:
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    settings = _settings()
    path = "/windows/" + "/".join(
        urllib.parse.quote(part, safe=":") for part in (args.phone_number_id, args.user)
    )
    url = f"http://{settings.web_host}:{settings.web_port}{path}"
    token = settings.window_api_secret()
    if token is None:
        sys.exit(
            "wagate window: WAGATE_WINDOW_API_TOKEN (or WAGATE_WINDOW_API_TOKEN_FILE) is not set: the "
            "window API needs the token the workers were given"
        )
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token.decode()}"})
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            report = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        sys.exit(f"wagate window: {url} answered {exc.code}: {exc.read().decode(errors='replace')}")
    except (urllib.error.URLError, OSError) as exc:
        sys.exit(
            f"wagate window: no gate worker answered at {url} ({exc}); start one (`make run`) or set "
            "WAGATE_WEB_HOST/WAGATE_WEB_PORT to a worker's"
        )
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['contact']}: {report['state']}")
    print(report["summary"])
    identifiers = report.get("identifiers") or []
    if len(identifiers) > 1 or report.get("asked_as"):
        asked = f" (asked as {report['asked_as']})" if report.get("asked_as") else ""
        print(f"Identifiers of this contact: {', '.join(identifiers)}{asked}")
    if report.get("free_entry_point_until"):
        print(f"Free entry point until {report['free_entry_point_until']:.0f} (messages are not billed).")
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """The container's HEALTHCHECK: /health of whichever process runs here (a worker on its admin or
    web port, the receiver on its admin port), asked on 127.0.0.1."""
    import urllib.error
    import urllib.request

    settings = _settings()
    ports = [settings.admin_port or settings.web_port, settings.webhook_admin_port]
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=args.timeout) as response:
                if response.status == 200:
                    print(f"healthy: /health on port {port}")
                    return 0
        except (urllib.error.URLError, OSError):
            continue
    print(f"unhealthy: no /health answered on 127.0.0.1 ports {ports}", file=sys.stderr)
    return 1


def cmd_dashboard(args: argparse.Namespace) -> int:
    from streams.dashboard import DASHBOARD_PATH, render

    path = Path(args.out) if args.out else DASHBOARD_PATH
    rendered = render()
    if args.check:
        if not path.exists() or path.read_text() != rendered:
            print(f"{path} differs from streams/dashboard.py: run `wagate dashboard`", file=sys.stderr)
            return 1
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(rendered)
    print(path)
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    settings = _settings()
    from streams.topology import topology

    created = _ensure_topics(settings)
    for spec in topology(settings).all():
        mark = "created" if spec.name in created else "exists"
        print(f"{mark:8} {spec.name} partitions={spec.partitions}{' compacted' if spec.compacted else ''}")
    return 0


def cmd_schemas(args: argparse.Namespace) -> int:
    from streams.schemas import check_schemas, write_schemas

    if args.check:
        stale = check_schemas(Path(args.dir))
        if stale:
            print("schemas out of date, run `wagate schemas`: " + ", ".join(stale), file=sys.stderr)
            return 1
        print("schemas up to date")
        return 0
    for path in write_schemas(Path(args.dir)):
        print(path)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from streams.demo import run_demo

    return asyncio.run(run_demo(_settings(), timeout=args.timeout))


def cmd_bench(args: argparse.Namespace) -> int:
    from streams.bench import SYSTEMS, WARMUP_REQUESTS, run_bench

    systems = tuple(args.systems.split(",")) if args.systems else tuple(SYSTEMS)
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        sys.exit(f"wagate bench: unknown --systems {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")

    return asyncio.run(
        run_bench(
            _settings(),
            requests=args.requests,
            contacts=args.contacts,
            out=args.out,
            systems=systems,
            warmup=WARMUP_REQUESTS if args.warmup is None else args.warmup,
        )
    )


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated whole numbers, e.g. 1,2,4; got {text!r}"
        ) from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"every count must be at least 1; got {text!r}")
    return counts


def cmd_bench_scale(args: argparse.Namespace) -> int:
    from streams.bench_scale import run_scale

    return asyncio.run(
        run_scale(_settings(), args.partitions, args.workers, args.requests, args.contacts, args.out)
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wagate",
        description="The WhatsApp customer-service-window gate for Kafka: every send request is routed to "
        "send, template or rejected against the contact's 24 h window.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser(
        "worker", help="create missing topics, then run a gate worker in the foreground"
    ).set_defaults(func=cmd_worker)
    sub.add_parser(
        "webhook",
        help="run the webhook receiver: Meta's verified POSTs -> wa.webhooks",
        description=WEBHOOK_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).set_defaults(func=cmd_webhook)
    health = sub.add_parser(
        "health",
        help="exit 0 if the worker or receiver in this container answers /health (the image's HEALTHCHECK)",
        description="Asks 127.0.0.1 on WAGATE_ADMIN_PORT (or WAGATE_WEB_PORT) for a worker, then "
        "WAGATE_WEBHOOK_ADMIN_PORT for the receiver; exit 0 when either answers 200.",
    )
    health.add_argument("--timeout", type=float, default=3.0)
    health.set_defaults(func=cmd_health)
    dashboard = sub.add_parser("dashboard", help="write the Grafana dashboard JSON from streams/dashboard.py")
    dashboard.add_argument("--out", default=None, help="default: deploy/grafana/dashboards/wagate.json")
    dashboard.add_argument("--check", action="store_true", help="exit 1 if the file differs from the code")
    dashboard.set_defaults(func=cmd_dashboard)
    window = sub.add_parser(
        "window",
        help="show a contact's window: open until when, or template required and why",
        description="Asks a running worker (WAGATE_WEB_HOST:WAGATE_WEB_PORT; it forwards to the worker "
        "that owns the contact). For a group, USER is group:<group_id>.",
    )
    window.add_argument("phone_number_id")
    window.add_argument(
        "user",
        help="wa_id, business-scoped user id or parent BSUID (any identifier of the contact), or "
        "group:<group_id>",
    )
    window.add_argument("--json", action="store_true", help="print the API's JSON answer")
    window.add_argument("--timeout", type=float, default=10.0)
    window.set_defaults(func=cmd_window)
    templates = sub.add_parser("templates", help="manage the template registry")
    templates_sub = templates.add_subparsers(dest="templates_command", required=True, metavar="ACTION")
    load = templates_sub.add_parser(
        "load",
        help="load a snapshot of Meta's GET /{waba_id}/message_templates answer into wa.templates",
        description="Writes one TemplateRecord per entry of the file's 'data' list to wa.templates "
        "(source sync, updated_at now: it overrides older webhook updates). Save the file with e.g. "
        "curl 'https://graph.facebook.com/v21.0/<WABA_ID>/message_templates?limit=1000' "
        "-H 'Authorization: Bearer <token>' > templates.json",
    )
    load.add_argument("file", help="the JSON Meta returned")
    load.add_argument("--waba-id", required=True, help="the WhatsApp Business Account id the file belongs to")
    load.set_defaults(func=cmd_templates_load)
    sub.add_parser("topics", help="create the gate's topics (idempotent) and list them").set_defaults(
        func=cmd_topics
    )

    schemas = sub.add_parser("schemas", help="write the JSON Schema of every payload (from the models)")
    schemas.add_argument("--dir", default="schemas", help="output folder (default: schemas)")
    schemas.add_argument("--check", action="store_true", help="exit 1 if the files differ from the models")
    schemas.set_defaults(func=cmd_schemas)

    demo = sub.add_parser(
        "demo", help="replay the store-hours timeline against a running gate, print decisions"
    )
    demo.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the decisions")
    demo.set_defaults(func=cmd_demo)

    bench = sub.add_parser(
        "bench",
        help="measure the gate against the Quix Streams gate and a bare aiokafka loop; prints one JSON "
        "object",
    )
    bench.add_argument("--requests", type=int, default=200_000)
    bench.add_argument("--contacts", type=int, default=50_000)
    bench.add_argument("--out", default=None, help="also write the JSON result to this file")
    bench.add_argument(
        "--systems",
        default=None,
        help="comma-separated subset to measure, of reference, quix, quix_at_least_once, gate, "
        "gate_at_least_once, gate_unordered, gate_garbage, gate_limited (default: all; ratios are "
        "printed only for all of them; a subset is for profiling one system, e.g. --systems gate)",
    )
    bench.add_argument(
        "--warmup",
        type=int,
        default=None,  # streams.bench.WARMUP_REQUESTS (not imported to build the parser)
        metavar="REQUESTS",
        help="first run the default gate on a workload of this many requests of its own, then 40 s of "
        "paced requests, reported as broker_warmup and compared with nothing: a freshly started "
        "broker's JVM compiles its code under that load, not under the systems measured (default "
        "20000; 0: no warm-up)",
    )
    bench.set_defaults(func=cmd_bench)

    scale = sub.add_parser(
        "bench-scale",
        help="measure 1, 2 and 4 workers on 8 and 16 partitions (CPU and Kafka requests per decision, "
        "rebalance pauses); needs a 3-broker cluster (make bench-scale starts one)",
    )
    scale.add_argument("--partitions", type=_counts, default=[8, 16], help="partition counts (default 8,16)")
    scale.add_argument("--workers", type=_counts, default=[1, 2, 4], help="worker counts (default 1,2,4)")
    scale.add_argument("--requests", type=int, default=60_000)
    scale.add_argument("--contacts", type=int, default=15_000)
    scale.add_argument("--out", default=None, help="also write the JSON result to this file")
    scale.set_defaults(func=cmd_bench_scale)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
