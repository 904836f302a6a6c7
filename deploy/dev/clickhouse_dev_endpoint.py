#!/usr/bin/env python3
"""ClickHouse dev endpoint: a current ClickHouse engine (chDB) behind the HTTP
interface, for development and CI only.

No current ClickHouse server package installs on Debian 12 machines without
network access to ClickHouse's own repositories, so Tyr's setup serves chDB
(the ClickHouse engine as a library) on loopback. It speaks the part of
ClickHouse's HTTP interface that the official Rust `clickhouse` crate uses:

* ``GET /ping`` and ``GET /`` answer ``Ok.``;
* the query comes in the ``query`` URL parameter, the POST body, or both
  (then the body continues the query, or carries an INSERT's data);
* ``database``, ``default_format``, ``param_*`` (also as multipart form
  fields) and any ClickHouse setting as URL parameters;
* INSERT data in any input format ClickHouse knows (ArrowStream, RowBinary,
  JSONEachRow, ...), plain or in ClickHouse's native compressed framing
  (``decompress=1``, LZ4 or none, CityHash128-checked);
* output in the format asked for, optionally in native compressed framing
  (``compress=1``);
* errors as HTTP 500 with a ``Code: N. DB::Exception: ...`` body and the
  ``X-ClickHouse-Exception-Code`` header.

Requests are served concurrently and executed one at a time against a single
chDB connection: chDB allows one active statement per connection, and the
lock also keeps per-request settings from leaking into other requests.

Production deployments point ``TYR_CLICKHOUSE_URL`` at a real ClickHouse
server or cluster; this process is never part of them.
"""

import argparse
import json
import logging
import os
import re
import signal
import struct
import sys
import threading
import time
import uuid
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import chdb.state
import lz4.block
from clickhouse_cityhash.cityhash import CityHash128

LOG = logging.getLogger("clickhouse-dev-endpoint")

# URL parameters that belong to the HTTP interface itself, not to settings.
HTTP_ONLY_PARAMS = {
    "query",
    "database",
    "default_format",
    "compress",
    "decompress",
    "user",
    "password",
    "query_id",
    "session_id",
    "session_timeout",
    "session_check",
    "role",
    "buffer_size",
    "wait_end_of_query",
    "quota_key",
    "stacktrace",
}

# ClickHouse error codes the endpoint raises itself.
CODE_SYNTAX_ERROR = 62
CODE_UNKNOWN_FORMAT = 73
CODE_CHECKSUM_DOESNT_MATCH = 40
CODE_CANNOT_DECOMPRESS = 271
CODE_UNKNOWN_COMPRESSION_METHOD = 89
CODE_UNKNOWN_DATABASE = 81
CODE_BAD_ARGUMENTS = 36
CODE_UNKNOWN_EXCEPTION = 1002

# Native compressed framing: 16-byte CityHash128 checksum, then a 9-byte
# header (method, compressed size including header, decompressed size).
CHECKSUM_SIZE = 16
HEADER_SIZE = 9
METHOD_NONE = 0x02
METHOD_LZ4 = 0x82
MAX_BLOCK_SIZE = 1 << 30
RESPONSE_BLOCK_SIZE = 1 << 20

INSERT_WITH_FORMAT = re.compile(
    rb"^\s*(?P<stmt>INSERT\s+INTO\s.*?)\bFORMAT\s+(?P<fmt>[A-Za-z0-9_]+)[ \t]*(\r?\n)?",
    re.IGNORECASE | re.DOTALL,
)
CODE_IN_MESSAGE = re.compile(r"Code:\s*(\d+)")
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ClickHouseError(Exception):
    """An error to report to the client with a ClickHouse error code."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message

    def body(self):
        if self.message.startswith("Code:"):
            return self.message
        return f"Code: {self.code}. DB::Exception: {self.message}"


def from_engine_error(error):
    """Wraps an exception raised by chDB, keeping the code it carries."""
    message = str(error).strip()
    match = CODE_IN_MESSAGE.search(message)
    code = int(match.group(1)) if match else CODE_UNKNOWN_EXCEPTION
    return ClickHouseError(code, message)


def set_statement(name, value):
    """SET takes no query parameters: the value goes in as a quoted string
    literal, which ClickHouse converts to the setting's type. The name was
    checked against IDENTIFIER."""
    quoted = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"SET {name} = '{quoted}'"


def cityhash128_bytes(data):
    """CityHash128 (v1.0.2) as ClickHouse lays it out: the binding returns
    (high << 64 | low) of the hash pair; the wire has the first half first."""
    value = CityHash128(data)
    return struct.pack("<QQ", value >> 64, value & 0xFFFFFFFFFFFFFFFF)


def decompress_native(data):
    """Decodes a body in ClickHouse's native compressed framing."""
    out = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < CHECKSUM_SIZE + HEADER_SIZE:
            raise ClickHouseError(CODE_CANNOT_DECOMPRESS, "truncated compressed block header")
        checksum = data[pos : pos + CHECKSUM_SIZE]
        header_start = pos + CHECKSUM_SIZE
        method, compressed_size, decompressed_size = struct.unpack_from("<BII", data, header_start)
        if compressed_size < HEADER_SIZE or compressed_size > MAX_BLOCK_SIZE or decompressed_size > MAX_BLOCK_SIZE:
            raise ClickHouseError(CODE_CANNOT_DECOMPRESS, "compressed block size out of range")
        block_end = header_start + compressed_size
        if block_end > len(data):
            raise ClickHouseError(CODE_CANNOT_DECOMPRESS, "truncated compressed block")
        block = data[header_start:block_end]
        if cityhash128_bytes(block) != checksum:
            raise ClickHouseError(CODE_CHECKSUM_DOESNT_MATCH, "checksum doesn't match: corrupted data")
        payload = block[HEADER_SIZE:]
        if method == METHOD_LZ4:
            try:
                out.append(lz4.block.decompress(payload, uncompressed_size=decompressed_size))
            except lz4.block.LZ4BlockError as error:
                raise ClickHouseError(CODE_CANNOT_DECOMPRESS, f"cannot decompress LZ4 block: {error}")
        elif method == METHOD_NONE:
            out.append(payload)
        else:
            raise ClickHouseError(
                CODE_UNKNOWN_COMPRESSION_METHOD, f"unknown compression method 0x{method:02x}"
            )
        pos = block_end
    return b"".join(out)


