"""The local services (Kafka in KRaft mode from Maven jars, the real redis-server) for development and tests.

`fenxiao stack up|down|status` calls `run_command`; test fixtures use the functions below with an isolated
`StackConfig` (own var dir and ports), so a test session never touches the developer's stack.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import redis
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, for_code
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from streams import names
from streams.settings import Settings, get_settings
from streams.state import redis_conn

KAFKA = "kafka"
REDIS = "redis"

# The single pin of the Kafka version (and of the jars Maven fetches) lives in this tracked pom.
POM_PATH = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "pom.xml"
TOOLS_POM_PATH = POM_PATH.parent / "tools-pom.xml"  # Kafka's console tools, same version, for the tests
_POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}

MIN_JAVA = 17
_JAVA_HINT = "apt-get install -y openjdk-17-jre-headless"
KAFKA_HEAP = ("-Xms256m", "-Xmx1g")
# The local broker lives minutes (tests, demo, benchmark), not days: C2's JIT compiling was half of its CPU in
# the benchmark's measured phases (docs/performance.md, 2026-12-07); C1 alone compiles at a fraction of that.
# FENXIAO_KAFKA_JVM_OPTS=-XX:TieredStopAtLevel=4 gives a long-lived local broker C2 back.
KAFKA_JIT = ("-XX:TieredStopAtLevel=1",)
_TOPIC_ALREADY_EXISTS = 36
_INVALID_REPLICATION_FACTOR = 38  # answered while the broker has not registered yet: retry
_PR_SET_PDEATHSIG = 1


class StackError(Exception):
    """A failure of the local stack, worded as what the user should do about it."""


def default_cache_dir() -> Path:
    """Where downloaded jars live, shared by every checkout and test session of this user."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fenxiao"


@dataclass(frozen=True)
class StackConfig:
    """Where one stack keeps its data and which local ports it listens on."""

    var_dir: Path
    cache_dir: Path = field(default_factory=default_cache_dir)
    kafka_port: int = 9092
    controller_port: int = 9093
    redis_port: int = 6379
    host: str = "127.0.0.1"
    # Test sessions set this so a killed pytest does not leave a 1 GB JVM behind (Linux only; the services
    # get SIGTERM when the thread that started them exits, so start them from the main thread).
    stop_with_parent: bool = False
    kafka_jvm_opts: tuple[str, ...] = ()  # after KAFKA_HEAP and KAFKA_JIT (FENXIAO_KAFKA_JVM_OPTS)

    @property
    def kafka_dir(self) -> Path:
        """Kafka's config, data, pid and log files."""
        return self.var_dir / KAFKA

    @property
    def redis_dir(self) -> Path:
        """Redis's config, AOF/RDB, pid and log files."""
        return self.var_dir / REDIS

    @property
    def bootstrap(self) -> str:
        """The FENXIAO_KAFKA value that reaches this stack's broker."""
        return f"{self.host}:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        """The FENXIAO_REDIS_URL value that reaches this stack's Redis."""
        return f"redis://{self.host}:{self.redis_port}/0"

    def pid_file(self, service: str) -> Path:
        """The pid file of `service` (kafka or redis)."""
        return self.var_dir / service / f"{service}.pid"

    def log_file(self, service: str) -> Path:
        """Where `service` writes its stdout/stderr, for humans and failure messages."""
        return self.var_dir / service / f"{service}.log"


@dataclass(frozen=True)
class ServiceStatus:
    """One row of `fenxiao stack status`."""

    service: str
    address: str
    pid: int | None
    running: bool
    answering: bool


# ---------------------------------------------------------------- addresses and config


