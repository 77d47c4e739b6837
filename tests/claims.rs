//! Claims that policies need, over the wire (the real gRPC server, the demo policies): OAuth
//! scopes as `principal.scopes`, nested group claims (Keycloak `realm_access.roles`,
//! `resource_access.<client>.roles`), claim headers by JSON pointer and by URL-like name, and the
//! per-issuer `required_typ` and `max_token_age` refusals.
mod common;

use common::idp::TestKey;
use common::{AUDIENCE, ISSUER, KID, Sidecar, http_status, is_allowed, policy_ids, req, token, upstream_headers};
use jsonwebtoken::Algorithm;
use portcullis::config::Config;
use portcullis::proto::auth::CheckResponse;
use serde_json::{Value, json};

fn reason(r: &CheckResponse) -> &str {
    &r.status.as_ref().expect("status").message
}

fn assert_401(r: &CheckResponse, why: &str) {
    assert_eq!(http_status(r), 401, "{why}: {r:?}");
    assert_eq!(reason(r), why);
}

/// The test key the sidecar's JWKS holds, to sign tokens with any header.
fn key() -> TestKey {
    TestKey::load("rsa1.pem", Algorithm::RS256, KID)
}

fn claims(sub: &str, extra: Value) -> Value {
    let now = common::idp::now();
    let mut c = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "nbf": now, "exp": now + 300});
    if let (Some(c), Value::Object(extra)) = (c.as_object_mut(), extra) {
        c.extend(extra);
    }
    c
}

fn signed(typ: Option<&str>, claims: &Value) -> String {
    let mut header = json!({"alg": "RS256", "kid": KID});
    if let Some(t) = typ {
        header["typ"] = json!(t);
    }
    key().sign(&header, claims)
}

fn issuer(cfg: &mut Config) -> &mut portcullis::config::IssuerConfig {
    &mut cfg.authn.issuers[0]
}

#[tokio::test]
async fn scopes_decide_through_principal_scopes() {
    let s = Sidecar::start().await;
    // demo policy `orders-write-scope`: POST /api/orders* needs principal.scopes.contains("orders:write").
    for (name, tok) in [
        ("scope string", token("app").claim("scope", "orders:read orders:write").mint()),
        ("scp array", token("app").claim("scp", json!(["orders:write"])).mint()),
        ("scp string (Entra ID)", token("app").claim("scp", "profile orders:write").mint()),
    ] {
        let r = s.check(req("POST", "/api/orders").bearer(&tok).build()).await;
        assert!(is_allowed(&r), "{name}: {r:?}");
        assert_eq!(policy_ids(&r), vec!["orders-write-scope"], "{name}");
    }
    for (name, tok) in [
        ("read scope only", token("app").claim("scope", "orders:read").mint()),
        ("no scope", token("app").mint()),
        ("a prefix is not the scope", token("app").claim("scope", "orders:writer orders").mint()),
        ("non-string scp values", token("app").claim("scp", json!([1, true, {"orders:write": true}])).mint()),
        ("scope is not a group", token("app").claim("groups", json!(["orders:write"])).mint()),
    ] {
        let r = s.check(req("POST", "/api/orders").bearer(&tok).build()).await;
        assert_eq!(http_status(&r), 403, "{name}: {r:?}");
    }
    s.stop().await;
}

#[tokio::test]
async fn keycloak_nested_roles_grant_groups() {
    let s = Sidecar::start_configured(
        |_| {},
        |_, cfg| {
            issuer(cfg).group_claims =
                vec!["groups".into(), "realm_access.roles".into(), "/resource_access/shop~1web/roles".into()];
            issuer(cfg).claims_to_headers.insert("https://example.com/claims/tenant".into(), "x-claim-tenant".into());
            issuer(cfg).claims_to_headers.insert("/org/id".into(), "x-claim-org".into());
        },
    )
    .await;
    // demo policy `admins-write-api`: principal in Group::"admins".
    let realm = token("kc").claim("realm_access", json!({"roles": ["offline_access", "admins"]})).mint();
    let r = s.check(req("POST", "/api/things").bearer(&realm).build()).await;
    assert!(is_allowed(&r), "realm_access.roles: {r:?}");
    assert_eq!(policy_ids(&r), vec!["admins-write-api"]);

    let client = token("kc").claim("resource_access", json!({"shop/web": {"roles": ["admins"]}})).mint();
    let r = s.check(req("POST", "/api/things").bearer(&client).build()).await;
    assert!(is_allowed(&r), "resource_access pointer: {r:?}");

    // Another client's roles, a role nested one level too deep, or an object: no group.
    for extra in [
        json!({"resource_access": {"other": {"roles": ["admins"]}}}),
        json!({"realm_access": {"roles": [["admins"]]}}),
        json!({"realm_access": {"roles": {"admins": true}}}),
        json!({"realm_access": "admins"}),
    ] {
        let mut t = token("kc");
        for (k, v) in extra.as_object().expect("object") {
            t = t.claim(k, v.clone());
        }
        let r = s.check(req("POST", "/api/things").bearer(&t.mint()).build()).await;
        assert_eq!(http_status(&r), 403, "{extra}: {r:?}");
    }

    // Headers from a URL-like claim name and a pointer; a non-scalar value sets no header.
    let t = token("kc").claim("https://example.com/claims/tenant", "acme").claim("org", json!({"id": 42})).mint();
    let r = s.check(req("GET", "/api/things").bearer(&t).build()).await;
    assert!(is_allowed(&r), "{r:?}");
    let h = upstream_headers(&r);
    assert_eq!(h.get("x-claim-tenant").map(String::as_str), Some("acme"), "{h:?}");
    assert_eq!(h.get("x-claim-org").map(String::as_str), Some("42"), "{h:?}");
    let t = token("kc").claim("org", json!({"id": {"nested": 1}})).mint();
    let r = s.check(req("GET", "/api/things").bearer(&t).build()).await;
    assert!(is_allowed(&r), "{r:?}");
    assert!(!upstream_headers(&r).contains_key("x-claim-org"));
    s.stop().await;
}

