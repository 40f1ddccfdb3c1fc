"""ClickHouse access: one small protocol over embedded chDB or a server, with the same SQL for both, and migrations.

Embedded chDB (the default) runs the engine in this process on a data directory that only
one process may open at a time; we hold our own flock on `<dir>/fenxiao.lock` (with the
owner's pid in it) so a second process gets a message that says who owns it and what to do,
instead of chDB's bare "Error initializing EmbeddedServer". Setting FENXIAO_CLICKHOUSE_URL
switches to a ClickHouse server through clickhouse-connect, which many processes can share.

Both backends take `{name:Type}` placeholders with a `params` mapping (never SQL built from
data) and select the database (`fenxiao` by default), so SQL names tables unqualified.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Protocol, Self
from urllib.parse import unquote, urlsplit

import pyarrow as pa  # type: ignore[import-untyped]  # no stubs; used only inside this module
import pyarrow.compute as pc  # type: ignore[import-untyped]

from streams import names

log = logging.getLogger(__name__)

DATABASE = "fenxiao"
LOCK_FILE = "fenxiao.lock"
MIGRATIONS_TABLE = "schema_migrations"

# Inserts skip ReplacingMergeTree's in-block merge: it halves chDB's insert cost, and rows reach
# insert() already deduplicated (the sink), while reads use FINAL for anything that slips past.
INSERT_SETTINGS: Mapping[str, int] = {"optimize_on_insert": 0}
_INSERT_SETTINGS_SQL = ", ".join(f"{k} = {v}" for k, v in INSERT_SETTINGS.items())

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MIGRATION_FILE = re.compile(r"(\d{3})_([a-z0-9_]+)\.sql")


class ClickHouseError(Exception):
    """A statement failed on either backend; one exception type so callers (and sink retries) catch one thing."""


class ChdbLockedError(ClickHouseError):
    """The embedded data directory is owned by another process; says which one and what to do instead."""

    def __init__(self, path: Path, owner: str | None) -> None:
        self.path = path
        self.owner = owner
        who = f"another process ({owner})" if owner else "another process"
        super().__init__(
            f"the embedded ClickHouse data directory {path} is in use by {who}: chDB lets only one process"
            " open a data directory at a time. Stop that process (e.g. the running worker) and retry, read the"
            " data through the running worker, or run a ClickHouse server and set"
            f" {names.ENV_CLICKHOUSE_URL} so several processes can share it."
        )


class ClickHouse(Protocol):
    """What the sink, migrations and reports need from ClickHouse, whichever backend serves it."""

    def command(self, sql: str, params: Mapping[str, object] | None = None) -> None:
        """Run a statement that returns nothing worth reading (DDL, INSERT ... SELECT)."""
        ...

    def query(self, sql: str, params: Mapping[str, object] | None = None) -> list[tuple[Any, ...]]:
        """Run a SELECT and return its rows as tuples of Python values."""
        ...

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        """Bulk-insert rows (values in `columns` order) as data, in one INSERT."""
        ...

    def close(self) -> None:
        """Release the connection (and, for chDB, the data directory)."""
        ...


def quote_identifier(name: str) -> str:
    """Quote a database/table/column name after checking it is a plain identifier (they are never data)."""
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"not a plain ClickHouse identifier: {name!r}")
    return f"`{name}`"


def qualified_table(database: str, table: str) -> str:
    """`db`.`table` for a bare table name, or the given `db.table` checked and quoted."""
    db, _, bare = table.rpartition(".")
    return f"{quote_identifier(db or database)}.{quote_identifier(bare)}"


# --- chDB ----------------------------------------------------------------------------------------------------------

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0", "'": "\\'"})


def param_text(value: object, top_level: bool = True) -> str:
    """A value in ClickHouse's parameter text form, which chDB wants pre-serialized; parsed as data, never SQL."""
    # Top level: the escaped (TSV) form; inside arrays and tuples: quoted literals.
    if value is None:
        return "\\N" if top_level else "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | Decimal):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.translate(_ESCAPES)
        return escaped if top_level else f"'{escaped}'"
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        text = value.strftime("%Y-%m-%d %H:%M:%S.%f")
        return text if top_level else f"'{text}'"
    if isinstance(value, date):
        return value.isoformat() if top_level else f"'{value.isoformat()}'"
    if isinstance(value, list | tuple):
        inner = ",".join(param_text(v, top_level=False) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    raise TypeError(f"cannot pass {type(value).__name__} as a ClickHouse query parameter")


def _arrow_rows(table: pa.Table) -> list[tuple[Any, ...]]:
    """Rows of an Arrow result as tuples (Nullable -> None, DateTime64 -> aware datetime in UTC)."""
    return list(zip(*(column.to_pylist() for column in table.columns), strict=True))


_ARROW_SCALARS: dict[str, pa.DataType] = {
    "String": pa.string(),
    "Bool": pa.bool_(),
    "UInt8": pa.uint8(),
    "UInt16": pa.uint16(),
    "UInt32": pa.uint32(),
    "UInt64": pa.uint64(),
    "Int8": pa.int8(),
    "Int16": pa.int16(),
    "Int32": pa.int32(),
    "Int64": pa.int64(),
    "Float32": pa.float32(),
    "Float64": pa.float64(),
    "Date": pa.date32(),
}
_TIME_UNITS = {0: "s", 3: "ms", 6: "us", 9: "ns"}


def arrow_type(ch_type: str) -> pa.DataType | None:
    """The Arrow type to send for a ClickHouse column type, or None to let Arrow infer it."""
    inner = ch_type
    while True:
        match = re.fullmatch(r"(?:LowCardinality|Nullable)\((.*)\)", inner)
        if match is None:
            break
        inner = match.group(1)
    timestamp = re.fullmatch(r"DateTime(64)?(?:\((.*)\))?", inner)
    if timestamp is not None:
        args = [a.strip().strip("'") for a in (timestamp.group(2) or "").split(",") if a.strip()]
        precision = int(args.pop(0)) if timestamp.group(1) and args else 0
        unit = _TIME_UNITS.get(precision)
        return None if unit is None else pa.timestamp(unit, tz=args[0] if args else "UTC")
    return _ARROW_SCALARS.get(inner)


def _parse_time(value: object) -> object:
    """A datetime for an RFC 3339 string Arrow could not cast (naive means UTC); other values unchanged."""
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value)
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    return value