def parse_kafka_address(bootstrap: str) -> tuple[str, int]:
    """Host and port of the first FENXIAO_KAFKA entry (the local stack has a single broker)."""
    first = bootstrap.split(",")[0].strip()
    if "://" in first:
        first = first.split("://", 1)[1]
    if not first:
        raise StackError(f"{names.ENV_KAFKA} is empty: set it to host:port, e.g. 127.0.0.1:9092")
    host, port = first, "9092"
    if first.startswith("["):
        host, _, rest = first[1:].partition("]")
        port = rest.lstrip(":") or port
    elif first.count(":") == 1:
        host, port = first.split(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise StackError(f"{names.ENV_KAFKA}={bootstrap!r} has no valid port: set it to host:port, e.g. 127.0.0.1:9092")
    return host, int(port)


def parse_redis_address(url: str) -> tuple[str, int]:
    """Host and port of a redis:// URL (the local stack serves TCP only, not unix sockets)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise StackError(f"{names.ENV_REDIS_URL} must be a redis://host:port/db URL, got scheme {parts.scheme!r}")
    try:
        port = parts.port or 6379
    except ValueError as e:
        raise StackError(f"{names.ENV_REDIS_URL} has an invalid port: {e}") from None
    return parts.hostname or "127.0.0.1", port


def _local_host(host: str, env: str, value: str) -> str:
    """The loopback address the stack binds, or an error when the setting points at another machine."""
    if host in ("127.0.0.1", "localhost"):
        return "127.0.0.1"
    raise StackError(
        f"{env}={value!r} points at {host}, not this machine: the local stack only runs on 127.0.0.1; "
        f"unset {env} or point it at 127.0.0.1"
    )


def config_from_settings(settings: Settings | None = None) -> StackConfig:
    """The developer's stack: var dir and ports from FENXIAO_VAR_DIR, FENXIAO_KAFKA and FENXIAO_REDIS_URL."""
    s = settings or get_settings()
    redis_url = s.redis_url.get_secret_value()
    k_host, k_port = parse_kafka_address(s.kafka)
    r_host, r_port = parse_redis_address(redis_url)
    host = _local_host(k_host, names.ENV_KAFKA, s.kafka)
    _local_host(r_host, names.ENV_REDIS_URL, f"redis://{r_host}:{r_port}")
    return StackConfig(
        var_dir=s.var_dir.resolve(),
        kafka_port=k_port,
        controller_port=k_port + 1,
        redis_port=r_port,
        host=host,
        kafka_jvm_opts=tuple(s.kafka_jvm_opts.split()),
    )


def pick_free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Distinct ports nobody listens on right now, so a test stack can run beside a developer's."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def kafka_version(pom: Path = POM_PATH) -> str:
    """The pinned Kafka version, read from the tracked pom so there is one place to bump it."""
    try:
        root = ET.parse(pom).getroot()
    except (OSError, ET.ParseError) as e:
        raise StackError(f"cannot read the Kafka pom {pom}: {e}; run fenxiao from a checkout of the repo") from None
    node = root.find("m:properties/m:kafka.version", _POM_NS)
    if node is None or not (node.text or "").strip():
        raise StackError(f"{pom} has no <kafka.version> property: restore it from git")
    return (node.text or "").strip()


def kafka_server_properties(cfg: StackConfig) -> str:
    """server.properties of a single combined broker+controller, tuned for one machine and fast tests."""
    data = cfg.kafka_dir / "data"
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{cfg.host}:{cfg.controller_port}",
        "listeners": f"PLAINTEXT://{cfg.host}:{cfg.kafka_port},CONTROLLER://{cfg.host}:{cfg.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{cfg.host}:{cfg.kafka_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data),
        "num.partitions": "4",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "num.network.threads": "2",
        "num.io.threads": "4",
        "num.recovery.threads.per.data.dir": "1",
        "log.cleaner.dedupe.buffer.size": str(32 * 1024 * 1024),
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def kafka_log4j2_properties() -> str:
    """Log4j2 config: warnings and the start/stop lines only, to stdout (which goes to kafka.log)."""
    lines = [
        "status = warn",
        "appender.out.type = Console",
        "appender.out.name = STDOUT",
        "appender.out.target = SYSTEM_OUT",
        "appender.out.layout.type = PatternLayout",
        "appender.out.layout.pattern = [%d] %p %m (%c)%n",
        "rootLogger.level = WARN",
        "rootLogger.appenderRef.out.ref = STDOUT",
    ]
    for i, name in enumerate(("kafka.server.KafkaRaftServer", "kafka.server.SharedServer")):
        lines += [f"logger.l{i}.name = {name}", f"logger.l{i}.level = INFO"]
    return "\n".join(lines) + "\n"


def redis_conf(cfg: StackConfig) -> str:
    """redis.conf: loopback only, data in var_dir/redis, every write in the append-only file."""
    return "".join(
        f"{line}\n"
        for line in (
            f"bind {cfg.host}",
            f"port {cfg.redis_port}",
            "protected-mode yes",
            "daemonize no",
            'logfile ""',
            f'dir "{cfg.redis_dir}"',
            "appendonly yes",
            "appendfsync everysec",
            # The AOF is the durability; a snapshot an hour is a backup. Each snapshot or AOF rewrite forks and
            # writes the whole dataset: at the defaults (save 60 10000, rewrite every 64 MB of growth) a backlog
            # forked every 13 s and spent a sixth of Redis's CPU on it (docs/decisions.md, "Redis persistence").
            "save 3600 1",
            "auto-aof-rewrite-min-size 1gb",
        )
    )


def new_cluster_id() -> str:
    """A Kafka cluster id in Kafka's own format: url-safe base64 of a random UUID, not starting with '-'."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


# ---------------------------------------------------------------- processes


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (from /proc): with the pid it names one process, even after pid reuse."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19] if len(fields) > 19 and fields[0] != "Z" else None


def _read_pid(path: Path) -> tuple[int, str] | None:
    """The (pid, start time) stored in `path`, or None when there is no usable pid file."""
    try:
        pid, _, started = path.read_text().strip().partition(" ")
        return int(pid), started
    except (OSError, ValueError):
        return None


def _write_pid(path: Path, pid: int) -> None:
    """Record `pid` with its start time, so a later check cannot mistake a new process with a reused pid for it."""
    path.write_text(f"{pid} {_start_time(pid) or ''}".strip() + "\n")


def _alive(pid: int, started: str) -> bool:
    """Whether the process recorded as (pid, start time) still runs (a zombie or a reused pid does not count)."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if not Path("/proc/self/stat").exists():
        return True
    now = _start_time(pid)
    return now is not None and (not started or now == started)


def running_pid(cfg: StackConfig, service: str) -> int | None:
    """The pid of this stack's `service` if it runs; a stale pid file is removed."""
    path = cfg.pid_file(service)
    record = _read_pid(path)
    if record is None:
        return None
    if _alive(*record):
        return record[0]
    path.unlink(missing_ok=True)
    return None


def _port_taken(host: str, port: int) -> bool:
    """Whether another process already listens on (host, port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _require_free(host: str, port: int, what: str, env: str) -> None:
    """Refuse to start on a port that another process holds, saying how to get out of the way."""
    if _port_taken(host, port):
        raise StackError(f"port {port} ({what}) is taken by another process: stop it or set {env}")


def _log_tail(path: Path, lines: int = 25) -> str:
    """The end of a service log, to put in an error message."""
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"(no log at {path})"
    return f"last lines of {path}:\n" + "\n".join(text)


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent dies (Linux), so test stacks never leak."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _spawn(cfg: StackConfig, service: str, argv: list[str], cwd: Path) -> int:
    """Start `argv` detached (own session, output to the service log) and record its pid."""
    log_path = cfg.log_file(service)
    with open(log_path, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {service}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if cfg.stop_with_parent and sys.platform == "linux" else None,
        )
    _write_pid(cfg.pid_file(service), proc.pid)
    return proc.pid


# ---------------------------------------------------------------- Kafka


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise the one-time jar fetch between concurrent processes (make deps, two test sessions)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_kafka_jars(cfg: StackConfig) -> Path:
    """The directory of Kafka's jars, fetched once with Maven into the cache; later calls only check a marker."""
    version = kafka_version()
    pom_bytes = POM_PATH.read_bytes()
    digest = hashlib.sha256(pom_bytes).hexdigest()[:16]
    return _maven_jars(cfg, pom_bytes, digest, f"kafka-{version}", f"kafka_2.13-{version}.jar", f"Kafka {version}", [])


def ensure_kafka_tools_jars(cfg: StackConfig) -> Path:
    """The directory of kafka-tools and its runtime jars (console producer/consumer), fetched once like the broker's."""
    version = kafka_version()
    pom_bytes = TOOLS_POM_PATH.read_bytes()
    digest = hashlib.sha256(pom_bytes + version.encode()).hexdigest()[:16]
    return _maven_jars(
        cfg,
        pom_bytes,
        digest,
        f"kafka-tools-{version}",
        f"kafka-tools-{version}.jar",
        f"kafka-tools {version}",
        [f"-Dkafka.version={version}"],
    )


def _maven_jars(
    cfg: StackConfig, pom_bytes: bytes, digest: str, name: str, probe: str, what: str, extra: list[str]
) -> Path:
    """`mvn dependency:copy-dependencies` of one pom into cache_dir/name/libs, once per pom digest, under a lock."""
    home = cfg.cache_dir / name
    libs, marker = home / "libs", home / ".complete"

    def complete() -> bool:
        return marker.exists() and marker.read_text().strip() == digest and (libs / probe).exists()

    if complete():
        return libs
    with _file_lock(cfg.cache_dir / f"{name}.lock"):
        if complete():
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise StackError(
                f"mvn (Maven) is not installed; it fetches the {what} jars once: apt-get install -y maven, then retry"
            )
        home.mkdir(parents=True, exist_ok=True)
        marker.unlink(missing_ok=True)
        work_pom = home / "pom.xml"
        work_pom.write_bytes(pom_bytes)
        partial = home / "libs.partial"
        shutil.rmtree(partial, ignore_errors=True)
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(work_pom),
            f"-Dmaven.repo.local={cfg.cache_dir / 'm2'}",
            *extra,
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={partial}",
        ]
        try:
            res = subprocess.run(cmd, cwd=home, capture_output=True, text=True, timeout=1800, check=False)
        except subprocess.TimeoutExpired:
            raise StackError(f"fetching the {what} jars with Maven took over 30 minutes: check the network") from None
        if res.returncode != 0 or not (partial / probe).exists():
            out = "\n".join((res.stdout + res.stderr).splitlines()[-20:])
            raise StackError(
                f"fetching {what} jars with Maven failed (is Maven Central reachable?): {' '.join(cmd)}\n{out}"
            )
        shutil.rmtree(libs, ignore_errors=True)
        partial.rename(libs)
        marker.write_text(digest + "\n")
    return libs