def compress_native(data):
    """Encodes a response in ClickHouse's native compressed framing (LZ4)."""
    out = []
    for start in range(0, max(len(data), 1), RESPONSE_BLOCK_SIZE):
        chunk = data[start : start + RESPONSE_BLOCK_SIZE]
        if not chunk:
            break
        payload = lz4.block.compress(chunk, store_size=False)
        header = struct.pack("<BII", METHOD_LZ4, HEADER_SIZE + len(payload), len(chunk))
        block = header + payload
        out.append(cityhash128_bytes(block) + block)
    return b"".join(out)


class Request:
    """One ClickHouse HTTP request, decoded into statement, data and settings."""

    def __init__(self, params, body, headers):
        self.params = dict(params)
        self.database = self.params.get("database") or headers.get("X-ClickHouse-Database")
        self.format = self.params.get("default_format") or headers.get("X-ClickHouse-Format") or "TabSeparated"
        self.query_id = self.params.get("query_id") or str(uuid.uuid4())
        self.compress_response = self.params.get("compress") == "1"
        self.query_params = {k[len("param_") :]: v for k, v in self.params.items() if k.startswith("param_")}
        self.settings = {
            k: v for k, v in self.params.items() if k not in HTTP_ONLY_PARAMS and not k.startswith("param_")
        }
        for name in self.settings:
            if not IDENTIFIER.match(name):
                raise ClickHouseError(CODE_BAD_ARGUMENTS, f"invalid setting name {name!r}")
        if self.database is not None and not IDENTIFIER.match(self.database):
            raise ClickHouseError(CODE_UNKNOWN_DATABASE, f"invalid database name {self.database!r}")

        content_type = headers.get("Content-Type", "")
        if content_type.startswith("multipart/form-data"):
            body = self._take_multipart(content_type, body)
        elif self.params.get("decompress") == "1":
            body = decompress_native(body)

        self.statement, self.insert_format, self.insert_data = self._split(self.params.get("query"), body)

    def _take_multipart(self, content_type, body):
        """Reads the query and its parameters from a multipart form body."""
        message = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
        )
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            value = part.get_payload(decode=True) or b""
            if name == "query":
                self.params["query"] = value.decode("utf-8")
            elif name and name.startswith("param_"):
                self.query_params[name[len("param_") :]] = value.decode("utf-8")
        return b""

    @staticmethod
    def _split(url_query, body):
        """Splits into (statement, insert format, insert data)."""
        if url_query is not None:
            head = url_query.encode("utf-8")
            match = INSERT_WITH_FORMAT.match(head)
            if match:
                inline = head[match.end() :]
                return match.group("stmt").decode("utf-8"), match.group("fmt").decode(), inline + body
            text = head + (b"\n" + body if body else b"")
        else:
            text = body
        match = INSERT_WITH_FORMAT.match(text)
        if match and len(text) > match.end():
            return match.group("stmt").decode("utf-8"), match.group("fmt").decode(), text[match.end() :]
        try:
            statement = text.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ClickHouseError(CODE_SYNTAX_ERROR, "query is not valid UTF-8")
        if not statement:
            raise ClickHouseError(CODE_SYNTAX_ERROR, "empty query")
        return statement, None, None