#[tokio::test]
async fn claims_to_tags_maps_a_nested_claim_over_a_top_level_one() {
    let s = Sidecar::start_configured(
        |_| {},
        |_, cfg| {
            issuer(cfg).claims_to_tags.insert("org.tenant".into(), "tenant".into());
        },
    )
    .await;
    // demo policy `tenant-header-must-match`: principal.getTag("tenant") == resource.getTag("x-tenant").
    let tenants = |t: common::Tok| req("GET", "/api/tenants/acme/orders").header("x-tenant", "acme").bearer(&t.mint());
    let r = s.check(tenants(token("alice").claim("org", json!({"tenant": "acme"}))).build()).await;
    assert!(is_allowed(&r), "nested tenant: {r:?}");
    // The mapped claim wins over a top-level claim of the tag's name, also when it is absent.
    for t in [
        token("alice").claim("tenant", "acme").claim("org", json!({"tenant": "globex"})),
        token("alice").claim("tenant", "acme"),
        token("alice").claim("tenant", "acme").claim("org", json!({"tenant": ["acme"]})),
    ] {
        let r = s.check(tenants(t).build()).await;
        assert_eq!(http_status(&r), 403, "{r:?}");
        assert_eq!(policy_ids(&r), vec!["tenant-header-must-match"]);
    }
    s.stop().await;
}

#[tokio::test]
async fn required_typ_refuses_an_id_token() {
    let s = Sidecar::start_configured(|_| {}, |_, cfg| issuer(cfg).required_typ = Some("at+jwt".into())).await;
    let c = claims("alice", json!({}));
    for ok in ["at+jwt", "application/at+jwt", "AT+JWT"] {
        let r = s.check(req("GET", "/api/orders").bearer(&signed(Some(ok), &c)).build()).await;
        assert!(is_allowed(&r), "typ {ok}: {r:?}");
    }
    for (name, tok) in [
        ("an ID token (typ JWT)", token("alice").mint()),
        ("no typ", signed(None, &c)),
        ("another type", signed(Some("application/jwt"), &c)),
    ] {
        // The second time from the refused-token cache, with the same reason.
        for _ in 0..2 {
            let r = s.check(req("GET", "/api/orders").bearer(&tok).build()).await;
            assert_eq!((http_status(&r), reason(&r)), (401, "wrong_token_type"), "{name}");
        }
    }
    // A forged token of the right type is refused for its signature, not its type.
    let forged = TestKey::load("rsa2.pem", Algorithm::RS256, KID).sign(&json!({"alg": "RS256", "kid": KID}), &c);
    assert_401(&s.check(req("GET", "/api/orders").bearer(&forged).build()).await, "bad_signature");
    s.stop().await;
}

#[tokio::test]
async fn max_token_age_refuses_old_tokens_and_future_iat_is_refused() {
    let s = Sidecar::start_configured(
        |_| {},
        |_, cfg| {
            issuer(cfg).max_token_age = Some(std::time::Duration::from_secs(600));
            issuer(cfg).leeway = std::time::Duration::from_secs(30);
        },
    )
    .await;
    let now = common::idp::now();
    let fresh = signed(Some("JWT"), &claims("alice", json!({"iat": now - 60})));
    assert!(is_allowed(&s.check(req("GET", "/api/orders").bearer(&fresh).build()).await));

    // Still unexpired, but issued two hours ago.
    let old = signed(Some("JWT"), &claims("alice", json!({"iat": now - 7200})));
    assert_401(&s.check(req("GET", "/api/orders").bearer(&old).build()).await, "token_too_old");

    let mut no_iat = claims("alice", json!({}));
    no_iat.as_object_mut().expect("object").remove("iat");
    let no_iat = signed(Some("JWT"), &no_iat);
    assert_401(&s.check(req("GET", "/api/orders").bearer(&no_iat).build()).await, "missing_claim");

    let future = signed(Some("JWT"), &claims("alice", json!({"iat": now + 3600})));
    assert_401(&s.check(req("GET", "/api/orders").bearer(&future).build()).await, "token_issued_in_future");
    s.stop().await;
}

#[tokio::test]
async fn without_max_token_age_an_old_token_passes_but_future_iat_does_not() {
    let s = Sidecar::start().await;
    let now = common::idp::now();
    let old = signed(Some("JWT"), &claims("alice", json!({"iat": now - 30 * 86400})));
    assert!(is_allowed(&s.check(req("GET", "/api/orders").bearer(&old).build()).await));
    let future = signed(Some("JWT"), &claims("alice", json!({"iat": now + 3600})));
    assert_401(&s.check(req("GET", "/api/orders").bearer(&future).build()).await, "token_issued_in_future");
    s.stop().await;
}