# Main classes of Kafka's console tools in kafka-tools (what bin/kafka-console-*.sh run).
CONSOLE_PRODUCER = "org.apache.kafka.tools.ConsoleProducer"
CONSOLE_CONSUMER = "org.apache.kafka.tools.consumer.ConsoleConsumer"
TOOLS_HEAP = ("-Xms32m", "-Xmx256m")


def kafka_tool(
    main_class: str,
    args: list[str],
    *,
    stdin: bytes | None = None,
    timeout: float = 120.0,
    cache_dir: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run one of Kafka's own Java tools (e.g. CONSOLE_PRODUCER) with java -cp, as a shop's Java service would."""
    cfg = StackConfig(var_dir=Path("var"), cache_dir=cache_dir or default_cache_dir())
    libs = ensure_kafka_tools_jars(cfg)
    jvm = [check_java(), *TOOLS_HEAP, "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true"]
    cmd = [*jvm, "-cp", str(libs / "*"), main_class, *args]
    try:
        return subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise StackError(
            f"{main_class} ran over {timeout:.0f}s: {(e.stderr or b'').decode(errors='replace')[-2000:]}"
        ) from None


def check_java() -> str:
    """A java of at least version 17 (Kafka 4 requires it), or an error saying what to install."""
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        raise StackError(f"java is not installed: Kafka needs Java {MIN_JAVA}+ ({_JAVA_HINT})")
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = 0 if m is None else int(m.group(2) if m.group(1) == "1" and m.group(2) else m.group(1))
    if major < MIN_JAVA:
        raise StackError(f"{java} is Java {major or '?'}; Kafka needs Java {MIN_JAVA}+ ({_JAVA_HINT})")
    return java


def _require_kafka_ports(cfg: StackConfig) -> None:
    """Refuse early when the broker or controller port is held by someone else."""
    _require_free(cfg.host, cfg.kafka_port, "Kafka", names.ENV_KAFKA)
    _require_free(cfg.host, cfg.controller_port, f"Kafka controller, {names.ENV_KAFKA} port + 1", names.ENV_KAFKA)


def kafka_jvm(cfg: StackConfig, java: str, log4j: Path) -> list[str]:
    """The broker's java command up to the classpath: the stack's defaults, then the operator's options (last wins)."""
    return [
        java,
        *KAFKA_HEAP,
        *KAFKA_JIT,
        *cfg.kafka_jvm_opts,
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        "-Dlog4j2.shutdownHookEnabled=false",
        f"-Dlog4j2.configurationFile={log4j}",
    ]


def start_kafka(cfg: StackConfig) -> int:
    """Start the single-node KRaft broker (formatting its storage the first time); returns its pid."""
    pid = running_pid(cfg, KAFKA)
    if pid is not None:
        return pid
    _require_kafka_ports(cfg)
    libs = ensure_kafka_jars(cfg)
    kdir = cfg.kafka_dir
    (kdir / "data").mkdir(parents=True, exist_ok=True)
    props = kdir / "server.properties"
    props.write_text(kafka_server_properties(cfg))
    log4j = kdir / "log4j2.properties"
    log4j.write_text(kafka_log4j2_properties())
    jvm = kafka_jvm(cfg, check_java(), log4j)
    classpath = ["-cp", str(libs / "*")]

    if not (kdir / "data" / "meta.properties").exists():
        id_file = kdir / "cluster.id"
        if not id_file.exists():
            id_file.write_text(new_cluster_id() + "\n")
        fmt = [*jvm, *classpath, "kafka.tools.StorageTool", "format", "--ignore-formatted"]
        fmt += [f"--cluster-id={id_file.read_text().strip()}", f"--config={props}"]
        res = subprocess.run(fmt, cwd=kdir, capture_output=True, text=True, timeout=300, check=False)
        if res.returncode != 0:
            raise StackError(f"formatting Kafka storage in {kdir / 'data'} failed:\n{res.stdout}{res.stderr}")
    return _spawn(cfg, KAFKA, [*jvm, *classpath, "kafka.Kafka", str(props)], kdir)


async def _kafka_answers(bootstrap: str, timeout: float) -> bool:
    """Whether a broker at `bootstrap` answers a metadata request and lists at least one live broker."""
    host, port = parse_kafka_address(bootstrap)
    if not _tcp_open(host, port, timeout):
        return False
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000), client_id="fenxiao-stack"
    )
    try:
        await asyncio.wait_for(admin.start(), timeout)
        info = await asyncio.wait_for(admin.describe_cluster(), timeout)
        return bool(info.get("brokers"))
    except (KafkaError, OSError, TimeoutError):
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


