"""Every operation /api/openapi.json describes, fed malformed input as raw bytes: bodies in every
content type it declares (and the types it does not), odd path and query values, and odd bytes
in the identity headers, sent to a real `serve`. Whatever comes in, the answer is JSON below
500 and the log holds no traceback and no ERROR (SPEC §4, §12)."""

from __future__ import annotations

import json
import re
import urllib.request
import uuid

import pytest

from tests import serve_support
from tests.serve_support import assert_quiet, raw_request

served = serve_support.served  # the fixture

FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data; boundary=XX"
PART = b'--XX\r\nContent-Disposition: form-data; name="message"\r\n'
RAW_BODIES = {
    "application/json": [
        b"",
        b"\xff\xfe\x00",
        b"{",
        b"[]",
        b'"message"',
        b'{"message":"\\ud800"}',
        b'{"message":"a\\u0000b"}',
        b'{"message":1e999}',
        b'{"message":"hi","conversationId":{"$ne":null}}',
        b'{"message":"hi","userId":"\\u0007\\u001b[2J"}',
        b'{"message":"hi","userId":["a"]}',
        b"[" * 5000 + b"]" * 5000,
        b'{"message":"' + b"x" * 20001 + b'"}',
    ],
    FORM: [
        b"\xff\xfe",
        b"message=%ff%fe",
        b"message=a%00b",
        b"userId=%00&message=hi",
        b"=&=&&%",
        b"message=hi&message=again&conversationId=%zz",
        b"message=" + b"y" * 20001,
    ],
    MULTIPART: [
        b"",
        PART + b"\r\n\xff\xfe\r\n--XX--\r\n",
        PART + b"Content-Type: text/plain; charset=bogus-9\r\n\r\nhi\r\n--XX--\r\n",
        PART + b"Content-Transfer-Encoding: base64\r\n\r\n!!!not base64\r\n--XX--\r\n",
        PART + b"Content-Transfer-Encoding: bas64\r\n\r\nhi\r\n--XX--\r\n",
        PART + b"Content-Encoding: zstd-ish\r\n\r\nhi\r\n--XX--\r\n",
        b"--XX\r\nContent-\xdc\xc1Disposition: form-data\r\n\r\nhi\r\n--XX--\r\n",
        PART + b"\r\nhel",
        b"--XX--\r\n",
        b"--XY\r\n\r\nwrong boundary\r\n--XY--\r\n",
        PART.replace(b'"message"', b'"message"; filename="a.txt"') + b"\r\nfile\r\n--XX--\r\n",
    ],
}
OTHER_CONTENT_TYPES = [
    "multipart/form-data",
    f"{FORM}; charset=bogus-9",
    "application/json; charset=utf-16",
    "text/plain",
    "application/octet-stream",
    "\x7f/\x7f",
]
PATH_VALUES = ["not-a-uuid", "%00", "%ff%fe", str(uuid.uuid4()).upper(), "a" * 300, "..%2F..%2Fetc"]
QUERY_VALUES = [
    "-1",
    "abc",
    "%00",
    "9" * 400,
    "0001-01-01T00:00:00%2B14:00",
    "9999-12-31T23:59:59-14:00",
]
HEADERS = [
    b"X-User-Id: \xff\xfe\r\n",
    b"X-User-Id: a\x01b\r\n",
    b"X-API-Key: \xc3\xa9\xff\r\n",
    b"Authorization: Bearer \xff.\xfe.\x00\r\n",
    b"Authorization: Basic \xff\r\n",
    b"Authorization: Bearer " + b"a" * 4000 + b"\r\n",
]  # fmt: skip


def _operations(server) -> list[tuple[str, str, dict]]:
    with urllib.request.urlopen(f"{server.base_url}/api/openapi.json") as response:
        document = json.load(response)
    return [
        (method.upper(), path, operation)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    ]


def _filled(path: str, value: str | None = None) -> str:
    return re.sub(r"\{[^}]+\}", value or str(uuid.uuid4()), path)


def _requests(method: str, path: str, operation: dict) -> list[tuple[str, bytes, bytes]]:
    """(what, extra header lines, body) for every malformed request of one operation."""
    sent: list[tuple[str, bytes, bytes]] = []
    declared = operation.get("requestBody", {}).get("content", {})
    for content_type in {**dict.fromkeys(declared), **dict.fromkeys(RAW_BODIES)}:
        kind = MULTIPART if content_type.startswith("multipart/") else content_type
        for body in RAW_BODIES.get(kind, []):
            sent.append((f"{kind} {body[:30]!r}", f"Content-Type: {kind}\r\n".encode(), body))
    for content_type in OTHER_CONTENT_TYPES:
        header = f"Content-Type: {content_type}\r\n".encode("latin-1")
        sent.append((content_type, header, b"message=hi"))
    for header in HEADERS:
        sent.append((repr(header[:40]), header + b"Content-Type: application/json\r\n", b"{}"))
    return sent


def _head(method: str, target: str, port: int, extra: bytes = b"") -> bytes:
    return f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode() + extra


def _assert_json_below_500(status: int, headers: dict, content: bytes, what: str) -> None:
    assert status < 500, (what, status, content[:300])
    assert headers.get("content-type", "").startswith("application/json"), what
    json.loads(content)


@pytest.mark.parametrize("auth_mode", ["none", "jwt"])
async def test_every_operation_answers_malformed_bodies_and_headers_below_500(served, auth_mode):
    server = await served("in-process", AUTH_MODE=auth_mode)
    mark, sent = server.log_mark(), 0

    for method, path, operation in _operations(server):
        for what, extra, body in _requests(method, path, operation):
            head = _head(method, _filled(path), server.port, b"X-User-Id: fuzz\r\n" + extra)
            status, headers, content = await raw_request(server.port, head, body)
            _assert_json_below_500(status, headers, content, f"{method} {path} {what}")
            sent += 1

    assert_quiet(server.log_since(mark), sent)


async def test_every_operation_answers_odd_path_and_query_values_below_500(served):
    server = await served("in-process")
    mark, sent = server.log_mark(), 0

    for method, path, operation in _operations(server):
        targets = [_filled(path, value) for value in PATH_VALUES] if "{" in path else []
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "query":
                targets += [f"{_filled(path)}?{parameter['name']}={v}" for v in QUERY_VALUES]
        for target in targets:
            head = _head(method, target, server.port, b"X-User-Id: fuzz\r\n")
            status, headers, content = await raw_request(server.port, head)
            _assert_json_below_500(status, headers, content, f"{method} {target[:80]}")
            sent += 1

    assert_quiet(server.log_since(mark), sent)
