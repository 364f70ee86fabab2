#!/usr/bin/env python3
"""A local Snowflake SQL API v2 emulator, so redis-writebehind runs and is tested without an account.

It speaks the subset of the SQL API the module uses (POST /api/v2/statements, GET a statement's
status or result partition, POST .../cancel) with Snowflake's response and error shapes, verifies
key-pair JWTs or bearer tokens the way Snowflake does, and runs the SQL on fakesnow's engine
(DuckDB with Snowflake-dialect rewriting), persisted under --db-path so tests can inspect results.

Behaviour that the client relies on and that is emulated on purpose:
- requestId: a resubmission with retry=true of a requestId already executed returns the original
  result, its failure, or its running status, without executing again. Executions per requestId are
  counted.
- Statements slower than --async-after-ms answer 202 and are polled; results larger than
  --partition-rows are split into partitions read with ?partition=N.
- MULTI_STATEMENT_COUNT must match the statement count; bind variables are refused in
  multi-statement requests; a missing User-Agent is refused.

The control API (/_emulator/..., only with --control) injects faults, expires credentials, runs SQL
for assertions and reports statistics; see scripts/emulator/README.md. --sink accepts and counts
statements without executing them (for benchmarks of the module itself).

Engine access is serialised with one lock (fakesnow is single-threaded); concurrency only overlaps
network time. Each response is sent in one write with TCP_NODELAY (several writes meet Nagle and
delayed ACK: ~40 ms each).
"""

from __future__ import annotations

import argparse
import base64
import collections
import datetime as dt
import decimal
import gzip
import hashlib
import json
import logging
import os
import re
import signal
import socket
import struct
import sys
import threading
import time
import uuid
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger("emulator")

ASYNC_CODE = "333334"
ASYNC_MESSAGE = (
    "Asynchronous execution in progress. Use provided query id to perform query monitoring and management."
)
SUCCESS_CODE = "090001"
JWT_INVALID = "390144"
TOKEN_EXPIRED = "390114"
TOKEN_INVALID = "390303"
MAX_KEPT_RESULTS = 2000
MAX_HANG_MS = 120_000