def kafka_answers(bootstrap: str, timeout: float = 3.0) -> bool:
    """Synchronous `_kafka_answers` for the CLI and fixtures (not callable from inside an event loop)."""
    return asyncio.run(_kafka_answers(bootstrap, timeout))


def _tcp_open(host: str, port: int, timeout: float) -> bool:
    """Whether something accepts TCP connections on (host, port): a cheap first probe that logs nothing."""
    try:
        with socket.create_connection((host, port), timeout=min(timeout, 1.0)):
            return True
    except OSError:
        return False


def step_partitions(partitions: int) -> int:
    """Partitions of fenxiao.order-steps, the credit stage's unit of sharing: FENXIAO_PARTITIONS, or 12 if more."""
    return max(partitions, names.ORDER_STEPS_MIN_PARTITIONS)


def topic_specs(partitions: int) -> list[NewTopic]:
    """Every input and output topic of streams/names.py; bindings is compacted (the durable referral tree).

    Input topics keep everything (retention.ms=-1): they are the system of record that Redis is rebuilt from.
    fenxiao.order-steps gets `step_partitions`: the lease holder credits nothing while others do, so 4 workers
    share it 3 ways, and 4 partitions would give one of them half.
    """
    specs = []
    for name in (*names.INPUT_TOPICS, *names.OUTPUT_TOPICS, *names.INTERNAL_TOPICS):
        configs = {"cleanup.policy": "compact"} if name == names.BINDINGS else {}
        if name in names.INPUT_TOPICS:
            configs = {"retention.ms": "-1", "retention.bytes": "-1"}
        count = step_partitions(partitions) if name == names.ORDER_STEPS else partitions
        specs.append(NewTopic(name, count, 1, topic_configs=configs))
    return specs