def arrow_column(values: Sequence[object], typ: pa.DataType | None) -> pa.Array:
    """One Arrow column; RFC 3339 strings for DateTime columns are parsed by Arrow in C, not per row in Python."""
    if typ is None:
        return pa.array(values)
    if pa.types.is_timestamp(typ) and any(isinstance(v, str) for v in values):
        try:
            return pa.array(values, pa.string()).cast(typ)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return pa.array([_parse_time(v) for v in values], typ)
    return pa.array(values, typ)


def ms_at_most(stamps: Sequence[object], bound_ms: int) -> list[bool] | None:
    """Per ts whether its epoch ms (floored) is <= bound_ms, parsed in C; None unless all are RFC 3339 with offsets."""
    try:
        micros = pa.array(stamps, pa.string()).cast(pa.timestamp("us", tz="UTC"))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    if micros.null_count:
        return None
    # Whole milliseconds floor the microseconds: ms <= bound exactly when us < (bound + 1) * 1000.
    older: list[bool] = pc.less(micros.cast(pa.int64()), (bound_ms + 1) * 1000).to_pylist()
    return older


def _ipc_stream(batch: pa.RecordBatch) -> bytes:
    """One batch as an Arrow IPC stream, written once into a buffer of its exact size (growing one copies it over)."""
    size = pa.MockOutputStream()
    with pa.ipc.new_stream(size, batch.schema) as writer:
        writer.write_batch(batch)
    buffer = pa.allocate_buffer(size.size())
    with pa.ipc.new_stream(pa.FixedSizeBufferWriter(buffer), batch.schema) as writer:
        writer.write_batch(batch)
    payload: bytes = buffer.to_pybytes()
    return payload


