"""Wire compatibility: Istio-shaped CheckRequests built with Envoy's own API types (PyPI
`envoy-data-plane`, not our protos), sent over the package's grpclib client and over grpcio, on
TCP and on the Unix socket; the decoded CheckResponses are checked field by field.

Run through tests/wire/run.sh, which starts the server and sets PORTCULLIS_* variables.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import os
import subprocess
import time

import grpc
import pytest
from grpclib.client import Channel

import envoy_data_plane.envoy.config.core.v3 as core
import envoy_data_plane.envoy.service.auth.v3 as auth
import envoy_data_plane.google.protobuf as pb

ENV = os.environ
BIN = ENV["PORTCULLIS_BIN"]
GRPC = ENV["PORTCULLIS_GRPC"]
UNIX = ENV["PORTCULLIS_UNIX"]
DEMO_KEY = ENV["PORTCULLIS_DEMO_KEY"]
OTHER_KEY = ENV["PORTCULLIS_OTHER_KEY"]

HOST = "shop.default.svc.cluster.local"
FRONTEND = "spiffe://cluster.local/ns/frontend/sa/web"
OWNED_HEADERS_FILE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "owned-headers.txt")


def owned_headers(kind):
    """Owned headers of one kind (`identity` or `strip`), from the fixture the Rust suite reads too."""
    with open(OWNED_HEADERS_FILE, encoding="utf-8") as f:
        rows = [line.split() for line in f if line.strip() and not line.lstrip().startswith("#")]
    return {name for k, name in rows if k == kind}


# Identity headers the shared config (tests/fixtures/sidecar.yaml) makes portcullis set, and the
# method/URL-override headers it strips on every allow (`headers.strip_on_allow` default).
IDENTITY_HEADERS = owned_headers("identity")
STRIP_ON_ALLOW = owned_headers("strip")


def spellings(name):
    """Every `-`/`_` spelling of a header name: what CGI-style upstreams read as the same name."""
    out = [""]
    for ch in name:
        out = [p + c for p in out for c in (("-", "_") if ch in "-_" else (ch,))]
    return set(out)


def expected_removals(set_names):
    """What an allow must list in headers_to_remove: every spelling of every owned header, except
    the exact names set on that response (Envoy removes after adding)."""
    owned = set()
    for h in IDENTITY_HEADERS | STRIP_ON_ALLOW:
        owned |= spellings(h)
    return owned - set(set_names)


OVERWRITE = core.HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD
TIMEOUT = 10.0


# ---- tokens (minted by the binary's dev-only `token` command) ---------------------------------


def mint(sub="alice", groups=(), claims=None, key=DEMO_KEY, kid="demo"):
    cmd = [BIN, "token", "--dev", "--key", key, "--kid", kid, "--sub", sub]
    if groups:
        cmd += ["--groups", ",".join(groups)]
    for k, v in (claims or {}).items():
        cmd += ["--claim", f"{k}={v}"]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30).stdout.strip()


def alg_none(sub="alice"):
    b64 = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
    now = int(time.time())
    header = {"alg": "none", "typ": "JWT", "kid": "demo"}
    claims = {"iss": "https://demo.portcullis.dev", "sub": sub, "aud": "demo-api", "iat": now, "exp": now + 600}
    return f"{b64(header)}.{b64(claims)}."


# ---- requests as Istio's sidecar Envoy sends them -------------------------------------------


def sock(ip, port):
    return core.Address(socket_address=core.SocketAddress(address=ip, port_value=port))


def istio_request(method, path, headers=None, principal="", request_id="9f1c2e7a-istio-req", raw=False):
    """A CheckRequest shaped like an Istio sidecar's: merged `headers` map plus the http
    fields, or (raw=True) only `header_map` with raw_value, as a proxyless gRPC client sends."""
    hdrs = {
        ":authority": HOST,
        ":method": method,
        ":path": path,
        ":scheme": "http",
        "user-agent": "curl/8.5.0",
        "accept": "*/*",
        "x-forwarded-proto": "http",
        "x-forwarded-for": "10.244.1.7",
        "x-request-id": request_id,
        "x-envoy-attempt-count": "1",
        "x-envoy-peer-metadata-id": "sidecar~10.244.1.7~web-7d9c.frontend~frontend.svc.cluster.local",
        "x-forwarded-client-cert": f'By=spiffe://cluster.local/ns/default/sa/shop;Hash=abc;Subject="";URI={principal}',
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "x-b3-sampled": "0",
    }
    hdrs.update(headers or {})
    if raw:
        http = auth.AttributeContextHttpRequest(
            header_map=core.HeaderMap(headers=[core.HeaderValue(key=k, raw_value=v.encode()) for k, v in hdrs.items()]),
            protocol="HTTP/2",
        )
    else:
        http = auth.AttributeContextHttpRequest(
            id=request_id,
            method=method,
            headers=hdrs,
            path=path,
            host=HOST,
            scheme="http",
            protocol="HTTP/1.1",
            size=0,
        )
    istio_authn = pb.Struct(fields={"source.principal": pb.Value(string_value=principal)})
    return auth.CheckRequest(
        attributes=auth.AttributeContext(
            source=auth.AttributeContextPeer(address=sock("10.244.1.7", 51234), principal=principal),
            destination=auth.AttributeContextPeer(
                address=sock("10.244.2.9", 8080), principal="spiffe://cluster.local/ns/default/sa/shop"
            ),
            request=auth.AttributeContextRequest(time=datetime.datetime.now(datetime.timezone.utc), http=http),
            context_extensions={"virtual_host": "inbound|http|8080", "authz": "portcullis"},
            metadata_context=core.Metadata(filter_metadata={"istio_authn": istio_authn}),
            tls_session=auth.AttributeContextTlsSession(sni="outbound_.8080_._.shop.default.svc.cluster.local"),
        )
    )


# ---- clients: grpclib (the package's own async stub) and grpcio (its sync stub) ---------------


def via_grpclib(transport):
    async def call(req):
        host, port = GRPC.rsplit(":", 1)
        ch = Channel(path=UNIX) if transport == "unix" else Channel(host, int(port))
        try:
            return await auth.AuthorizationAsyncStub(ch).check(req, timeout=TIMEOUT)
        finally:
            ch.close()

    return lambda req: asyncio.run(call(req))


def via_grpcio(transport):
    target = f"unix:{UNIX}" if transport == "unix" else GRPC
    # gRPC C-core >= 1.57 sends the %-encoded socket path as :authority on unix: targets, which
    # hyper's h2 (under tonic) refuses with RST_STREAM PROTOCOL_ERROR (hyperium/h2#487,
    # grpc/grpc#38142). Such clients (Envoy's google_grpc included) must set a plain authority;
    # Envoy's default envoy_grpc client sends the cluster name and is not affected.
    options = [("grpc.default_authority", "localhost")] if transport == "unix" else []

    def call(req):
        with grpc.insecure_channel(target, options=options) as ch:
            method = ch.unary_unary(
                "/envoy.service.auth.v3.Authorization/Check",
                request_serializer=auth.CheckRequest.SerializeToString,
                response_deserializer=auth.CheckResponse.FromString,
            )
            return method(req, timeout=TIMEOUT)

    return call


@pytest.fixture(
    params=[("grpclib", "tcp"), ("grpclib", "unix"), ("grpcio", "tcp"), ("grpcio", "unix")],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def check(request):
    client, transport = request.param
    return via_grpclib(transport) if client == "grpclib" else via_grpcio(transport)


# ---- reading answers ------------------------------------------------------------------------


def meta(resp):
    """dynamic_metadata as plain Python values."""
    out = {}
    for k, v in resp.dynamic_metadata.fields.items():
        if v.is_set("list_value"):
            out[k] = [x.string_value for x in v.list_value.values]
        else:
            out[k] = v.string_value
    return out


def ok_headers(resp):
    assert resp.is_set("ok_response"), resp
    out = {}
    for h in resp.ok_response.headers:
        assert h.append is False, h  # BoolValue explicitly false, for Envoys that read `append`
        assert h.append_action == OVERWRITE, h
        assert h.header.key not in out
        out[h.header.key] = h.header.value
    return out


def denied(resp, status):
    assert resp.status.code != 0, resp
    assert resp.is_set("denied_response"), resp
    assert not resp.is_set("ok_response")
    assert int(resp.denied_response.status.code) == status, resp
    hdrs = {h.header.key: h.header.value for h in resp.denied_response.headers}
    assert hdrs.get("content-type") == "application/json"
    return hdrs, json.loads(resp.denied_response.body)


# ---- tests ----------------------------------------------------------------------------------


def test_anonymous_public_read_is_allowed_with_full_metadata(check):
    resp = check(istio_request("GET", "/public/status", {"x-portcullis-subject": "spoofed"}))
    assert resp.status.code == 0
    assert ok_headers(resp) == {"x-portcullis-principal": 'Anonymous::"anonymous"'}
    assert set(resp.ok_response.headers_to_remove) == expected_removals({"x-portcullis-principal"})
    back = {h.header.key: h.header.value for h in resp.ok_response.response_headers_to_add}
    assert back == {"x-portcullis-policy": "public-read"}
    assert meta(resp) == {
        "decision": "allow",
        "reason": "allowed",
        "principal": 'Anonymous::"anonymous"',
        "policy_ids": ["public-read"],
        "request_id": "9f1c2e7a-istio-req",
    }


def test_user_token_sets_identity_headers_over_spoofed_copies(check):
    token = mint("alice", claims={"email": "alice@example.com"})
    spoofed = {h: "spoofed-by-client" for h in IDENTITY_HEADERS}
    resp = check(istio_request("GET", "/api/orders/42", {"authorization": f"Bearer {token}", **spoofed}))
    hdrs = ok_headers(resp)
    assert hdrs == {
        "x-portcullis-principal": 'User::"alice"',
        "x-portcullis-subject": "alice",
        "x-portcullis-issuer": "https://demo.portcullis.dev",
        "x-portcullis-email": "alice@example.com",
    }
    assert set(resp.ok_response.headers_to_remove) == expected_removals(hdrs)
    assert meta(resp)["policy_ids"] == ["users-read-api"]


def test_no_credential_is_401_with_a_bearer_challenge(check):
    resp = check(istio_request("GET", "/api/orders/42", request_id="rid-401"))
    assert resp.status.code == 16  # UNAUTHENTICATED
    hdrs, body = denied(resp, 401)
    assert hdrs["www-authenticate"] == 'Bearer realm="portcullis"'
    assert body == {"error": "credential_required", "request_id": "rid-401"}
    assert meta(resp)["decision"] == "deny"


@pytest.mark.parametrize(
    "what,token,reason",
    [
        ("garbage", lambda: "garbage", "token_malformed"),
        ("wrong key", lambda: mint(key=OTHER_KEY), "bad_signature"),
        ("expired", lambda: mint(claims={"exp": int(time.time()) - 600, "nbf": 0, "iat": 0}), "token_expired"),
        ("alg none", alg_none, "alg_none"),
    ],
)
def test_bad_tokens_are_401_invalid_token(check, what, token, reason):
    t = token()
    resp = check(istio_request("GET", "/public/status", {"authorization": f"Bearer {t}"}))
    hdrs, body = denied(resp, 401)
    assert hdrs["www-authenticate"].startswith('Bearer realm="portcullis", error="invalid_token"'), hdrs
    assert body["error"] == reason, (what, body)
    assert t not in resp.denied_response.body


def test_known_caller_not_permitted_is_403_without_challenge(check):
    token = mint("alice")
    resp = check(istio_request("POST", "/api/orders", {"authorization": f"Bearer {token}"}))
    assert resp.status.code == 7  # PERMISSION_DENIED
    hdrs, body = denied(resp, 403)
    assert "www-authenticate" not in hdrs
    assert body["error"] == "no_permit"
    resp = check(istio_request("GET", "/admin/users", {"authorization": f"Bearer {token}"}))
    denied(resp, 403)
    assert meta(resp)["policy_ids"] == ["admin-area-admins-only"]
    # The policy id goes back on denials too.
    assert {h.header.key: h.header.value for h in resp.denied_response.headers}["x-portcullis-policy"] == (
        "admin-area-admins-only"
    )


def test_admin_and_api_client_and_mtls_peer_are_allowed_by_their_policies(check):
    admin = mint("root", groups=["admins"])
    resp = check(istio_request("DELETE", "/admin/users/7", {"authorization": f"Bearer {admin}"}))
    assert meta(resp)["policy_ids"] == ["admins-admin-area"]
    resp = check(istio_request("POST", "/api/jobs/nightly", {"x-api-key": "demo-batch-key"}))
    assert ok_headers(resp)["x-portcullis-client"] == "batch"
    assert meta(resp)["policy_ids"] == ["batch-client-write"]
    resp = check(istio_request("GET", "/api/catalog", principal=FRONTEND))
    assert ok_headers(resp)["x-portcullis-peer"] == FRONTEND
    assert meta(resp)["principal"] == f'Service::"{FRONTEND}"'
    resp = check(istio_request("GET", "/api/catalog", principal="spiffe://cluster.local/ns/backend/sa/worker"))
    denied(resp, 403)


def test_tenant_header_must_match_the_token(check):
    token = mint("carol", claims={"tenant": "acme"})
    auth_h = {"authorization": f"Bearer {token}"}
    resp = check(istio_request("GET", "/api/tenants/acme/invoices", {**auth_h, "x-tenant": "acme"}))
    assert resp.status.code == 0
    resp = check(istio_request("GET", "/api/tenants/acme/invoices", {**auth_h, "x-tenant": "globex"}))
    denied(resp, 403)
    assert meta(resp)["policy_ids"] == ["tenant-header-must-match"]


@pytest.mark.parametrize(
    "path,status",
    [
        ("/public/../admin", 401),
        ("/public/%2e%2e/admin", 401),
        ("//admin", 401),
        ("/public%2fadmin", 400),
        ("/public\\admin", 400),
        ("/public/..;/admin", 400),
    ],
)
def test_path_tricks_never_reach_public_read(check, path, status):
    resp = check(istio_request("GET", path))
    denied(resp, status)
    assert meta(resp)["policy_ids"] != ["public-read"]


def test_query_string_does_not_change_the_path(check):
    resp = check(istio_request("GET", "/public/status?next=/../admin"))
    assert resp.status.code == 0
    resp = check(istio_request("GET", "/admin?x=/public/status"))
    denied(resp, 401)


def test_proxyless_header_map_only_with_raw_values(check):
    token = mint("alice")
    resp = check(istio_request("GET", "/api/orders", {"authorization": f"Bearer {token}"}, raw=True))
    assert ok_headers(resp)["x-portcullis-subject"] == "alice"
    assert meta(resp)["request_id"] == "9f1c2e7a-istio-req"
    resp = check(istio_request("POST", "/api/orders", {"authorization": f"Bearer {token}"}, raw=True))
    denied(resp, 403)
    resp = check(istio_request("GET", "/public/../admin", raw=True))
    denied(resp, 401)