async def create_topics(bootstrap: str, partitions: int, timeout: float = 30.0) -> list[str]:
    """Create the missing topics; returns the ones created now (existing topics are left as they are)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000), client_id="fenxiao-stack"
    )
    deadline = time.monotonic() + timeout
    created: list[str] = []
    try:
        await admin.start()
        while True:
            existing = set(await admin.list_topics())
            todo = [t for t in topic_specs(partitions) if t.name not in existing]
            if not todo:
                await _wait_for_leaders(admin, bootstrap, deadline)
                return created
            resp = await admin.create_topics(todo, timeout_ms=int(timeout * 1000))
            retry = False
            for topic, code, *rest in resp.topic_errors:
                if code == 0:
                    created.append(topic)
                elif code == _TOPIC_ALREADY_EXISTS:
                    continue
                elif code == _INVALID_REPLICATION_FACTOR or for_code(code).retriable:
                    retry = True
                else:
                    detail = rest[0] if rest and rest[0] else for_code(code).__name__
                    raise StackError(f"cannot create topic {topic} on {bootstrap}: {detail}")
            if not retry:
                await _wait_for_leaders(admin, bootstrap, deadline)
                return created
            if time.monotonic() > deadline:
                raise StackError(f"Kafka at {bootstrap} kept refusing to create topics for {timeout:.0f}s")
            await asyncio.sleep(0.5)
    except KafkaError as e:
        raise StackError(f"cannot create topics on {bootstrap}: {e!r}; is Kafka up? (fenxiao stack status)") from None
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


async def _wait_for_leaders(admin: AIOKafkaAdminClient, bootstrap: str, deadline: float) -> None:
    """Return once every partition has a leader that serves it, so the first produce after a create does not bounce."""
    wanted = [t.name for t in topic_specs(1)]
    while True:
        described = await admin.describe_topics(wanted)
        ready = {
            t["topic"]
            for t in described
            if t["error_code"] == 0
            and t["partitions"]
            and all(p["error_code"] == 0 and p["leader"] >= 0 for p in t["partitions"])
        }
        if ready >= set(wanted):
            break
        if time.monotonic() > deadline:
            raise StackError(f"topics {sorted(set(wanted) - ready)} on {bootstrap} have no partition leader yet")
        await asyncio.sleep(0.2)
    # Metadata can name a leader a moment before that broker hosts the partition; asking each leader for
    # its end offset waits out that moment (aiokafka retries NOT_LEADER internally).
    partitions = [TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"]]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, client_id="fenxiao-stack")
    await consumer.start()
    try:
        await asyncio.wait_for(consumer.end_offsets(partitions), max(1.0, deadline - time.monotonic()))
    except TimeoutError:
        raise StackError(f"the partition leaders on {bootstrap} did not answer offset requests in time") from None
    finally:
        await consumer.stop()


async def recreate_topics(bootstrap: str, partitions: int, timeout: float = 30.0) -> None:
    """Delete every contract topic and create it again empty (demo resets and test isolation)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="fenxiao-stack")
    await admin.start()
    try:
        every = (*names.INPUT_TOPICS, *names.OUTPUT_TOPICS, *names.INTERNAL_TOPICS)
        doomed = [t for t in every if t in set(await admin.list_topics())]
        if doomed:
            await admin.delete_topics(doomed)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and set(doomed) & set(await admin.list_topics()):
            await asyncio.sleep(0.2)
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    for attempt in range(50):
        try:
            await create_topics(bootstrap, partitions)
            return
        except StackError:
            if attempt == 49:
                raise
            await asyncio.sleep(0.3)


