"""End to end through a real Envoy 1.40 running the shipped bootstrap (deploy/envoy.yaml), with
portcullis over its Unix socket and over TCP, and an echo upstream: what the client gets, and what
the upstream receives (or that it receives nothing)."""

from __future__ import annotations

import time

import pytest

from conftest import token
from harness import DEMO, DEMO_API_KEY, ext_authz_config, ext_authz_route, request

IDENTITY = ["x-portcullis-principal", "x-portcullis-subject", "x-portcullis-issuer", "x-portcullis-email",
            "x-portcullis-peer", "x-portcullis-client"]
STATUS_NAMES = {"ServiceUnavailable": 503, "Forbidden": 403, "InternalServerError": 500, "BadGateway": 502}


def bearer(tok: str) -> tuple[str, str]:
    return ("authorization", f"Bearer {tok}")


def upstream_headers(r) -> dict[str, list[str]]:
    """The headers the echo upstream received, by lower-cased name."""
    out: dict[str, list[str]] = {}
    for k, v in r.json()["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


def assert_denied(stack, r, status: int, error: str | None = None) -> dict:
    """A deny from portcullis: the status, a small JSON body, and nothing sent upstream."""
    assert r.status == status, (r.status, r.body)
    assert r.header("content-type") == "application/json", r.headers
    body = r.json()
    assert set(body) == {"error", "request_id"}, body
    assert body["request_id"], "the deny names the request id Envoy gave it"
    if error is not None:
        assert body["error"] == error, body
    return body


def status_on_error(stack) -> int:
    code = ext_authz_config(stack.envoy.config).get("status_on_error", {}).get("code", "Forbidden")
    return STATUS_NAMES[code]


def eventually(what: str, cond, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)


# Allow ---------------------------------------------------------------------------------------


def test_allow_injects_identity_and_drops_every_client_copy(stack):
    before = stack.upstream.count()
    r = request(
        stack.port,
        "GET",
        "/api/orders",
        [
            bearer(token("alice", email="alice@example.com")),
            ("x-portcullis-subject", "admin"),
            ("X-Portcullis-Subject", "root"),
            ("x-portcullis-principal", 'User::"admin"'),
            ("x-portcullis-issuer", "https://evil.example"),
            ("x-portcullis-email", "admin@example.com"),
            ("x-portcullis-peer", "spiffe://cluster.local/ns/admin/sa/root"),
            ("x-portcullis-client", "batch"),
        ],
    )
    assert r.status == 200, r.body
    assert stack.upstream.count() == before + 1
    seen = upstream_headers(r)
    assert seen["x-portcullis-subject"] == ["alice"]
    assert seen["x-portcullis-principal"] == ['User::"alice"']
    assert seen["x-portcullis-issuer"] == ["https://demo.portcullis.dev"]
    assert seen["x-portcullis-email"] == ["alice@example.com"]
    # Identities this caller does not have: every client copy is gone.
    assert "x-portcullis-peer" not in seen and "x-portcullis-client" not in seen, seen
    # The determining policy goes back to the client (headers.policy_ids).
    assert r.header("x-portcullis-policy") == "users-read-api"


def test_anonymous_allow_strips_spoofed_identity(stack):
    r = request(stack.port, "GET", "/public/status",
                [("x-portcullis-subject", "admin"), ("x-portcullis-client", "batch"),
                 ("x-portcullis-principal", 'User::"admin"')])
    assert r.status == 200, r.body
    seen = upstream_headers(r)
    assert seen.get("x-portcullis-subject") is None and seen.get("x-portcullis-client") is None, seen
    assert seen.get("x-portcullis-principal") in (None, ['Anonymous::"anonymous"']), seen


def test_api_key_caller_is_named_to_the_upstream(stack):
    r = request(stack.port, "POST", "/api/jobs", [("x-api-key", DEMO_API_KEY), ("x-portcullis-client", "root")],
                body=b"{}")
    assert r.status == 200, r.body
    seen = upstream_headers(r)
    assert seen["x-portcullis-client"] == ["batch"]
    assert "x-portcullis-subject" not in seen


# Denials -------------------------------------------------------------------------------------


def test_no_credential_on_a_protected_route_is_401_with_a_challenge(stack):
    before = stack.upstream.count()
    r = request(stack.port, "GET", "/api/orders")
    assert_denied(stack, r, 401)
    assert (r.header("www-authenticate") or "").startswith("Bearer"), r.headers
    assert stack.upstream.count() == before


def test_invalid_token_is_401_never_anonymous(stack):
    before = stack.upstream.count()
    # /public/* permits anonymous callers: a bad token must still not get through.
    r = request(stack.port, "GET", "/public/status", [bearer("not.a.jwt")])
    assert_denied(stack, r, 401)
    assert (r.header("www-authenticate") or "").startswith("Bearer"), r.headers
    assert stack.upstream.count() == before


def test_forbidden_is_403_and_never_reaches_the_upstream(stack):
    before = stack.upstream.count()
    r = request(stack.port, "GET", "/admin/users", [bearer(token("alice"))])
    assert_denied(stack, r, 403)
    assert stack.upstream.count() == before
    r = request(stack.port, "DELETE", "/api/orders/1", [bearer(token("alice"))])
    assert_denied(stack, r, 403)
    assert stack.upstream.count() == before


def test_decisions_reach_envoys_access_log_as_dynamic_metadata(stack):
    denied = assert_denied(stack, request(stack.port, "GET", "/admin/users", [bearer(token("alice"))]), 403)
    allowed = request(stack.port, "GET", "/api/orders", [bearer(token("alice"))])
    assert allowed.status == 200
    (allowed_rid,) = upstream_headers(allowed)["x-request-id"]

    def entry(match):
        return next((e for e in stack.envoy.access_log() if match(e)), None)

    # The deny body carries the id portcullis was given (the CheckRequest's request id); the
    # allowed request is found by the x-request-id the upstream received.
    d = eventually(
        "deny line in Envoy's access log",
        lambda: entry(lambda e: (e.get("authz") or {}).get("request_id") == denied["request_id"]),
    )
    assert d["status"] == 403
    assert d["authz"]["decision"] == "deny" and d["authz"]["principal"] == 'User::"alice"', d
    assert d["authz"]["reason"] and d["authz"]["request_id"] == denied["request_id"], d
    a = eventually("allow line in Envoy's access log", lambda: entry(lambda e: e.get("request_id") == allowed_rid))
    assert a["status"] == 200
    assert a["authz"]["decision"] == "allow" and a["authz"]["policy_ids"] == ["users-read-api"], a
    # Never a token in the access log.
    assert token("alice") not in stack.envoy.access_log_path.read_text()


# Envoy's path normalization as configured ----------------------------------------------------


def test_dot_segments_are_resolved_before_the_decision(stack):
    before = stack.upstream.count()
    # Decided as /admin, not as a /public/* path.
    r = request(stack.port, "GET", "/public/../admin", [bearer(token("alice"))])
    assert_denied(stack, r, 403)
    assert stack.upstream.count() == before
    r = request(stack.port, "GET", "/public/../admin", [bearer(token("root", groups="admins"))])
    assert r.status == 200 and r.json()["path"] == "/admin", r.body
    r = request(stack.port, "GET", "/admin/../public/status")
    assert r.status == 200 and r.json()["path"] == "/public/status", r.body


def test_duplicate_slashes_are_merged_before_the_decision(stack):
    r = request(stack.port, "GET", "//public//status")
    assert r.status == 200 and r.json()["path"] == "/public/status", r.body
    # Envoy removes dot segments first (RFC 3986: the empty segment is the one `..` removes), then
    # merges: portcullis decides on, and the upstream receives, /public/admin; never /admin.
    r = request(stack.port, "GET", "/public//..//admin", [bearer(token("alice"))])
    assert r.status == 200 and r.json()["path"] == "/public/admin", r.body
    r = request(stack.port, "GET", "/public//..//admin")
    assert r.status == 200 and r.json()["path"] == "/public/admin", r.body


@pytest.mark.parametrize("path", ["/public/..%2Fadmin", "/public%2F..%2Fadmin", "/public/..%5Cadmin", "/admin%2fx"])
def test_escaped_slashes_are_rejected_by_envoy(stack, path):
    before = stack.upstream.count()
    r = request(stack.port, "GET", path, [bearer(token("alice"))])
    assert r.status == 400, (path, r.status, r.body)
    assert stack.upstream.count() == before


@pytest.mark.parametrize("name", ["x_portcullis_subject", "x_portcullis-subject", "X_Portcullis_Principal"])
def test_underscore_spellings_of_owned_headers_are_rejected_by_envoy(stack, name):
    # headers_with_underscores_action: REJECT_REQUEST (the agreed Envoy setting): a CGI/WSGI/Rack
    # upstream would read x_portcullis_subject as X-Portcullis-Subject.
    before = stack.upstream.count()
    r = request(stack.port, "GET", "/public/status", [(name, "admin")])
    assert r.status == 400, (r.status, r.body)
    assert stack.upstream.count() == before


# Rate limit, no policy, empty policy set -----------------------------------------------------


def test_over_quota_is_429_with_retry_after(fresh_stacks, transport):
    s = fresh_stacks(transport, rate_limit={"requests_per_second": 1, "burst": 1, "max_tracked": 100})
    tok = token("alice")
    statuses = []
    for _ in range(20):
        r = request(s.port, "GET", "/api/orders", [bearer(tok)])
        statuses.append(r.status)
        if r.status == 429:
            break
    assert statuses[0] == 200 and statuses[-1] == 429, statuses
    assert_denied(s, r, 429, "rate_limited")
    assert int(r.header("retry-after") or "0") >= 1, r.headers
    assert s.upstream.count() == statuses.count(200)


def test_no_policy_loaded_is_503_with_retry_after(fresh_stacks, transport):
    # The only policy file does not parse: no snapshot at all (readiness fails too).
    s = fresh_stacks(transport, policies={"broken.cedar": "permit (principal,"}, ready=False)
    for headers in ([], [bearer(token("alice"))]):
        r = request(s.port, "GET", "/public/status", headers)
        assert_denied(s, r, 503, "no_policy")
        assert int(r.header("retry-after") or "0") >= 1, r.headers
    assert s.upstream.count() == 0


def test_empty_policy_set_denies_everything_with_403(fresh_stacks):
    s = fresh_stacks("unix", policies={})
    r = request(s.port, "GET", "/public/status")
    assert_denied(s, r, 403, "deny_all")
    assert s.upstream.count() == 0


# Fail closed ---------------------------------------------------------------------------------


def test_sidecar_stopped_means_envoy_refuses(fresh_stacks, transport):
    s = fresh_stacks(transport)
    assert request(s.port, "GET", "/public/status").status == 200
    s.portcullis.stop()
    for path in ("/public/status", "/api/orders"):
        r = request(s.port, "GET", path, [bearer(token("alice"))])
        assert r.status == status_on_error(s), (r.status, r.body)
    assert s.upstream.count() == 1


def test_sidecar_too_slow_means_envoy_refuses(fresh_stacks, transport):
    s = fresh_stacks(transport)
    assert request(s.port, "GET", "/public/status").status == 200
    # Frozen for longer than the ext_authz timeout: Envoy gives up and refuses.
    s.portcullis.pause()
    try:
        r = request(s.port, "GET", "/public/status", timeout=20)
        assert r.status == status_on_error(s), (r.status, r.body)
        assert s.upstream.count() == 1
    finally:
        s.portcullis.resume()
    # And it recovers once the sidecar answers again.
    eventually("allow after SIGCONT", lambda: request(s.port, "GET", "/public/status").status == 200)
    assert s.upstream.count() == 2


# Route facts ---------------------------------------------------------------------------------

TENANT_ROUTE_POLICY = """
@id("tenant-a-route")
permit (principal, action in Action::"read", resource)
when { resource.path like "/tenant/*" && resource.hasTag("ext:tenant") && resource.getTag("ext:tenant") == "a" };
"""


def test_context_extensions_set_on_the_route_decide_and_headers_cannot_imitate_them(fresh_stacks):
    policies = {p.name: p.read_text() for p in (DEMO / "policies").iterdir()}
    policies["route.cedar"] = TENANT_ROUTE_POLICY
    routes = [ext_authz_route("/tenant/a/", {"tenant": "a"}), ext_authz_route("/tenant/b/", {"tenant": "b"})]
    s = fresh_stacks("unix", policies=policies, routes=routes)
    r = request(s.port, "GET", "/tenant/a/items")
    assert r.status == 200, r.body
    assert r.header("x-portcullis-policy") == "tenant-a-route", r.headers
    # The same policy, another route: Envoy sends tenant=b, so it is refused (anonymous: 401).
    before = s.upstream.count()
    assert_denied(s, request(s.port, "GET", "/tenant/b/items"), 401)
    # A client imitating the extension with headers (mapped `x-tenant`, or any name) changes nothing.
    r = request(s.port, "GET", "/tenant/b/items", [("x-tenant", "a"), ("ext-tenant", "a"), ("tenant", "a")])
    assert_denied(s, r, 401)
    # Nor on the catch-all route, which carries no extension.
    assert_denied(s, request(s.port, "GET", "/tenant/x", [("x-tenant", "a")]), 401)
    assert s.upstream.count() == before


# Per-route authentication requirements (README "Route requirements") --------------------------

MEMBERS = {"portcullis.require": "credential", "portcullis.audiences": "demo-api", "portcullis.credentials": "bearer"}
PARTNER = {"portcullis.audiences": "partner-api"}
BROKEN = {"portcullis.issuers": "https://unconfigured.example.com"}


def test_route_requirements_set_on_the_route_accept_a_token_on_one_route_and_refuse_it_on_another(fresh_stacks):
    # The demo policies permit anything under /public/ to anyone: every refusal is the route's.
    routes = [
        ext_authz_route("/public/members/", MEMBERS),
        ext_authz_route("/public/partner/", PARTNER),
        ext_authz_route("/public/broken/", BROKEN),
    ]
    s = fresh_stacks("unix", routes=routes)
    tok = token()  # the demo issuer, aud demo-api
    r = request(s.port, "GET", "/public/members/x", [bearer(tok)])
    assert r.status == 200, r.body
    assert upstream_headers(r)["x-portcullis-subject"] == ["alice"]
    before = s.upstream.count()
    # The same token on the partner route: 401 invalid_token, the upstream never sees it.
    r = request(s.port, "GET", "/public/partner/x", [bearer(tok)])
    assert_denied(s, r, 401, "audience_not_accepted")
    www = r.header("www-authenticate") or ""
    assert www.startswith("Bearer ") and 'error="invalid_token"' in www, www
    # Anonymous: the policy would allow it (the partner route does not require a credential), the
    # members route refuses it with a challenge before any policy.
    assert request(s.port, "GET", "/public/partner/x").status == 200
    r = request(s.port, "GET", "/public/members/x")
    assert_denied(s, r, 401, "credential_required")
    assert (r.header("www-authenticate") or "").startswith("Bearer"), r.headers
    # A header imitating a requirement is not one, and cannot lift one.
    assert request(s.port, "GET", "/public/x", [("portcullis.require", "credential")]).status == 200
    r = request(s.port, "GET", "/public/members/x", [("portcullis.require", ""), ("portcullis.credentials", "peer")])
    assert_denied(s, r, 401, "credential_required")
    # A route naming an issuer the config does not trust is misconfigured: refused, never ignored.
    assert_denied(s, request(s.port, "GET", "/public/broken/x", [bearer(tok)]), 500, "invalid_route_requirement")
    assert s.upstream.count() == before + 2  # the two allowed requests above