class ApiError(Exception):
    """An error answered in Snowflake's shape: {"code", "message", "sqlState", ...}."""

    def __init__(self, status: int, code: str, message: str, sql_state: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.sql_state = sql_state

    def body(self, handle: str | None = None) -> dict[str, Any]:
        b: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.sql_state:
            b["sqlState"] = self.sql_state
        if handle:
            b["statementHandle"] = handle
            b["statementStatusUrl"] = f"/api/v2/statements/{handle}"
        return b


# --------------------------------------------------------------------------------------------------
# authentication


def fingerprint_of(public_key) -> str:
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode()


class Auth:
    """Checks the Authorization header like Snowflake: a key-pair JWT or a bearer token."""

    def __init__(self, account: str, user: str, public_key_paths: list[str], token_file: str | None):
        from cryptography.hazmat.primitives import serialization

        self.account = account.upper()
        self.user = user.upper()
        self.keys = []
        for path in public_key_paths:
            with open(path, "rb") as f:
                key = serialization.load_pem_public_key(f.read())
            self.keys.append((key, fingerprint_of(key)))
        self.token_file = token_file
        self._token_stamp: tuple[float, int] | None = None
        self._tokens: set[str] = set()
        self.revoked: set[str] = set()
        self.seen_jwts: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.lock = threading.Lock()

    def tokens(self) -> set[str]:
        """The accepted tokens: the lines of --token-file, re-read when it changes."""
        if not self.token_file:
            return set()
        try:
            st = os.stat(self.token_file)
        except OSError:
            return set()
        stamp = (st.st_mtime, st.st_size)
        if stamp != self._token_stamp:
            with open(self.token_file, encoding="utf-8") as f:
                self._tokens = {line.strip() for line in f if line.strip()}
            self._token_stamp = stamp
        return self._tokens

    def expire_all(self) -> int:
        """Every JWT presented so far and every currently valid token stop working."""
        with self.lock:
            before = len(self.revoked)
            self.revoked.update(self.seen_jwts.keys())
            self.revoked.update(self.tokens())
            return len(self.revoked) - before

    def check(self, headers) -> str:
        """Returns the authenticated user or raises a 401 ApiError."""
        auth = headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            raise ApiError(401, "390101", "Authorization header not found in the request data.", "08004")
        token = auth[7:].strip()
        token_type = (headers.get("X-Snowflake-Authorization-Token-Type") or "").upper()
        if not token_type:
            token_type = "KEYPAIR_JWT" if token.count(".") == 2 and self.keys else "OAUTH"
        with self.lock:
            if token_type == "KEYPAIR_JWT":
                return self._check_jwt(token)
            if token_type in ("OAUTH", "PROGRAMMATIC_ACCESS_TOKEN"):
                if token in self.revoked:
                    raise ApiError(401, TOKEN_EXPIRED, "Authentication token has expired. The user must authenticate again.", "08001")
                if token not in self.tokens():
                    raise ApiError(401, TOKEN_INVALID, "Invalid OAuth access token. [token not recognised]", "08004")
                return self.user
            raise ApiError(401, "390101", f"Unsupported token type {token_type}.", "08004")

    def _check_jwt(self, token: str) -> str:
        import jwt

        def invalid(reason: str) -> ApiError:
            return ApiError(401, JWT_INVALID, f"JWT token is invalid. [{reason}]", "08004")

        if not self.keys:
            raise invalid("key-pair authentication is not configured on this emulator")
        if token in self.revoked:
            raise invalid("expired")
        claims = None
        fingerprint = None
        for key, fp in self.keys:
            try:
                claims = jwt.decode(
                    token,
                    key=key,
                    algorithms=["RS256"],
                    options={"require": ["iss", "sub", "iat", "exp"], "verify_aud": False},
                    leeway=60,
                )
                fingerprint = fp
                break
            except jwt.ExpiredSignatureError:
                raise invalid("expired") from None
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as e:
                raise invalid(str(e)) from None
        if claims is None:
            raise invalid("the signature does not verify with the user's registered public key")
        expected_sub = f"{self.account}.{self.user}"
        sub = str(claims.get("sub", ""))
        iss = str(claims.get("iss", ""))
        if sub.split(".")[0] != self.account or iss.split(".")[0] != self.account:
            raise invalid(f"account mismatch: the token names {sub.split('.')[0]!r}, this account is {self.account!r}")
        if sub != expected_sub:
            raise invalid(f"unknown user in sub {sub!r}")
        if iss != f"{expected_sub}.{fingerprint}":
            raise invalid("iss does not carry the registered public key fingerprint")
        if int(claims["exp"]) - int(claims["iat"]) > 3600 + 60:
            raise invalid("exp is more than one hour after iat")
        self.seen_jwts[token] = None
        while len(self.seen_jwts) > 10_000:
            self.seen_jwts.popitem(last=False)
        return self.user


# --------------------------------------------------------------------------------------------------
# faults


class Faults:
    """Pending faults, applied to the next matching API requests.

    A fault: {"next": N (default 1), "status": 429|500|503|..., "delay_ms": ms, "hang": true,
    "hang_ms": ms, "refuse": true, "slow_ms": ms (+ "uncancellable": true), "statement_error": true,
    "after_execute": true, "on": "submit"|"poll"|"any",
    "match": text (only requests whose body contains it), "code"/"message"/"sql_state": the error body}.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.pending: list[dict[str, Any]] = []
        self.applied = 0

    @staticmethod
    def _normalised(spec: dict[str, Any]) -> dict[str, Any]:
        spec = dict(spec)
        spec["next"] = int(spec.get("next", 1))
        spec.setdefault("on", "submit")
        return spec

    def add(self, spec: dict[str, Any]) -> None:
        spec = self._normalised(spec)
        with self.lock:
            self.pending.append(spec)

    def clear(self) -> None:
        with self.lock:
            self.pending.clear()

    def replace(self, specs: list[dict[str, Any]]) -> None:
        """Swaps every pending fault for `specs` at once: no request slips through between."""
        specs = [self._normalised(spec) for spec in specs]
        with self.lock:
            self.pending[:] = specs

    def take(self, kind: str, body: bytes = b"") -> dict[str, Any] | None:
        with self.lock:
            for spec in self.pending:
                if spec.get("match") and spec["match"].encode("utf-8") not in body:
                    continue
                if spec["on"] in (kind, "any") and spec["next"] > 0:
                    spec["next"] -= 1
                    self.applied += 1
                    if spec["next"] == 0:
                        self.pending.remove(spec)
                    return spec
        return None


# --------------------------------------------------------------------------------------------------
# values in Snowflake's JSON result format (jsonv2)

EPOCH = dt.datetime(1970, 1, 1)


def to_cell(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, decimal.Decimal)):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return v
    if isinstance(v, dt.datetime):
        if v.tzinfo is None:
            delta = v - EPOCH
            return f"{delta.days * 86400 + delta.seconds}.{delta.microseconds * 1000:09d}"
        offset = v.utcoffset() or dt.timedelta(0)
        utc = v.astimezone(dt.timezone.utc).replace(tzinfo=None) - EPOCH
        return f"{utc.days * 86400 + utc.seconds}.{utc.microseconds * 1000:09d} {int(offset.total_seconds() // 60) + 1440}"
    if isinstance(v, dt.date):
        return str((v - EPOCH.date()).days)
    if isinstance(v, dt.time):
        return f"{v.hour * 3600 + v.minute * 60 + v.second}.{v.microsecond * 1000:09d}"
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex()
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


def row_type(table) -> list[dict[str, Any]]:
    import pyarrow as pa

    cols = []
    for field in table.schema:
        t = field.type
        entry: dict[str, Any] = {"name": field.name, "nullable": True, "length": None, "precision": None, "scale": None}
        if pa.types.is_integer(t):
            entry.update(type="fixed", precision=38, scale=0)
        elif pa.types.is_decimal(t):
            entry.update(type="fixed", precision=t.precision, scale=t.scale)
        elif pa.types.is_floating(t):
            entry.update(type="real")
        elif pa.types.is_boolean(t):
            entry.update(type="boolean")
        elif pa.types.is_timestamp(t):
            entry.update(type="timestamp_tz" if t.tz else "timestamp_ntz", scale=9)
        elif pa.types.is_date(t):
            entry.update(type="date")
        elif pa.types.is_time(t):
            entry.update(type="time", scale=9)
        elif pa.types.is_binary(t) or pa.types.is_large_binary(t):
            entry.update(type="binary")
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            entry.update(type="text", length=16777216)
        else:
            entry.update(type="variant")
        cols.append(entry)
    return cols


def table_rows(table) -> list[list[str | None]]:
    columns = [c.to_pylist() for c in table.columns]
    return [[to_cell(v) for v in row] for row in zip(*columns)] if columns else []


# --------------------------------------------------------------------------------------------------
# statements


def split_statements(sql: str) -> list[str]:
    """Splits on top-level semicolons using the Snowflake tokenizer (strings and comments safe)."""
    return list(_split_cached(sql))


_split_cache: dict[str, tuple[str, ...]] = {}


def _split_cached(sql: str) -> tuple[str, ...]:
    hit = _split_cache.get(sql)
    if hit is not None:
        return hit
    if ";" not in sql:
        parts: tuple[str, ...] = (sql.strip(),) if sql.strip() else ()
    else:
        from sqlglot.dialects.snowflake import Snowflake
        from sqlglot.tokens import TokenType

        out = []
        start = 0
        for tok in Snowflake().tokenize(sql):
            if tok.token_type == TokenType.SEMICOLON:
                out.append(sql[start : tok.start])
                start = tok.end + 1
        out.append(sql[start:])
        parts = tuple(p.strip() for p in out if p.strip())
    if len(_split_cache) > 4096:
        _split_cache.clear()
    _split_cache[sql] = parts
    return parts


CONTEXT_FN = re.compile(r"\bCURRENT_(USER|ROLE|WAREHOUSE|DATABASE|SCHEMA)\s*\(\s*\)", re.IGNORECASE)
CACHEABLE = {"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "WITH"}


def sql_literal(v: str | None) -> str:
    return "NULL" if v is None else "'" + v.replace("'", "''") + "'"


# Session parameters the emulator honours. Snowflake's default for TIMESTAMP_INPUT_FORMAT is AUTO
# (several formats recognised); an account or session may set one fixed format, after which every
# conversion without an explicit format must match it or fails with 100035 (22007).
SESSION_PARAMETERS = ("TIMESTAMP_INPUT_FORMAT", "TIMEZONE")
BOUND_LIMIT = re.compile(r"\bLIMIT\s+\?", re.IGNORECASE)
UTC_NOW = re.compile(r"CONVERT_TIMEZONE\(\s*'UTC'\s*,\s*CURRENT_TIMESTAMP\(\s*\)\s*\)", re.IGNORECASE)
CURRENT_TS = re.compile(r"\bCURRENT_TIMESTAMP\s*\(\s*\)", re.IGNORECASE)


def with_session_zone(sql: str, zone: str) -> str:
    """CURRENT_TIMESTAMP() is the session zone's time (Snowflake's default zone is
    America/Los_Angeles): compared with a TIMESTAMP_NTZ column it counts as that zone's wall clock.
    CONVERT_TIMEZONE('UTC', CURRENT_TIMESTAMP()) stays UTC."""
    from zoneinfo import ZoneInfo

    now = dt.datetime.now(dt.timezone.utc)
    utc = sql_literal(now.strftime("%Y-%m-%d %H:%M:%S.%f")) + "::TIMESTAMP"
    local = sql_literal(now.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S.%f")) + "::TIMESTAMP"
    return CURRENT_TS.sub(local, UTC_NOW.sub(utc, sql))
TS_CONVERSIONS = ("TO_TIMESTAMP_NTZ", "TO_TIMESTAMP", "TO_TIMESTAMP_LTZ", "TO_TIMESTAMP_TZ")
_CONVERSION = re.compile(r"\b(" + "|".join(TS_CONVERSIONS) + r")\s*\(", re.IGNORECASE)


def with_input_format(sql: str, fmt: str) -> str:
    """Gives every one-argument timestamp conversion the session's input format, as Snowflake applies
    it: TO_TIMESTAMP_NTZ(x) becomes TO_TIMESTAMP_NTZ(x, '<fmt>'); calls with a format are kept."""
    out = []
    pos = 0
    literal = sql_literal(fmt)
    while True:
        m = _CONVERSION.search(sql, pos)
        if m is None or in_string(sql, m.start()):
            if m is None:
                out.append(sql[pos:])
                return "".join(out)
            out.append(sql[pos : m.end()])
            pos = m.end()
            continue
        close, commas = call_extent(sql, m.end())
        out.append(sql[pos : m.end()])
        inner = with_input_format(sql[m.end() : close], fmt)
        out.append(inner if commas else f"{inner}, {literal}")
        pos = close
        if close >= len(sql):
            return "".join(out)


def in_string(sql: str, index: int) -> bool:
    """Whether sql[index] is inside a '...' literal."""
    return sql.count("'", 0, index) % 2 == 1


def call_extent(sql: str, start: int) -> tuple[int, int]:
    """From just after a '(' to its matching ')': (index of that ')', top-level commas seen)."""
    depth, commas, i, quoted = 0, 0, start, False
    while i < len(sql):
        c = sql[i]
        if quoted:
            if c == "'":
                quoted = False
        elif c == "'":
            quoted = True
        elif c == "(":
            depth += 1
        elif c == ")":
            if depth == 0:
                return i, commas
            depth -= 1
        elif c == "," and depth == 0:
            commas += 1
        i += 1
    return len(sql), commas


UNPARSED_TIMESTAMP = re.compile(r'Could not parse string "([^"]*)" according to format specifier')


class Record:
    """One submitted request: its state, result or error, and its partitions."""

    def __init__(self, handle: str, request_id: str | None):
        self.handle = handle
        self.request_id = request_id
        self.done = threading.Event()
        self.cancel = threading.Event()
        self.response: tuple[int, dict[str, Any]] | None = None
        self.partitions: list[list[list[str | None]]] = []
        self.created = int(time.time() * 1000)


class Engine:
    """fakesnow, serialised behind one lock, with cached statement rewrites."""

    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.sink = args.sink
        self.conns: dict[tuple[str | None, str | None], Any] = {}
        self.plans: dict[tuple[str, str | None, str | None], list] = {}
        self.statements = 0
        if self.sink:
            return
        from fakesnow.instance import FakeSnow

        if args.db_path:
            os.makedirs(args.db_path, exist_ok=True)
        self.fs = FakeSnow(db_path=args.db_path or None)
        conn = self.conn(args.database, args.schema)
        if args.schema_sql:
            with open(args.schema_sql, encoding="utf-8") as f:
                text = f.read()
            text = "\n".join(line for line in text.splitlines() if not line.strip().startswith("--"))
            for stmt in split_statements(text):
                conn.cursor().execute(stmt)
            log.info("ran %s", args.schema_sql)
        # A strict emulator: after setup, naming an unknown database or schema is an error.
        self.fs.create_database_on_connect = False
        self.fs.create_schema_on_connect = False

    def conn(self, database: str | None, schema: str | None):
        key = (database and database.upper(), schema and schema.upper())
        c = self.conns.get(key)
        if c is None:
            c = self.fs.connect(key[0], key[1])
            if key[0] and not c.database_set:
                raise ApiError(422, "002003", f"SQL compilation error:\nDatabase '{key[0]}' does not exist or not authorized.", "02000")
            if key[1] and not c.schema_set:
                raise ApiError(422, "002003", f"SQL compilation error:\nSchema '{key[0]}.{key[1]}' does not exist or not authorized.", "02000")
            self.conns[key] = c
        return c

    def execute(self, conn, sql: str, params: list | None):
        """Runs one statement; returns the fakesnow cursor."""
        from sqlglot import exp

        cur = conn.cursor()
        key = (sql, conn.database, conn.schema)
        plan = self.plans.get(key)
        if plan is not None:
            for transformed in plan:
                cur._execute(transformed, params if transformed.find(exp.Placeholder) else None)
            return cur
        recorded: list = []
        original = cur._execute

        def record(transformed, p=None):
            recorded.append(transformed)
            return original(transformed, p)

        cur._execute = record
        try:
            cur.execute(sql, binding_params=params or None, server=True)
        finally:
            del cur._execute
        first = sql.lstrip("( \n\t").split(None, 1)[0].upper() if sql.strip() else ""
        if first in CACHEABLE and "IDENTIFIER" not in sql.upper() and recorded:
            if len(self.plans) > 2048:
                self.plans.clear()
            self.plans[key] = recorded
        return cur


def convert_bindings(bindings: dict[str, Any] | None) -> list | None:
    if not bindings:
        return None
    from fakesnow.converter import from_binding

    out = []
    for pos in range(1, len(bindings) + 1):
        b = bindings.get(str(pos))
        if not isinstance(b, dict) or "type" not in b:
            raise ApiError(400, "002049", f"SQL compilation error: Bind variable {pos} not set.", "42601")
        out.append(None if b.get("value") is None else from_binding(b))
    return out


# --------------------------------------------------------------------------------------------------
# the server


class Emulator:
    def __init__(self, args):
        self.args = args
        self.auth = Auth(args.account, args.user, args.public_key or [], args.token_file)
        self.faults = Faults()
        self.engine = Engine(args)
        self.records: collections.OrderedDict[str, Record] = collections.OrderedDict()
        self.by_request_id: dict[str, str] = {}
        # Account-level parameters (--timestamp-input-format, POST /_emulator/parameters); a request's
        # own "parameters" override them for its session.
        self.parameters: dict[str, str] = {}
        if args.timestamp_input_format:
            self.parameters["TIMESTAMP_INPUT_FORMAT"] = args.timestamp_input_format
        if args.timezone:
            self.parameters["TIMEZONE"] = args.timezone
        self.stats_lock = threading.Lock()
        self.reset_stats()

    def reset_stats(self) -> None:
        with getattr(self, "stats_lock", threading.Lock()):
            self.stats: dict[str, Any] = {
                "round_trips": 0,
                "submissions": 0,
                "executions": 0,
                "statements": 0,
                "deduplicated": 0,
                "polls": 0,
                "partition_reads": 0,
                "partitions_gzipped": 0,
                "cancels": 0,
                "auth_failures": 0,
                "faults_applied": 0,
                "answers_lost": 0,
                "bytes_received": 0,
                "executions_by_request_id": {},
                "last_request": None,
            }

    def count(self, name: str, n: int = 1) -> None:
        with self.stats_lock:
            self.stats[name] += n

    def keep(self, rec: Record) -> None:
        with self.stats_lock:
            self.records[rec.handle] = rec
            if rec.request_id:
                self.by_request_id[rec.request_id] = rec.handle
            while len(self.records) > MAX_KEPT_RESULTS:
                _, old = self.records.popitem(last=False)
                if old.request_id and self.by_request_id.get(old.request_id) == old.handle:
                    del self.by_request_id[old.request_id]

    # ---- statement execution ----------------------------------------------------------------

    def run(self, rec: Record, body: dict[str, Any], user: str, slow_ms: int, failure=None) -> None:
        """Executes a submission and stores its response in rec (called on a worker thread)."""
        try:
            if slow_ms and failure is not None and failure.get("uncancellable"):
                # Past its commit point: a cancel arriving now changes nothing.
                time.sleep(slow_ms / 1000)
            elif slow_ms and rec.cancel.wait(slow_ms / 1000):
                raise ApiError(422, "000604", "SQL execution canceled", "57014")
            if failure and failure.get("statement_error"):
                raise ApiError(
                    int(failure.get("status", 422)),
                    str(failure.get("code", "100035")),
                    str(failure.get("message", "Injected statement error.")),
                    failure.get("sql_state"),
                )
            rec.response = self.execute_body(rec, body, user)
        except ApiError as e:
            rec.response = (e.status, e.body(rec.handle))
        except Exception as e:  # noqa: BLE001 - an engine failure must become an answer, not a hang
            rec.response = self.engine_error(e, rec.handle)
        finally:
            if rec.cancel.is_set() and rec.response and rec.response[0] == 200:
                pass  # finished before the cancel arrived: Snowflake keeps the result too
            rec.done.set()

    def engine_error(self, e: Exception, handle: str) -> tuple[int, dict[str, Any]]:
        import snowflake.connector.errors as sferrors

        unparsed = UNPARSED_TIMESTAMP.search(str(e))
        if unparsed:
            err = ApiError(422, "100035", f"Timestamp '{unparsed.group(1)}' is not recognized", "22007")
            return err.status, err.body(handle)
        if isinstance(e, sferrors.Error) and getattr(e, "errno", None):
            message = re.sub(r"^\d{6} \([0-9A-Z]{5}\): (None: )?", "", str(getattr(e, "msg", e)))
            err = ApiError(422, f"{int(e.errno):06d}", message, getattr(e, "sqlstate", None))
        else:
            log.warning("engine error: %s: %s", type(e).__name__, e)
            err = ApiError(422, "100000", f"SQL execution error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", "22000")
        return err.status, err.body(handle)

    def execute_body(self, rec: Record, body: dict[str, Any], user: str) -> tuple[int, dict[str, Any]]:
        sql = body.get("statement")
        if not isinstance(sql, str) or not sql.strip():
            raise ApiError(400, "391907", "The statement field is missing or empty.")
        params = body.get("parameters") or {}
        statements = split_statements(sql)
        wanted = params.get("MULTI_STATEMENT_COUNT")
        wanted_n = 1 if wanted is None else int(wanted)
        if wanted_n != 0 and wanted_n != len(statements):
            raise ApiError(
                422,
                "000008",
                f"Actual statement count {len(statements)} did not match the desired statement count {wanted_n}.",
                "0A000",
            )
        bindings = body.get("bindings")
        multi = wanted is not None
        if multi and bindings:
            raise ApiError(
                422,
                "100132",
                "JavaScript execution error: Uncaught Execution of multiple statements failed on statement "
                f'"{statements[0][:30]}...". SQL compilation error: Bind variable ? not set. '
                "(bind variables are not supported in multi-statement requests)",
                "P0000",
            )
        params_list = convert_bindings(bindings)
        if bindings and any(BOUND_LIMIT.search(stmt) for stmt in statements):
            raise ApiError(422, "001003", "SQL compilation error:\nInvalid row count '?' in limit clause", "42601")
        session = {**self.parameters, **{k.upper(): str(v) for k, v in params.items() if k.upper() in SESSION_PARAMETERS}}
        input_format = session.get("TIMESTAMP_INPUT_FORMAT", "AUTO")
        if input_format.upper() != "AUTO":
            statements = [with_input_format(stmt, input_format) for stmt in statements]
        if session.get("TIMEZONE"):
            statements = [with_session_zone(stmt, session["TIMEZONE"]) for stmt in statements]
        context = {
            "USER": user,
            "ROLE": body.get("role") or self.args.default_role,
            "WAREHOUSE": body.get("warehouse") or None,
            "DATABASE": (body.get("database") or self.args.database or "").upper() or None,
            "SCHEMA": (body.get("schema") or self.args.schema or "").upper() or None,
        }
        with self.stats_lock:
            rid = rec.request_id or rec.handle
            counts = self.stats["executions_by_request_id"]
            counts[rid] = counts.get(rid, 0) + 1
            if len(counts) > 100_000:  # bounded for long benchmark runs: forget the oldest
                del counts[next(iter(counts))]
            self.stats["executions"] += 1
            self.stats["statements"] += len(statements)
        if self.engine.sink:
            return 200, self.result_body(rec, None, [], [], None)
        with self.engine.lock:
            conn = self.engine.conn(context["DATABASE"], context["SCHEMA"])
            if not multi:
                cur = self.engine.execute(conn, self.with_context(statements[0], context), params_list)
                return self.cursor_result(rec, cur)
            handles = []
            try:
                for stmt in statements:
                    sub = Record(str(uuid.uuid4()), None)
                    try:
                        cur = self.engine.execute(conn, self.with_context(stmt, context), None)
                    except Exception as e:  # noqa: BLE001
                        status, err = self.engine_error(e, rec.handle)
                        err["message"] = f'Execution of multiple statements failed on statement "{stmt[:40]}". {err["message"]}'
                        return status, err
                    sub.response = self.cursor_result(sub, cur)
                    sub.done.set()
                    self.keep(sub)
                    handles.append(sub.handle)
            finally:
                if getattr(conn, "_in_transaction", False):
                    # The request's session ends here; Snowflake rolls back an open transaction.
                    try:
                        conn.cursor().execute("ROLLBACK")
                    except Exception:  # noqa: BLE001
                        pass
            return 200, {
                **self.result_body(
                    rec,
                    [{"name": "multiple statement execution", "type": "text", "nullable": False}],
                    [["Multiple statements executed successfully."]],
                    [],
                    None,
                ),
                "statementHandles": handles,
            }

    @staticmethod
    def with_context(sql: str, context: dict[str, str | None]) -> str:
        if "CURRENT_" not in sql.upper():
            return sql
        return CONTEXT_FN.sub(lambda m: sql_literal(context[m.group(1).upper()]), sql)

    def cursor_result(self, rec: Record, cur) -> tuple[int, dict[str, Any]]:
        table = cur._arrow_table
        if table is None:
            return 200, self.result_body(rec, [], [], [], None)
        rtype = row_type(table)
        rows = table_rows(table)
        names = [c["name"] for c in rtype]
        stats = None
        if names and all(n.startswith("number of ") for n in names) and rows:
            stats = {"numRowsInserted": 0, "numRowsUpdated": 0, "numRowsDeleted": 0, "numDmlDuplicates": 0}
            for name, value in zip(names, rows[0]):
                if "multi-joined" in name or value is None:
                    continue
                for word, key in (("inserted", "numRowsInserted"), ("updated", "numRowsUpdated"), ("deleted", "numRowsDeleted")):
                    if name.endswith(word):
                        stats[key] += int(float(value))
        size = max(1, self.args.partition_rows)
        parts = [rows[i : i + size] for i in range(0, len(rows), size)] or [[]]
        return 200, self.result_body(rec, rtype, rows, parts, stats)

    def result_body(self, rec, rtype, rows, parts, stats) -> dict[str, Any]:
        if rtype is None:
            rtype = [{"name": "status", "type": "text", "nullable": False}]
            rows = [["Statement executed successfully."]]
        if not parts:
            parts = [rows]
        rec.partitions = parts
        body: dict[str, Any] = {
            "resultSetMetaData": {
                "numRows": len(rows),
                "format": "jsonv2",
                "partitionInfo": [
                    {"rowCount": len(p), "uncompressedSize": len(json.dumps(p))} for p in parts
                ],
                "rowType": rtype,
            },
            "data": parts[0],
            "code": SUCCESS_CODE,
            "statementStatusUrl": f"/api/v2/statements/{rec.handle}",
            "requestId": rec.request_id,
            "sqlState": "00000",
            "statementHandle": rec.handle,
            "message": "Statement executed successfully.",
            "createdOn": rec.created,
        }
        if stats is not None:
            body["stats"] = stats
        return body

    # ---- requests ---------------------------------------------------------------------------

    def submit(self, query: dict[str, list[str]], body: dict[str, Any], user: str, fault) -> tuple[int, dict[str, Any], Record | None]:
        request_id = (query.get("requestId") or [None])[0]
        retry = (query.get("retry") or ["false"])[0].lower() == "true"
        async_ = (query.get("async") or ["false"])[0].lower() == "true"
        if request_id:
            try:
                uuid.UUID(request_id)
            except ValueError:
                raise ApiError(400, "391908", f"requestId {request_id!r} is not a UUID.") from None
        if request_id and retry:
            with self.stats_lock:
                handle = self.by_request_id.get(request_id)
                rec = self.records.get(handle) if handle else None
            # Snowflake does not run a resubmitted request again; whether it re-runs one whose
            # statement failed is not documented, so the emulator takes the stricter reading and
            # answers the stored failure: a client must retry a failed statement under a new requestId.
            if rec is not None:
                self.count("deduplicated")
                return (*self.status_of(rec), rec)
        rec = Record(str(uuid.uuid4()), request_id)
        self.keep(rec)
        slow_ms = int(fault.get("slow_ms", 0)) if fault else 0
        failure = fault if fault and (fault.get("statement_error") or fault.get("uncancellable")) else None
        worker = threading.Thread(target=self.run, args=(rec, body, user, slow_ms, failure), daemon=True)
        worker.start()
        wait_s = 0 if async_ else self.args.async_after_ms / 1000
        rec.done.wait(wait_s)
        return (*self.status_of(rec), rec)

    def status_of(self, rec: Record) -> tuple[int, dict[str, Any]]:
        if not rec.done.is_set() or rec.response is None:
            return 202, {
                "code": ASYNC_CODE,
                "message": ASYNC_MESSAGE,
                "statementHandle": rec.handle,
                "statementStatusUrl": f"/api/v2/statements/{rec.handle}",
            }
        return rec.response

    def find(self, handle: str) -> Record:
        with self.stats_lock:
            rec = self.records.get(handle)
        if rec is None:
            raise ApiError(404, "333333", f"Statement {handle} not found.", "02000")
        return rec


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "snowflake-emulator"
    emulator: Emulator

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if self.emulator.args.verbose:
            log.info("%s %s", self.address_string(), format % args)

    # ---- plumbing ---------------------------------------------------------------------------

    def send_json(self, status: int, body: Any) -> None:
        payload = json.dumps(body, separators=(",", ":")).encode()
        encoding = ""
        if getattr(self, "_gzip", False) and status == 200:
            payload = gzip.compress(payload)
            encoding = "Content-Encoding: gzip\r\n"
        reason = self.responses.get(status, ("",))[0]
        head = (
            f"HTTP/1.1 {status} {reason}\r\n"
            "Content-Type: application/json\r\n"
            f"{encoding}"
            f"Content-Length: {len(payload)}\r\n"
            f"Connection: {'close' if self.close_connection else 'keep-alive'}\r\n\r\n"
        ).encode()
        self.wfile.write(head + payload)  # one write: no Nagle / delayed-ACK stall
        self.log_request(status, len(payload))

    def drop_connection(self) -> None:
        """Closes the connection with a reset, as a crashed proxy or a network fault would."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

    def read_body(self) -> bytes:
        """The request body, read once: an early answer must still consume it, or the leftover
        bytes would be parsed as the next request on this keep-alive connection."""
        if getattr(self, "_body", None) is None:
            length = int(self.headers.get("Content-Length") or 0)
            self._body = self.rfile.read(length) if length > 0 else b""
        return self._body

    def read_json(self) -> dict[str, Any]:
        raw = self.read_body()
        if not raw:
            return {}
        try:
            body = json.loads(raw)
        except ValueError:
            raise ApiError(400, "391909", "The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise ApiError(400, "391909", "The request body must be a JSON object.")
        return body

    def do_GET(self) -> None:  # noqa: N802
        self.dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self.dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self.dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self.dispatch("DELETE")

    def dispatch(self, method: str) -> None:
        self._body = None
        self._gzip = False
        self.read_body()
        url = urlsplit(self.path)
        path = url.path.rstrip("/")
        query = parse_qs(url.query)
        em = self.emulator
        try:
            if path.startswith("/_emulator"):
                self.control(method, path, query)
                return
            if not path.startswith("/api/v2/statements"):
                raise ApiError(404, "390400", f"Unknown path {path}.")
            em.count("round_trips")
            em.count("bytes_received", len(self._body or b""))
            with em.stats_lock:
                em.stats["last_request"] = {
                    "method": method,
                    "path": path,
                    "query": {k: v[0] for k, v in query.items()},
                    "user_agent": self.headers.get("User-Agent"),
                    "token_type": self.headers.get("X-Snowflake-Authorization-Token-Type"),
                    "accept": self.headers.get("Accept"),
                }
            kind = "submit" if (method == "POST" and path == "/api/v2/statements") else "poll"
            if kind == "submit":
                em.count("submissions")
            fault = em.faults.take(kind, self._body or b"")
            if fault and fault.get("statement_error"):
                em.count("faults_applied")
            elif fault:
                em.count("faults_applied")
                if fault.get("delay_ms"):
                    time.sleep(min(int(fault["delay_ms"]), MAX_HANG_MS) / 1000)
                if not fault.get("after_execute") and self.fail_now(fault):
                    return
            if not self.headers.get("User-Agent"):
                raise ApiError(400, "391903", "The User-Agent header is missing.")
            try:
                user = em.auth.check(self.headers)
            except ApiError:
                em.count("auth_failures")
                raise
            status, body = self.api(method, path, query, user, fault)
            if fault and fault.get("after_execute") and self.fail_now(fault):
                em.count("answers_lost")
                return
            self.send_json(status, body)
        except ApiError as e:
            self.send_json(e.status, e.body())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # noqa: BLE001 - answer, never kill the connection thread silently
            log.exception("internal error")
            self.send_json(500, {"code": "000603", "message": f"Internal emulator error: {type(e).__name__}: {e}"})

    def fail_now(self, fault: dict[str, Any]) -> bool:
        """Applies a failing fault; returns whether the request was answered (or dropped)."""
        if fault.get("refuse"):
            self.drop_connection()
            return True
        if fault.get("hang"):
            time.sleep(min(int(fault.get("hang_ms", 30_000)), MAX_HANG_MS) / 1000)
            self.drop_connection()
            return True
        status = fault.get("status")
        if status:
            status = int(status)
            messages = {
                429: ("000429", "Too many requests. Please retry later."),
                500: ("000500", "Internal error. Please retry."),
                502: ("000502", "Bad gateway."),
                503: ("000503", "Service temporarily unavailable. Please retry."),
                504: ("000504", "Gateway timeout."),
            }
            code, message = messages.get(status, (f"000{status}", f"Injected HTTP {status}."))
            body = {"code": fault.get("code", code), "message": fault.get("message", message)}
            if fault.get("sql_state"):
                body["sqlState"] = fault["sql_state"]
            self.send_json(status, body)
            return True
        return False

    def api(self, method: str, path: str, query, user: str, fault) -> tuple[int, dict[str, Any]]:
        em = self.emulator
        parts = path.split("/")  # ['', 'api', 'v2', 'statements', handle?, 'cancel'?]
        if method == "POST" and len(parts) == 4:
            body = self.read_json()
            status, reply, _ = em.submit(query, body, user, fault)
            return status, reply
        if len(parts) >= 5:
            handle = parts[4]
            rec = em.find(handle)
            if method == "POST" and len(parts) == 6 and parts[5] == "cancel":
                self.read_body()
                em.count("cancels")
                rec.cancel.set()
                return 200, {
                    "code": "000604",
                    "sqlState": "57014",
                    "message": "successfully canceled",
                    "statementHandle": handle,
                    "statementStatusUrl": f"/api/v2/statements/{handle}",
                }
            if method == "GET" and len(parts) == 5:
                partition = int((query.get("partition") or ["0"])[0])
                if partition == 0:
                    em.count("polls")
                    return em.status_of(rec)
                em.count("partition_reads")
                status, reply = em.status_of(rec)
                if status != 200:
                    return status, reply
                if partition >= len(rec.partitions):
                    raise ApiError(422, "333333", f"Partition {partition} does not exist.", "02000")
                # Partitions after the first come gzip-compressed to a client that accepts it, as
                # Snowflake's do (their `compressedSize` in `partitionInfo`).
                if "gzip" in (self.headers.get("Accept-Encoding") or "").lower():
                    self._gzip = True
                    em.count("partitions_gzipped")
                return 200, {"data": rec.partitions[partition]}
        raise ApiError(405, "391901", f"{method} {path} is not supported.")

    # ---- control API ----------------------------------------------------------------------------

    def control(self, method: str, path: str, query) -> None:
        em = self.emulator
        if path == "/_emulator/health":
            self.send_json(200, {"ok": True})
            return
        if not em.args.control:
            raise ApiError(404, "390400", "The control API is off (start the emulator with --control).")
        if path == "/_emulator/stats" and method == "GET":
            with em.stats_lock:
                stats = json.loads(json.dumps(em.stats))
            stats["pending_faults"] = len(em.faults.pending)
            self.send_json(200, stats)
        elif path == "/_emulator/faults" and method in ("POST", "PUT"):
            body = self.read_json()
            specs = body.get("faults") if "faults" in body else [body]
            if method == "PUT":
                em.faults.replace(specs)
            else:
                for spec in specs:
                    em.faults.add(spec)
            self.send_json(200, {"pending": len(em.faults.pending)})
        elif path == "/_emulator/faults" and method == "DELETE":
            em.faults.clear()
            self.send_json(200, {"pending": 0})
        elif path == "/_emulator/parameters" and method == "POST":
            body = self.read_json()
            for name, value in body.items():
                if name.upper() not in SESSION_PARAMETERS:
                    raise ApiError(400, "391911", f"Unsupported parameter {name}.")
                if value is None or str(value).upper() == "AUTO":
                    em.parameters.pop(name.upper(), None)
                else:
                    em.parameters[name.upper()] = str(value)
            self.send_json(200, {"parameters": em.parameters})
        elif path == "/_emulator/expire" and method == "POST":
            self.read_body()
            self.send_json(200, {"expired": em.auth.expire_all()})
        elif path == "/_emulator/reset" and method == "POST":
            self.read_body()
            em.faults.clear()
            em.reset_stats()
            self.send_json(200, {"ok": True})
        elif path == "/_emulator/sql" and method == "POST":
            body = self.read_json()
            if em.engine.sink:
                raise ApiError(400, "391910", "--sink executes no SQL.")
            with em.engine.lock:
                conn = em.engine.conn(body.get("database") or em.args.database, body.get("schema") or em.args.schema)
                try:
                    cur = em.engine.execute(conn, body.get("sql", ""), convert_bindings(body.get("bindings")))
                except Exception as e:  # noqa: BLE001
                    status, err = em.engine_error(e, "")
                    self.send_json(status, err)
                    return
                table = cur._arrow_table
                self.send_json(
                    200,
                    {
                        "columns": [f.name for f in table.schema] if table is not None else [],
                        "rows": table_rows(table) if table is not None else [],
                    },
                )
        else:
            raise ApiError(404, "390400", f"Unknown control path {method} {path}.")


def main() -> int:
    p = argparse.ArgumentParser(description="Local Snowflake SQL API v2 emulator (fakesnow engine).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--port-file", help="write the chosen port here once ready")
    p.add_argument("--db-path", help="directory of the DuckDB files (one per database); in memory if omitted")
    p.add_argument("--database", default="WRITEBEHIND")
    p.add_argument("--schema", default="PUBLIC")
    p.add_argument("--schema-sql", help="SQL file run in --database/--schema at start (e.g. scripts/snowflake/schema.sql)")
    p.add_argument("--account", default="LOCAL")
    p.add_argument("--user", default="WRITER")
    p.add_argument("--default-role", default="PUBLIC")
    p.add_argument("--public-key", action="append", help="PEM public key accepted for key-pair JWTs (repeatable)")
    p.add_argument("--token-file", help="file of accepted bearer tokens, one a line; re-read when it changes")
    p.add_argument("--control", action="store_true", help="enable the /_emulator control API")
    p.add_argument("--sink", action="store_true", help="accept and count statements without executing them")
    p.add_argument("--async-after-ms", type=int, default=45_000, help="answer 202 when a statement runs longer")
    p.add_argument(
        "--timestamp-input-format",
        help="account-level TIMESTAMP_INPUT_FORMAT (default AUTO); conversions without a format must match it",
    )
    p.add_argument("--timezone", help="account-level TIMEZONE: the zone of CURRENT_TIMESTAMP() (default: the engine's, UTC)")
    p.add_argument("--partition-rows", type=int, default=10_000, help="rows per result partition")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args()

    warnings.filterwarnings("ignore", category=UserWarning)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s emulator %(levelname)s %(message)s", stream=sys.stderr)
    if not args.public_key and not args.token_file:
        log.warning("neither --public-key nor --token-file given: every request will be refused")

    emulator = Emulator(args)
    Handler.emulator = emulator
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    port = server.server_address[1]

    def stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.port_file:
        tmp = f"{args.port_file}.tmp"
        with open(tmp, "w") as f:
            f.write(str(port))
        os.replace(tmp, args.port_file)
    print(f"snowflake emulator ready on http://{args.host}:{port}", flush=True)
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    if not args.sink:
        with emulator.engine.lock:
            for c in emulator.engine.conns.values():
                try:
                    c.close()
                except Exception:  # noqa: BLE001
                    pass
            try:
                emulator.engine.fs.duck_conn.close()
            except Exception:  # noqa: BLE001
                pass
    if "fakesnow.transforms.stage" in sys.modules:
        # fakesnow makes a scratch "bucket" directory for stages on import; remove ours.
        import shutil

        shutil.rmtree(sys.modules["fakesnow.transforms.stage"].LOCAL_BUCKET_PATH, ignore_errors=True)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: the engine's native bindings print spurious leak reports there.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