def ensure_topics(bootstrap: str, partitions: int) -> list[str]:
    """Synchronous `create_topics` for the CLI and fixtures (not callable from inside an event loop)."""
    return asyncio.run(create_topics(bootstrap, partitions))


# ---------------------------------------------------------------- Redis


def _redis_server() -> str:
    """The redis-server executable, or an error saying how to install it."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise StackError("redis-server is not installed: run `make deps` (it installs the Debian package redis-server)")
    return exe


def start_redis(cfg: StackConfig) -> int:
    """Start redis-server with an append-only file under var_dir/redis; returns its pid."""
    pid = running_pid(cfg, REDIS)
    if pid is not None:
        return pid
    exe = _redis_server()
    _require_free(cfg.host, cfg.redis_port, "Redis", names.ENV_REDIS_URL)
    cfg.redis_dir.mkdir(parents=True, exist_ok=True)
    conf = cfg.redis_dir / "redis.conf"
    conf.write_text(redis_conf(cfg))
    return _spawn(cfg, REDIS, [exe, str(conf)], cfg.redis_dir)


def redis_answers(url: str, timeout: float = 2.0) -> bool:
    """Whether Redis at `url` answers PING."""
    client = redis_conn.connect(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


# ---------------------------------------------------------------- whole stack


def wait_ready(cfg: StackConfig, timeout: float = 120.0) -> None:
    """Block until Kafka serves metadata and Redis answers PING; fail early, with the log, if one dies."""
    deadline = time.monotonic() + timeout
    pending = {KAFKA, REDIS}
    while pending:
        for service in sorted(pending):
            pid_known = cfg.pid_file(service).exists()
            if pid_known and running_pid(cfg, service) is None:
                raise StackError(f"{service} exited during startup; {_log_tail(cfg.log_file(service))}")
            ok = kafka_answers(cfg.bootstrap) if service == KAFKA else redis_answers(cfg.redis_url)
            if ok:
                pending.discard(service)
        if not pending:
            return
        if time.monotonic() > deadline:
            tails = "\n".join(_log_tail(cfg.log_file(s)) for s in sorted(pending))
            raise StackError(f"{', '.join(sorted(pending))} not answering after {timeout:.0f}s; {tails}")
        time.sleep(0.3)


def stop(cfg: StackConfig, timeout: float = 30.0, services: tuple[str, ...] = (KAFKA, REDIS)) -> dict[str, str]:
    """SIGTERM the services (both by default), wait, then SIGKILL what is left; returns what happened per service."""
    procs: dict[str, tuple[int, str]] = {}
    for service in services:
        record = _read_pid(cfg.pid_file(service))
        if record is not None and _alive(*record):
            procs[service] = record
    outcome = {s: "not running" for s in services if s not in procs}
    for pid, _ in procs.values():
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(*r) for r in procs.values()):
        time.sleep(0.1)
    for service, (pid, started) in procs.items():
        if _alive(pid, started):
            _signal(pid, signal.SIGKILL)
            kill_deadline = time.monotonic() + 5
            while time.monotonic() < kill_deadline and _alive(pid, started):
                time.sleep(0.05)
            outcome[service] = f"killed (pid {pid}) after {timeout:.0f}s"
        else:
            outcome[service] = f"stopped (pid {pid})"
    for service in services:
        cfg.pid_file(service).unlink(missing_ok=True)
    return outcome


def _signal(pid: int, sig: signal.Signals) -> None:
    """Signal the service's whole process group (it leads its own session), or just the pid otherwise."""
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def status(cfg: StackConfig) -> list[ServiceStatus]:
    """Whether each service of this stack runs (pid) and answers (metadata request / PING)."""
    k_pid, r_pid = running_pid(cfg, KAFKA), running_pid(cfg, REDIS)
    return [
        ServiceStatus(KAFKA, cfg.bootstrap, k_pid, k_pid is not None, kafka_answers(cfg.bootstrap)),
        ServiceStatus(REDIS, cfg.redis_url, r_pid, r_pid is not None, redis_answers(cfg.redis_url)),
    ]