@dataclass
class _HeldDirectory:
    """A data directory this process has open: our flock's fd, and how many backends share it."""

    fd: int
    users: int = 1


_held_lock = threading.Lock()
_held: dict[Path, _HeldDirectory] = {}


def _owner_text() -> str:
    """What we write into the lock file so a refused process can say who owns the directory."""
    command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv[:4]))
    return json.dumps({"pid": os.getpid(), "command": command, "since": datetime.now(UTC).isoformat()})


def _describe_owner(raw: str) -> str | None:
    """'pid 123: fenxiao worker' from a lock file (ours) or chDB's `status` file, None if unreadable."""
    try:
        info = json.loads(raw)
        return f"pid {info['pid']}: {info['command']}".rstrip(": ")
    except (ValueError, KeyError, TypeError):
        match = re.search(r"PID:\s*(\d+)", raw)
        return f"pid {match.group(1)}" if match else None


def _acquire_directory(path: Path) -> None:
    """Take the process-exclusive lock on a chDB directory, shared by backends of this process."""
    with _held_lock:
        held = _held.get(path)
        if held is not None:
            held.users += 1
            return
        if _held:
            other = next(iter(_held))
            raise ClickHouseError(
                f"this process already has the embedded ClickHouse open at {other}; chDB hosts one data"
                f" directory per process, so close that backend before opening {path}"
            )
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _describe_owner(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
            os.close(fd)
            raise ChdbLockedError(path, owner) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, _owner_text().encode(), 0)
        _held[path] = _HeldDirectory(fd)


def _release_directory(path: Path) -> None:
    """Drop one user of the directory; the last one unlocks it (the file stays: deleting lock files races)."""
    with _held_lock:
        held = _held.get(path)
        if held is None:
            return
        held.users -= 1
        if held.users == 0:
            del _held[path]
            os.close(held.fd)


