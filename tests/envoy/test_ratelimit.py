"""Quotas across replicas: a real Envoy runs deploy/envoy-ratelimit.yaml (ext_authz, then the global
rate limit filter) against an in-test gRPC RateLimitService stub that records every descriptor it
receives and answers OK or OVER_LIMIT. The descriptors must carry what portcullis verified, never
what the client claims; OVER_LIMIT must reach the client as a 429.

The stub needs no generated code: grpcio's generic handlers hand it the raw request bytes, which
are decoded here by the field numbers of envoy.service.ratelimit.v3 (RateLimitRequest: 1 domain,
2 descriptors; RateLimitDescriptor: 1 entries; Entry: 1 key, 2 value). The answer is a
RateLimitResponse with only overall_code (1: OK, 2: OVER_LIMIT)."""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
import pytest
import yaml

from conftest import token
from harness import DEMO_API_KEY, REPO, free_port, request

RATELIMIT_YAML = REPO / "deploy" / "envoy-ratelimit.yaml"
SERVICE = "envoy.service.ratelimit.v3.RateLimitService"
OK, OVER_LIMIT = 1, 2


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, object]]:
    """(field number, value) of a protobuf message; length-delimited values as bytes."""
    out, i = [], 0
    while i < len(buf):
        tag, i = _varint(buf, i)
        num, wire = tag >> 3, tag & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i : i + n], i + n
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        else:
            raise ValueError(f"unexpected wire type {wire}")
        out.append((num, value))
    return out


def decode_request(raw: bytes) -> dict:
    """RateLimitRequest as {"domain": str, "descriptors": [[(key, value), ...], ...]}."""
    domain, descriptors = "", []
    for num, value in _fields(raw):
        if num == 1:
            domain = value.decode()
        elif num == 2:
            entries = []
            for enum, entry in _fields(value):
                if enum == 1:
                    kv = dict(_fields(entry))
                    entries.append((kv.get(1, b"").decode(), kv.get(2, b"").decode()))
            descriptors.append(entries)
    return {"domain": domain, "descriptors": descriptors}


class RateLimitStub:
    """A RateLimitService on 127.0.0.1 that records requests and gives the configured answer."""

    def __init__(self) -> None:
        self.seen: list[dict] = []
        self.answer = OK
        self._lock = threading.Lock()
        handler = grpc.method_handlers_generic_handler(
            SERVICE, {"ShouldRateLimit": grpc.unary_unary_rpc_method_handler(self._should_rate_limit)}
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def _should_rate_limit(self, raw: bytes, _context) -> bytes:
        with self._lock:
            self.seen.append(decode_request(raw))
            return bytes([0x08, self.answer])  # field 1 (overall_code), varint

    def start(self) -> "RateLimitStub":
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(grace=None).wait(5)

    def take(self) -> list[dict]:
        with self._lock:
            seen, self.seen = self.seen, []
            return seen


@pytest.fixture(scope="module")
def rls():
    stub = RateLimitStub().start()
    yield stub
    stub.stop()


def ratelimit_stack(stacks, address: dict):
    return stacks(
        "unix",
        envoy_base=yaml.safe_load(RATELIMIT_YAML.read_text()),
        clusters={"ratelimit": address},
        headers={"tenant": "x-portcullis-tenant"},
        claims_to_headers={"tenant": "x-portcullis-tenant"},
    )


@pytest.fixture(scope="module")
def stack(stacks, rls):
    return ratelimit_stack(stacks, {"socket_address": {"address": "127.0.0.1", "port_value": rls.port}})


@pytest.fixture(autouse=True)
def _fresh(rls):
    rls.answer = OK
    rls.take()


def bearer(tok: str) -> tuple[str, str]:
    return ("authorization", f"Bearer {tok}")


def test_descriptors_carry_the_verified_principal_not_the_clients_claim(stack, rls):
    r = request(
        stack.port,
        "GET",
        "/api/orders",
        [
            bearer(token("alice", tenant="acme")),
            # Imitations of everything a descriptor is built from: none of them may count.
            ("x-portcullis-principal", 'User::"admin"'),
            ("x-portcullis-tenant", "other"),
            ("x-tenant", "other"),
            ("x-portcullis-subject", "admin"),
        ],
    )
    assert r.status == 200, r.body
    (seen,) = rls.take()
    assert seen["domain"] == "portcullis"
    assert seen["descriptors"] == [[("principal", 'User::"alice"')], [("tenant", "acme")]], seen


def test_an_api_client_is_its_own_principal_and_has_no_tenant(stack, rls):
    r = request(stack.port, "POST", "/api/jobs", [("x-api-key", DEMO_API_KEY), ("x-portcullis-tenant", "acme")], b"{}")
    assert r.status == 200, r.body
    (seen,) = rls.take()
    # No tenant was proven, so the tenant descriptor is left out, whatever the client sent.
    assert seen["descriptors"] == [[("principal", 'ApiClient::"batch"')]], seen


def test_over_limit_is_a_429_at_the_client_and_nothing_reaches_the_app(stack, rls):
    rls.answer = OVER_LIMIT
    before = stack.upstream.count()
    r = request(stack.port, "GET", "/api/orders", [bearer(token("alice", tenant="acme"))])
    assert r.status == 429, (r.status, r.body)
    assert r.header("x-envoy-ratelimited") == "true", r.headers
    assert stack.upstream.count() == before
    (seen,) = rls.take()
    assert [("principal", 'User::"alice"')] in seen["descriptors"], seen


def test_a_denied_request_never_reaches_the_rate_limit_service(stack, rls):
    # Anonymous on a protected path: portcullis answers 401 and the quota is not consulted.
    r = request(stack.port, "GET", "/api/orders", [("x-portcullis-principal", 'User::"alice"')])
    assert r.status == 401, (r.status, r.body)
    # A forged token is refused by portcullis too.
    r = request(stack.port, "GET", "/api/orders", [bearer("e30.e30.e30")])
    assert r.status == 401, (r.status, r.body)
    assert rls.take() == []


def test_an_unreachable_rate_limit_service_fails_open_as_documented(fresh_stacks):
    # failure_mode_deny: false in deploy/envoy-ratelimit.yaml: authorization still applies (the
    # anonymous caller is refused), the quota does not.
    dead = {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}
    stack = ratelimit_stack(fresh_stacks, dead)
    r = request(stack.port, "GET", "/api/orders", [bearer(token("alice"))])
    assert r.status == 200, (r.status, r.body)
    r = request(stack.port, "GET", "/api/orders")
    assert r.status == 401, (r.status, r.body)