def _preflight(cfg: StackConfig) -> None:
    """Check every port and tool before starting anything, so a failed `up` leaves nothing half started."""
    if running_pid(cfg, KAFKA) is None:
        _require_kafka_ports(cfg)
        ensure_kafka_jars(cfg)
        check_java()
    if running_pid(cfg, REDIS) is None:
        _redis_server()
        _require_free(cfg.host, cfg.redis_port, "Redis", names.ENV_REDIS_URL)


def up(cfg: StackConfig, partitions: int, timeout: float = 120.0) -> dict[str, str]:
    """Start what is not running, wait until both answer, create missing topics; idempotent."""
    outcome: dict[str, str] = {}
    _preflight(cfg)
    for service, start in ((REDIS, start_redis), (KAFKA, start_kafka)):
        before = running_pid(cfg, service)
        pid = start(cfg)
        outcome[service] = f"already running (pid {pid})" if before == pid else f"started (pid {pid})"
    wait_ready(cfg, timeout)
    created = ensure_topics(cfg.bootstrap, partitions)
    outcome["topics"] = f"created {len(created)}" if created else "all present"
    return outcome


@dataclass(frozen=True)
class RunningStack:
    """A started stack as fixtures hand it out: where to reach it and how it was configured."""

    cfg: StackConfig
    partitions: int

    @property
    def bootstrap(self) -> str:
        """FENXIAO_KAFKA for this stack."""
        return self.cfg.bootstrap

    @property
    def redis_url(self) -> str:
        """FENXIAO_REDIS_URL for this stack."""
        return self.cfg.redis_url


@contextlib.contextmanager
def isolated_stack(var_dir: Path, partitions: int = 4, timeout: float = 120.0) -> Iterator[RunningStack]:
    """A private stack on free ports with its data in `var_dir`, stopped on exit even when startup fails."""
    kafka_port, controller_port, redis_port = pick_free_ports(3)
    cfg = StackConfig(
        var_dir=var_dir,
        kafka_port=kafka_port,
        controller_port=controller_port,
        redis_port=redis_port,
        stop_with_parent=True,
        kafka_jvm_opts=tuple(get_settings().kafka_jvm_opts.split()),
    )
    try:
        start_redis(cfg)
        start_kafka(cfg)
        wait_ready(cfg, timeout)
        ensure_topics(cfg.bootstrap, partitions)
        yield RunningStack(cfg, partitions)
    finally:
        stop(cfg)


@dataclass(frozen=True)
class ClusterStack:
    """A running stack whose Redis is a private Redis Cluster: same broker, another FENXIAO_REDIS_URL."""

    base: RunningStack
    redis_url: str

    @property
    def bootstrap(self) -> str:
        """FENXIAO_KAFKA for this stack."""
        return self.base.bootstrap

    @property
    def partitions(self) -> int:
        """Partitions per input topic."""
        return self.base.partitions


def _cluster_ok(host: str, port: int) -> bool:
    """Whether this node sees every slot served (CLUSTER INFO cluster_state:ok)."""
    client = redis.Redis(host=host, port=port, socket_timeout=2, socket_connect_timeout=2)
    try:
        info = client.execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]
        return isinstance(info, dict) and info.get("cluster_state") == "ok"
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _cluster_ports(count: int, host: str) -> list[int]:
    """Free ports whose cluster bus port (port + 10000) is free too, so every node can start."""
    for _ in range(50):
        ports = [p for p in pick_free_ports(count * 4, host) if p + 10_000 <= 65_535][:count]
        if len(ports) < count:
            continue
        try:
            for p in ports:
                with socket.socket() as s:
                    s.bind((host, p + 10_000))
        except OSError:
            continue
        return ports
    raise StackError(f"found no {count} free ports with free cluster bus ports (port + 10000) on {host}")


