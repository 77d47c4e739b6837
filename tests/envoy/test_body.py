"""Request bodies and gRPC calls through a real Envoy, which builds the CheckRequest: the shipped
bootstrap with `with_request_body` as the chart renders it (one limit, never partial, raw bytes),
and portcullis with the same `request.max_body_bytes`. A policy reads `context.body` where the
schema declares it; an unreadable body is a 400 with its reason; a body over the limit never
reaches portcullis (Envoy answers 413); a gRPC call's service and method decide."""

from __future__ import annotations

import json

import pytest

import conftest
from harness import DEMO, DEMO_API_KEY, ext_authz_config, request

MAX_BODY = 4096

WRITE = """action "POST", "PUT", "PATCH", "DELETE" in ["write"] appliesTo {
  principal: [User, Service, ApiClient, Anonymous],
  resource: [Route],
  context: RequestContext,
};"""

POLICY = """
@id("small-orders")
permit (principal is ApiClient, action == Action::"POST", resource)
when { resource.path like "/orders*" && context has body && context.body.amount <= 100 };

@id("orders-lookup-grpc")
permit (principal is ApiClient, action == Action::"POST", resource)
when { context has grpc_service && context.grpc_service == "orders.v1.Orders" &&
       context has grpc_method && context.grpc_method == "GetOrder" };
"""


def body_policies() -> dict[str, str]:
    """The demo policies; the write actions' context also declares an optional order body."""
    policies = {p.name: p.read_text() for p in (DEMO / "policies").iterdir()}
    schema = policies["portcullis.cedarschema"]
    fields = schema.split("type RequestContext = {")[1].split("\n};")[0]
    assert WRITE in schema, "the demo schema declares the write actions together"
    write_ctx = f"type WriteContext = {{{fields}\n  body?: {{ amount: Long, currency: String }},\n}};\n\n"
    policies["portcullis.cedarschema"] = schema.replace(WRITE, write_ctx + WRITE.replace("RequestContext", "WriteContext"))
    policies["body.cedar"] = POLICY
    return policies


@pytest.fixture
def body_stack(fresh_stacks, monkeypatch):
    """A stack whose Envoy sends bodies as the chart configures it, and whose portcullis parses
    at most the same number of bytes."""
    base_demo_config, base_envoy_config = conftest.demo_config, conftest.envoy_config

    def demo_config(work, **kw):
        cfg = base_demo_config(work, **kw)
        cfg["request"] = {"max_body_bytes": MAX_BODY}
        return cfg

    def envoy_config(*args, **kw):
        cfg = base_envoy_config(*args, **kw)
        ext_authz_config(cfg)["with_request_body"] = {
            "max_request_bytes": MAX_BODY,
            "allow_partial_message": False,
            "pack_as_bytes": True,
        }
        return cfg

    monkeypatch.setattr(conftest, "demo_config", demo_config)
    monkeypatch.setattr(conftest, "envoy_config", envoy_config)
    return fresh_stacks("unix", policies=body_policies())


def post(stack, path: str, body: bytes, content_type: str = "application/json", extra=()):
    headers = [("x-api-key", DEMO_API_KEY), ("content-type", content_type), *extra]
    return request(stack.port, "POST", path, headers, body=body)


def refused(r) -> tuple[int, str]:
    assert r.header("content-type") == "application/json", (r.status, r.headers, r.body)
    return r.status, json.loads(r.body)["error"]


def test_a_body_policy_decides_and_unreadable_bodies_are_refused_with_their_reason(body_stack):
    s = body_stack
    r = post(s, "/orders", b'{"amount": 40, "currency": "EUR"}')
    assert r.status == 200, r.body
    assert r.header("x-portcullis-policy") == "small-orders", r.headers
    before = s.upstream.count()
    assert refused(post(s, "/orders", b'{"amount": 400, "currency": "EUR"}')) == (403, "no_permit")
    for body, want in [
        (b'{"amount": 1, "currency": "EUR", "amount": 1000}', (400, "body_ambiguous")),
        (b'{"amount": 1, "currency": "EUR"', (400, "body_not_json")),
        (b'{"amount": "1", "currency": "EUR"}', (400, "body_invalid")),
        (b'{"amount": 123456789012345678901234567890, "currency": "EUR"}', (400, "body_invalid")),
        (b"[" * 1000, (400, "body_too_deep")),
        # Not UTF-8: Envoy sends raw bytes (pack_as_bytes), portcullis refuses them as not JSON.
        (b'{"amount": 1, "currency": "\xff"}', (400, "body_not_json")),
    ]:
        assert refused(post(s, "/orders", body)) == want, body[:40]
    # Over the limit: Envoy refuses it itself (never a truncated body in a Check).
    big = json.dumps({"amount": 1, "currency": "x" * MAX_BODY}).encode()
    assert post(s, "/orders", big).status == 413
    assert s.upstream.count() == before, "no refused request reached the app"
    # Where the schema declares no body (reads), any body is ignored.
    r = request(s.port, "GET", "/public/status", [("content-type", "application/json")], body=b"[" * 1000)
    assert r.status == 200, r.body


def test_a_grpc_calls_service_and_method_decide(body_stack):
    s = body_stack
    grpc = [("te", "trailers")]
    r = post(s, "/orders.v1.Orders/GetOrder", b"\x00\x00\x00\x00\x00", "application/grpc", grpc)
    assert r.status == 200, (r.status, r.headers, r.body)
    assert r.header("x-portcullis-policy") == "orders-lookup-grpc", r.headers
    # Another method: refused; Envoy turns the deny into a gRPC status for a gRPC client.
    r = post(s, "/orders.v1.Orders/DeleteOrder", b"\x00\x00\x00\x00\x00", "application/grpc", grpc)
    assert (r.status, r.header("grpc-status")) == (200, "7"), (r.status, r.headers)
    assert json.loads(r.header("grpc-message"))["error"] == "no_permit"
    # The same path without a gRPC content type is not a gRPC call.
    assert refused(post(s, "/orders.v1.Orders/GetOrder", b"x", "text/plain")) == (403, "no_permit")