class Engine:
    """The chDB connection, used by one request at a time."""

    def __init__(self, data_dir):
        os.makedirs(data_dir, exist_ok=True)
        self.conn = chdb.state.connect(data_dir)
        self.lock = threading.Lock()
        self.version = self.conn.query("SELECT version()", "TabSeparated").bytes().decode().strip()

    def execute(self, request):
        """Runs a request; returns (body bytes, summary dict)."""
        with self.lock:
            applied = []
            try:
                if request.database:
                    self._run(f"USE `{request.database}`")
                for name, value in request.settings.items():
                    self._run(set_statement(name, value))
                    applied.append(name)
                if request.insert_format is not None:
                    return self._insert(request)
                return self._query(request)
            finally:
                for name in applied:
                    self._run_quietly(f"SET {name} = DEFAULT")
                if request.database:
                    self._run_quietly("USE default")

    def _run(self, sql):
        try:
            self.conn.query(sql, "TabSeparated")
        except Exception as error:  # chDB raises its own and RuntimeError
            raise from_engine_error(error)

    def _run_quietly(self, sql):
        try:
            self.conn.query(sql, "TabSeparated")
        except Exception as error:
            LOG.warning("cleanup statement failed: %s: %s", sql, error)

    def _insert(self, request):
        started = time.monotonic()
        try:
            inserter = self.conn.send_insert(request.statement, request.insert_format)
        except Exception as error:
            raise from_engine_error(error)
        try:
            if request.insert_data:
                inserter.append(request.insert_data)
            result = inserter.finish()
        except Exception as error:
            inserter.cancel()
            raise from_engine_error(error)
        summary = {
            "written_rows": str(result.rows_written),
            "written_bytes": str(result.bytes_written),
            "elapsed_ns": str(int((time.monotonic() - started) * 1e9)),
        }
        return b"", summary

    def _query(self, request):
        try:
            result = self.conn.query(request.statement, request.format, params=request.query_params)
        except Exception as error:
            raise from_engine_error(error)
        summary = {
            "read_rows": str(result.rows_read()),
            "read_bytes": str(result.bytes_read()),
            "elapsed_ns": str(int(result.elapsed() * 1e9)),
        }
        return result.bytes(), summary

    def close(self):
        with self.lock:
            self.conn.close()


class Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 front of the engine."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle's algorithm the
    # second waits for the client's delayed ACK, ~40 ms on every request.
    disable_nagle_algorithm = True
    server_version = "tyr-clickhouse-dev"
    engine = None  # set by main()

    def log_message(self, fmt, *args):
        LOG.debug("%s %s", self.address_string(), fmt % args)

    def do_GET(self):
        url = urlsplit(self.path)
        params = parse_qsl(url.query, keep_blank_values=True)
        if url.path == "/ping" or (url.path == "/" and not any(k == "query" for k, _ in params)):
            self._reply(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
            return
        self._serve(params, b"")

    def do_POST(self):
        url = urlsplit(self.path)
        try:
            body = self._read_body()
        except ClickHouseError as error:
            self._reply_error(error)
            self.close_connection = True
            return
        self._serve(parse_qsl(url.query, keep_blank_values=True), body)

    def _serve(self, params, body):
        started = time.monotonic()
        try:
            request = Request(params, body, self.headers)
            payload, summary = self.engine.execute(request)
        except ClickHouseError as error:
            LOG.info("query failed code=%d elapsed_ms=%.1f", error.code, (time.monotonic() - started) * 1e3)
            self._reply_error(error)
            return
        except Exception as error:  # never let a request kill the endpoint
            LOG.exception("internal error")
            self._reply_error(ClickHouseError(CODE_UNKNOWN_EXCEPTION, f"internal error: {error}"))
            return
        headers = {
            "Content-Type": "application/octet-stream",
            "X-ClickHouse-Query-Id": request.query_id,
            "X-ClickHouse-Format": request.format,
            "X-ClickHouse-Summary": json.dumps(summary),
            "X-ClickHouse-Server-Display-Name": "tyr-clickhouse-dev",
        }
        if request.compress_response:
            payload = compress_native(payload)
        self._reply(200, payload, headers)

    def _read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            size = int(length)
        except ValueError:
            raise ClickHouseError(CODE_BAD_ARGUMENTS, "invalid Content-Length")
        return self.rfile.read(size)

    def _read_chunked(self):
        parts = []
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ClickHouseError(CODE_BAD_ARGUMENTS, "malformed chunked body")
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _reply_error(self, error):
        body = (error.body().rstrip() + f" (version {self.engine.version})\n").encode("utf-8", "replace")
        self._reply(
            500,
            body,
            {
                "Content-Type": "text/plain; charset=UTF-8",
                "X-ClickHouse-Exception-Code": str(error.code),
            },
        )

    def _reply(self, status, body, headers):
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--data-dir", required=True, help="persistent chDB data directory")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args()
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )

    Handler.engine = Engine(args.data_dir)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True

    def stop(signum, _frame):
        LOG.info("signal %d received, shutting down", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    LOG.info("serving ClickHouse %s on http://%s:%d (data in %s)", Handler.engine.version, args.host, args.port, args.data_dir)
    server.serve_forever()
    server.server_close()
    Handler.engine.close()
    LOG.info("stopped")


if __name__ == "__main__":
    main()