class ChdbBackend:
    """Embedded ClickHouse (chDB) on a local data directory, owned by this process while open."""

    def __init__(self, path: Path, database: str = DATABASE) -> None:
        resolved = Path(os.path.realpath(path))
        if "?" in str(resolved):
            raise ValueError(f"chDB data directory path must not contain '?': {resolved}")
        quote_identifier(database)
        self.path = resolved
        self.database = database
        self.max_param_bytes: int | None = None  # parameters go in-process: no size limit
        self._types: dict[str, dict[str, pa.DataType | None]] = {}
        # A chDB connection with a streaming insert open answers other statements with empty results,
        # so statements from several threads (the sink's flush thread, the web views) take turns.
        self._lock = threading.RLock()
        _acquire_directory(resolved)
        try:
            from chdb import session as chdb_session

            session_class: Any = chdb_session.Session
            self._session: Any = session_class(str(resolved))
        except Exception as exc:
            _release_directory(resolved)
            raise self._open_error(exc) from exc
        try:
            self.command(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(database)}")
            self.command(f"USE {quote_identifier(database)}")
        except BaseException:
            self.close()
            raise

    def _open_error(self, exc: Exception) -> ClickHouseError:
        """Explain a failed open: usually chDB's own `status` lock held by a process that is not one of ours."""
        try:
            status = (self.path / "status").read_text("utf-8", "replace")
        except OSError:
            status = ""
        owner = _describe_owner(status)
        pid = re.search(r"\d+", owner or "")
        if pid is not None and int(pid.group()) != os.getpid() and _alive(int(pid.group())):
            return ChdbLockedError(self.path, owner)
        return ClickHouseError(f"cannot open the embedded ClickHouse at {self.path}: {exc}")

    def _run(self, sql: str, fmt: str, params: Mapping[str, object] | None) -> Any:
        """One statement through the session, with parameters serialized the way chDB expects."""
        text_params = {k: param_text(v) for k, v in (params or {}).items()}
        with self._lock:
            if self._session is None:
                raise ClickHouseError("the embedded ClickHouse backend is closed")
            try:
                return self._session.query(sql, fmt, params=text_params)
            except Exception as exc:
                raise ClickHouseError(str(exc)) from exc

    def command(self, sql: str, params: Mapping[str, object] | None = None) -> None:
        """Run a statement and discard its output; forget cached column types, since DDL may change them."""
        self._types.clear()
        self._run(sql, "CSV", params)

    def query(self, sql: str, params: Mapping[str, object] | None = None) -> list[tuple[Any, ...]]:
        """Run a query, reading the result as Arrow so values keep their types (ints, None, datetimes)."""
        table = self._run(sql, "ArrowTable", params)
        if any(pa.types.is_uint32(f.type) for f in table.schema):
            table = self._restore_datetimes(table, sql, params)
        return _arrow_rows(table)

    def _restore_datetimes(self, table: pa.Table, sql: str, params: Mapping[str, object] | None) -> pa.Table:
        """ClickHouse sends DateTime as Arrow uint32 (like UInt32); ask for the result types and fix those columns."""
        try:
            described = _arrow_rows(self._run(f"DESCRIBE TABLE ({sql})", "ArrowTable", params))
        except ClickHouseError:
            return table
        for index, (name, ch_type, *_) in enumerate(described[: table.num_columns]):
            typ = arrow_type(str(ch_type))
            if typ is not None and pa.types.is_timestamp(typ) and pa.types.is_uint32(table.schema.field(index).type):
                seconds = table.column(index).cast(pa.int64())
                table = table.set_column(index, str(name), seconds.cast(pa.timestamp("s", tz=typ.tz)))
        return table

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        """One INSERT fed an Arrow IPC stream: typed columns as data, nothing spliced into SQL, ~C speed."""
        if not rows:
            return
        target = qualified_table(self.database, table)
        column_list = ", ".join(quote_identifier(c) for c in columns)
        types = self._column_types(table)
        try:
            data = list(zip(*rows, strict=True))
        except ValueError:
            raise ValueError(f"insert into {table}: rows have different lengths") from None
        if len(data) != len(columns):
            raise ValueError(f"insert into {table}: {len(columns)} columns but rows of {len(data)} values")
        try:
            arrays = [arrow_column(values, types.get(name)) for name, values in zip(columns, data, strict=True)]
        except (pa.ArrowException, ValueError, TypeError, OverflowError) as exc:
            raise ValueError(f"insert into {table}: a value does not fit its column: {exc}") from exc
        payload = _ipc_stream(pa.RecordBatch.from_arrays(arrays, names=list(columns)))
        with self._lock:
            if self._session is None:
                raise ClickHouseError("the embedded ClickHouse backend is closed")
            try:
                inserter = self._session.send_insert(
                    f"INSERT INTO {target} ({column_list}) SETTINGS {_INSERT_SETTINGS_SQL}", "ArrowStream"
                )
            except Exception as exc:
                raise ClickHouseError(str(exc)) from exc
            try:
                inserter.append(payload)
                inserter.finish()
            except Exception as exc:
                inserter.cancel()
                raise ClickHouseError(str(exc)) from exc

    def _column_types(self, table: str) -> dict[str, pa.DataType | None]:
        """Arrow types of a table's columns, read once from system.columns."""
        types = self._types.get(table)
        if types is None:
            db, _, bare = table.rpartition(".")
            rows = self.query(
                "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {t:String}",
                {"db": db or self.database, "t": bare},
            )
            if not rows:
                raise ClickHouseError(f"no table {table} in database {db or self.database} (run migrations first)")
            types = {str(name): arrow_type(str(ch_type)) for name, ch_type in rows}
            self._types[table] = types
        return types

    def close(self) -> None:
        """Close the session and release the data directory; safe to call twice."""
        lock = getattr(self, "_lock", None)
        if lock is None:
            return
        with lock:
            session, self._session = getattr(self, "_session", None), None
            if session is None:
                return
            try:
                session.close()
            finally:
                _release_directory(self.path)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        return f"ChdbBackend(path={str(self.path)!r}, database={self.database!r})"


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists (chDB's status file may be left over from a dead one)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- server --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerTarget:
    """Where a ClickHouse server is, parsed from FENXIAO_CLICKHOUSE_URL; the password stays out of repr."""

    host: str
    port: int
    secure: bool
    username: str
    password: str = field(repr=False)
    database: str

    def redacted(self) -> str:
        """The URL safe to log: the password replaced by ***."""
        scheme = "https" if self.secure else "http"
        auth = f"{self.username}:***@" if self.password else f"{self.username}@"
        return f"{scheme}://{auth}{self.host}:{self.port}/{self.database}"


def parse_server_url(url: str) -> ServerTarget:
    """http(s)://user:pass@host:port/database -> ServerTarget; errors never echo the password."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{names.ENV_CLICKHOUSE_URL} must be an http:// or https:// URL, got scheme {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError(f"{names.ENV_CLICKHOUSE_URL} has no host")
    secure = parts.scheme == "https"
    try:
        port = parts.port or (8443 if secure else 8123)
    except ValueError:
        raise ValueError(f"{names.ENV_CLICKHOUSE_URL} has an invalid port") from None
    database = unquote(parts.path.strip("/")) or DATABASE
    quote_identifier(database)
    return ServerTarget(
        host=parts.hostname,
        port=port,
        secure=secure,
        username=unquote(parts.username or "default"),
        password=unquote(parts.password or ""),
        database=database,
    )


class ServerBackend:
    """A ClickHouse server through clickhouse-connect: server-side `{name:Type}` binding, native-format inserts."""

    def __init__(self, url: str) -> None:
        import clickhouse_connect

        target = parse_server_url(url)
        self.target_url = target.redacted()
        try:
            client = clickhouse_connect.get_client(
                host=target.host,
                port=target.port,
                username=target.username,
                password=target.password,
                secure=target.secure,
                tz_mode="schema",
            )
        except Exception as exc:
            raise ClickHouseError(f"cannot connect to ClickHouse at {self.target_url}: {exc}") from exc
        log.info("clickhouse: server %s", self.target_url)
        self._init(client, target.database)

    @classmethod
    def from_client(cls, client: Any, database: str = DATABASE) -> ServerBackend:
        """Wrap an existing clickhouse-connect client (tests run this against clickhouse-connect's chDB interface)."""
        backend = cls.__new__(cls)
        backend.target_url = f"<{type(client).__name__}>"
        backend._init(client, database)
        return backend

    def _init(self, client: Any, database: str) -> None:
        """Select the database, creating it only when missing (so a read-only user can still connect)."""
        quote_identifier(database)
        self._client: Any = client
        self.database = database
        # The server refuses a parameter longer than http_max_field_value_size (128 KiB by default).
        self.max_param_bytes: int | None = 120_000
        # One HTTP session: concurrent statements in it are refused ("session is locked"), so take turns.
        self._lock = threading.RLock()
        exists = self.query("SELECT count() FROM system.databases WHERE name = {db:String}", {"db": database})
        if not exists or not exists[0][0]:
            self.command(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(database)}")
        client.database = database

    def command(self, sql: str, params: Mapping[str, object] | None = None) -> None:
        """Run a statement with server-side parameter binding."""
        try:
            with self._lock:
                self._client.command(sql, parameters=dict(params) if params else None)
        except Exception as exc:
            raise ClickHouseError(str(exc)) from exc

    def query(self, sql: str, params: Mapping[str, object] | None = None) -> list[tuple[Any, ...]]:
        """Run a query with server-side parameter binding and return tuples."""
        try:
            with self._lock:
                result = self._client.query(sql, parameters=dict(params) if params else None)
        except Exception as exc:
            raise ClickHouseError(str(exc)) from exc
        return [tuple(row) for row in result.result_rows]

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        """One native-format INSERT via client.insert (values are data, never SQL)."""
        if not rows:
            return
        db, _, bare = table.rpartition(".")
        quote_identifier(bare)
        try:
            with self._lock:
                self._client.insert(
                    bare, rows, column_names=list(columns), database=db or self.database, settings=dict(INSERT_SETTINGS)
                )
        except Exception as exc:
            raise ClickHouseError(str(exc)) from exc

    def close(self) -> None:
        """Close the HTTP client."""
        with self._lock:
            self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ServerBackend({self.target_url}, database={self.database!r})"


# --- migrations ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Migration:
    """One schemas/clickhouse/NNN_name.sql file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """sha256 of the file, recorded so an edited, already-applied migration is noticed."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path | Traversable | None = None) -> list[Migration]:
    """The migration files in version order; two files with one version number is an error."""
    root: Path | Traversable = directory if directory is not None else resources.files("schemas.clickhouse")
    found: dict[int, Migration] = {}
    for entry in root.iterdir():
        match = _MIGRATION_FILE.fullmatch(entry.name)
        if match is None:
            continue
        version = int(match.group(1))
        if version in found:
            raise ValueError(f"two migrations with version {version:03d}: {found[version].name} and {entry.name}")
        found[version] = Migration(version, entry.name, entry.read_text("utf-8"))
    return [found[v] for v in sorted(found)]


def split_statements(sql: str) -> list[str]:
    """Split a SQL script at top-level semicolons (not inside quotes or comments); drop comment-only pieces."""
    statements: list[str] = []
    start = i = 0
    has_code = False
    n = len(sql)
    while i < n:
        ch = sql[i]
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
            continue
        if sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
            continue
        if ch in "'\"`":
            i += 1
            while i < n and sql[i] != ch:
                i += 2 if sql[i] == "\\" else 1
            i += 1
            has_code = True
            continue
        if ch == ";":
            if has_code:
                statements.append(sql[start:i].strip())
            start, has_code = i + 1, False
        elif not ch.isspace():
            has_code = True
        i += 1
    if has_code:
        statements.append(sql[start:].strip())
    return statements


def migrate(ch: ClickHouse, directory: Path | Traversable | None = None) -> list[str]:
    """Apply the migrations schema_migrations does not list, in order; returns their names (none: a no-op)."""
    # Every statement is IF NOT EXISTS: a migration interrupted half-way is simply applied again, and two
    # processes migrating one server at once both succeed.
    ch.command(
        f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} ("
        " version UInt32 COMMENT 'NNN of the applied schemas/clickhouse/NNN_name.sql',"
        " name String COMMENT 'File name of the migration',"
        " checksum String COMMENT 'sha256 of the file as applied',"
        " applied_at DateTime64(3, 'UTC') DEFAULT now64(3, 'UTC') COMMENT 'When it was applied, UTC'"
        ") ENGINE = ReplacingMergeTree ORDER BY version"
        " COMMENT 'Schema migrations applied to this database (see streams.sinks.clickhouse.migrate)'"
    )
    applied = {int(v): str(c) for v, c in ch.query(f"SELECT version, checksum FROM {MIGRATIONS_TABLE} FINAL")}
    done: list[str] = []
    for migration in load_migrations(directory):
        if migration.version in applied:
            if applied[migration.version] != migration.checksum:
                log.warning(
                    "clickhouse: migration %s changed after it was applied; add a new migration instead",
                    migration.name,
                )
            continue
        for statement in split_statements(migration.sql):
            ch.command(statement)
        ch.insert(
            MIGRATIONS_TABLE,
            ("version", "name", "checksum"),
            [(migration.version, migration.name, migration.checksum)],
        )
        log.info("clickhouse: applied migration %s", migration.name)
        done.append(migration.name)
    return done