@contextlib.contextmanager
def redis_cluster(var_dir: Path, nodes: int = 3, host: str = "127.0.0.1", timeout: float = 60.0) -> Iterator[str]:
    """A private Redis Cluster of `nodes` primaries on free ports, slots spread by redis-cli; yields its URL.

    Each node is `redis-server --cluster-enabled yes` without persistence (a test or benchmark fixture);
    every process is killed on exit, even when start-up fails.
    """
    exe = _redis_server()
    cli = shutil.which("redis-cli")
    if cli is None:
        raise StackError("redis-cli not found: it comes with redis-server (apt-get install -y redis-tools)")
    ports = _cluster_ports(nodes, host)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            d = var_dir / f"redis-cluster-{port}"
            d.mkdir(parents=True, exist_ok=True)
            argv = [exe, "--bind", host, "--port", str(port), "--cluster-enabled", "yes"]
            argv += ["--cluster-config-file", str(d / "nodes.conf"), "--cluster-node-timeout", "5000"]
            argv += ["--dir", str(d), "--save", "", "--appendonly", "no", "--logfile", str(d / "redis.log")]
            procs.append(
                subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                )
            )
        deadline = time.monotonic() + timeout
        while not all(redis_answers(f"redis://{host}:{p}/0", timeout=1.0) for p in ports):
            if time.monotonic() > deadline or any(pr.poll() is not None for pr in procs):
                raise StackError(f"the Redis Cluster nodes on {ports} did not start (logs in {var_dir})")
            time.sleep(0.1)
        create = [cli, "--cluster", "create", *(f"{host}:{p}" for p in ports), "--cluster-replicas", "0"]
        done = subprocess.run([*create, "--cluster-yes"], capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise StackError(f"redis-cli --cluster create failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        while not all(_cluster_ok(host, p) for p in ports):
            if time.monotonic() > deadline:
                raise StackError(f"the Redis Cluster on {ports} did not reach cluster_state:ok")
            time.sleep(0.2)
        yield f"redis+cluster://{host}:{ports[0]}"
    finally:
        for pr in procs:
            with contextlib.suppress(ProcessLookupError):
                pr.kill()
        for pr in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                pr.wait(timeout=10)


# ---------------------------------------------------------------- CLI


def deps_command() -> int:
    """What `make deps` runs once redis-server is installed: check Java, fetch the Kafka and kafka-tools jars (once)."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        java = check_java()
        _redis_server()
        t0 = time.monotonic()
        cfg = StackConfig(var_dir=Path("var"))
        libs = ensure_kafka_jars(cfg)
        tools = ensure_kafka_tools_jars(cfg)
    except StackError as e:
        _print_error(err, e)
        return 2
    print(f"java: {java}; kafka {kafka_version()} jars: {libs}, tools: {tools} ({time.monotonic() - t0:.1f}s)")
    return 0


def _print_error(err: Console, e: StackError) -> None:
    """The first line of the message in red, the rest (a log tail) dimmed below it."""
    first, _, rest = str(e).partition("\n")
    err.print(f"[bold red]error:[/] [red]{escape(first)}[/]")
    if rest:
        err.print(escape(rest), style="dim")


def _status_table(rows: list[ServiceStatus]) -> Table:
    """Status rows as a rich table."""
    table = Table(title="fenxiao stack")
    for col in ("service", "address", "pid", "process", "answering"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r.service,
            r.address,
            str(r.pid) if r.pid is not None else "-",
            "[green]running[/]" if r.running else "[red]stopped[/]",
            "[green]yes[/]" if r.answering else "[red]no[/]",
        )
    return table


def run_command(action: str) -> int:
    """`fenxiao stack up|down|status`: 0 on success, 1 when status finds a service down, 2 on error."""
    console = Console()
    try:
        cfg = config_from_settings()
        if action == "up":
            t0 = time.monotonic()
            outcome = up(cfg, get_settings().partitions)
            for what, how in outcome.items():
                console.print(f"{what}: {how}")
            console.print(
                f"kafka {kafka_version()} at {cfg.bootstrap}, redis at {cfg.redis_url} "
                f"ready in {time.monotonic() - t0:.1f}s (data and logs in {cfg.var_dir})"
            )
            return 0
        if action == "down":
            for service, how in stop(cfg).items():
                console.print(f"{service}: {how}")
            return 0
        if action == "status":
            rows = status(cfg)
            console.print(_status_table(rows))
            return 0 if all(r.answering for r in rows) else 1
        raise StackError(f"unknown action {action!r}: use up, down or status")
    except StackError as e:
        _print_error(Console(stderr=True, highlight=False, soft_wrap=True), e)
        return 2
