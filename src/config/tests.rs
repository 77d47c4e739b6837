//! Config parsing and validation: every refusal names its field.
use std::net::SocketAddr;

use super::*;

/// Parses and validates, as `Config::load` does; the section modules' tests use it too.
pub(super) fn parse(y: &str) -> Result<Config, String> {
    let c = Config::from_yaml(y)?;
    c.validate().map_err(|e| e.to_string())?;
    Ok(c)
}

#[test]
fn unknown_field_is_named() {
    let err = parse("policy: {dir: x}\nlisten: {grcp: '127.0.0.1:1'}\n").unwrap_err();
    assert!(err.contains("grcp"), "{err}");
}

#[test]
fn hmac_without_secret_is_refused() {
    let err = parse("policy: {dir: x}\nauthn:\n  issuers:\n    - issuer: https://i\n      algorithms: [HS256]\n")
        .unwrap_err();
    assert!(err.contains("authn.issuers[0].algorithms"), "{err}");
}

#[test]
fn none_algorithm_is_refused() {
    let err =
        parse("policy: {dir: x}\nauthn:\n  issuers:\n    - issuer: https://i\n      algorithms: [none]\n").unwrap_err();
    assert!(err.contains("unsupported algorithm"), "{err}");
}

#[test]
fn algorithms_parse_once_into_their_exact_names_and_nothing_else() {
    let algs = |list: &str| {
        parse(&format!("policy: {{dir: x}}\nauthn:\n  issuers:\n    - issuer: https://i\n      algorithms: {list}\n"))
    };
    let c = algs("[RS256, PS512, ES384, EdDSA]").unwrap();
    let want = [JwtAlgorithm::RS256, JwtAlgorithm::PS512, JwtAlgorithm::ES384, JwtAlgorithm::EdDSA];
    assert_eq!(c.authn.issuers[0].algorithms, want);
    for a in JwtAlgorithm::ALL {
        assert_eq!(JwtAlgorithm::from_name(a.name()), Some(a));
    }
    // `none` in any spelling, other cases and unknown names are refused, naming the field.
    for bad in ["none", "None", "NONE", "rs256", "HS257", "'RS256 '", "''"] {
        let err = algs(&format!("[{bad}]")).unwrap_err();
        assert!(err.contains("`algorithms`") && err.contains("unsupported algorithm"), "{bad}: {err}");
    }
    assert!(JwtAlgorithm::from_name("none").is_none());
    let err = algs("[]").unwrap_err();
    assert!(err.contains("authn.issuers[0].algorithms"), "{err}");
}

#[test]
fn policy_source_is_required() {
    let err = parse("policy: {}\n").unwrap_err();
    assert!(err.contains("`policy`"), "{err}");
}

#[test]
fn api_key_must_be_a_digest() {
    let err = parse("policy: {dir: x}\nauthn:\n  api_keys:\n    keys: [{client: ci, sha256: hunter2}]\n").unwrap_err();
    assert!(err.contains("sha256"), "{err}");
}

#[test]
fn matrix_parameters_default_to_refuse_and_only_known_modes_parse() {
    let c = parse("policy: {dir: x}\n").unwrap();
    assert_eq!(c.request.matrix_parameters, MatrixParameters::Refuse);
    let c = parse("policy: {dir: x}\nrequest: {matrix_parameters: strip}\n").unwrap();
    assert_eq!(c.request.matrix_parameters, MatrixParameters::Strip);
    let err = parse("policy: {dir: x}\nrequest: {matrix_parameters: keep}\n").unwrap_err();
    assert!(err.contains("keep"), "{err}");
    let err = parse("policy: {dir: x}\nrequest: {matrix: strip}\n").unwrap_err();
    assert!(err.contains("matrix"), "{err}");
}

#[test]
fn defaults_are_sane() {
    let c = parse("policy: {dir: x}\n").unwrap();
    assert_eq!(c.listen.grpc.unwrap().port(), 9191);
    assert_eq!(c.headers.subject, "x-portcullis-subject");
    assert!(c.identity_header_names().contains(&"x-portcullis-principal".to_string()));
}

#[test]
fn a_kubernetes_source_needs_a_selector_and_real_namespaces() {
    let err = parse("policy: {kubernetes: {selector: ' '}}\n").unwrap_err();
    assert!(err.contains("policy.kubernetes.selector"), "{err}");
    let err = parse("policy: {kubernetes: {namespaces: [a, '']}}\n").unwrap_err();
    assert!(err.contains("policy.kubernetes.namespaces[1]"), "{err}");
    let c = parse("policy: {kubernetes: {}}\n").unwrap();
    let k = c.policy.kubernetes.unwrap();
    assert_eq!(k.selector, "portcullis.dev/policy=true");
    assert!(k.events && k.kubeconfig.is_none() && k.namespaces.is_empty());
}

#[test]
fn a_relative_kubeconfig_is_resolved_against_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, "policy: {kubernetes: {kubeconfig: kc}}\n").unwrap();
    let c = Config::load(&path).unwrap();
    assert_eq!(c.policy.kubernetes.unwrap().kubeconfig, Some(dir.path().join("kc")));
}

#[test]
fn diagnostics_must_be_loopback() {
    let c = parse("policy: {dir: x}\n").unwrap();
    assert_eq!(c.listen.diagnostics, Some(SocketAddr::from(([127, 0, 0, 1], 9092))));
    for bad in ["0.0.0.0:9092", "10.0.0.7:9092", "'[::]:9092'"] {
        let err = parse(&format!("policy: {{dir: x}}\nlisten: {{diagnostics: {bad}}}\n")).unwrap_err();
        assert!(err.contains("listen.diagnostics"), "{bad}: {err}");
    }
    parse("policy: {dir: x}\nlisten: {diagnostics: '[::1]:9092'}\n").unwrap();
    let c = parse("policy: {dir: x}\nlisten: {diagnostics: null}\n").unwrap();
    assert!(c.listen.diagnostics.is_none());
}

#[test]
fn plain_http_issuer_urls_need_allow_insecure_http() {
    let issuer = |extra: &str| format!("policy: {{dir: x}}\nauthn:\n  issuers:\n    - {extra}\n");
    // Discovery fetches the issuer URL.
    let err = parse(&issuer("issuer: http://idp.example")).unwrap_err();
    assert!(err.contains("authn.issuers[0].issuer") && err.contains("allow_insecure_http"), "{err}");
    let err = parse(&issuer("{issuer: https://idp.example, jwks_uri: 'http://idp.example/jwks'}")).unwrap_err();
    assert!(err.contains("authn.issuers[0].jwks_uri"), "{err}");
    let err = parse(&issuer("{issuer: https://idp.example, jwks_uri: 'ftp://idp.example/jwks'}")).unwrap_err();
    assert!(err.contains("authn.issuers[0].jwks_uri") && err.contains("scheme"), "{err}");
    let err = parse(&issuer("{issuer: https://idp.example, jwks_uri: 'not a url'}")).unwrap_err();
    assert!(err.contains("authn.issuers[0].jwks_uri"), "{err}");
    parse(&issuer("{issuer: http://idp.example, allow_insecure_http: true}")).unwrap();
    parse(&issuer("{issuer: https://idp.example, jwks_uri: 'http://j/k', allow_insecure_http: true}")).unwrap();
    parse(&issuer("issuer: https://idp.example")).unwrap();
    // With an explicit JWKS URL the issuer is only compared, never fetched.
    parse(&issuer("{issuer: http://idp.example, jwks_uri: 'https://idp.example/jwks'}")).unwrap();
}

#[test]
fn peer_trust_domains_default_to_cluster_local_and_any_must_be_explicit() {
    let c = parse("policy: {dir: x}\n").unwrap();
    assert_eq!(c.authn.peer.trust_domains, ["cluster.local"]);
    assert!(!c.authn.peer.any_trust_domain);
    let err = parse("policy: {dir: x}\nauthn: {peer: {trust_domains: []}}\n").unwrap_err();
    assert!(err.contains("authn.peer.trust_domains"), "{err}");
    // `any_trust_domain` alone still has the default list: contradictory, so refused.
    let err = parse("policy: {dir: x}\nauthn: {peer: {any_trust_domain: true}}\n").unwrap_err();
    assert!(err.contains("authn.peer.any_trust_domain"), "{err}");
    let c = parse("policy: {dir: x}\nauthn: {peer: {trust_domains: [], any_trust_domain: true}}\n").unwrap();
    assert!(c.authn.peer.any_trust_domain);
}

#[test]
fn two_issuers_mapping_groups_must_choose_a_group_namespace() {
    let two = |ns: &str, b_claims: &str| {
        format!(
            "policy: {{dir: x}}\nauthn:\n{ns}  issuers:\n    - issuer: https://a.example\n    \
             - {{issuer: https://b.example{b_claims}}}\n"
        )
    };
    let err = parse(&two("", "")).unwrap_err();
    assert!(err.contains("authn.group_namespace"), "{err}");
    // Only one issuer maps groups: nothing to choose.
    parse(&two("", ", group_claims: []")).unwrap();
    let c = parse(&two("  group_namespace: shared\n", "")).unwrap();
    assert_eq!(c.authn.group_namespace, Some(GroupNamespace::Shared));
    let c = parse(&two("  group_namespace: per_issuer\n", "")).unwrap();
    assert_eq!(c.authn.group_namespace, Some(GroupNamespace::PerIssuer));
    let err = parse(&two("  group_namespace: global\n", "")).unwrap_err();
    assert!(err.contains("global"), "{err}");
}

#[test]
fn per_issuer_group_ids_cannot_collide() {
    let ns = GroupNamespace::PerIssuer;
    assert_eq!(ns.group_id("https://a.example", "admins"), "https://a.example#admins");
    assert_eq!(GroupNamespace::Shared.group_id("https://a.example", "admins"), "admins");
    // An issuer with `#` could make `a#b` + `c` equal `a` + `b#c`: refused.
    let err = parse(
        "policy: {dir: x}\nauthn:\n  group_namespace: per_issuer\n  issuers:\n    - issuer: 'https://a.example#x'\n",
    )
    .unwrap_err();
    assert!(err.contains("authn.issuers[0].issuer") && err.contains('#'), "{err}");
}

fn claim_target(target: &str, extra: &str) -> Result<Config, String> {
    parse(&format!(
        "policy: {{dir: x}}\nauthn:\n  issuers:\n    - issuer: https://i\n      \
         from: [{{header: authorization, prefix: 'Bearer '}}, {{header: x-token}}]\n      \
         claims_to_headers: {{email: '{target}'}}\n{extra}"
    ))
}

#[test]
fn claims_never_target_identity_credential_framing_or_stripped_headers() {
    for target in [
        "x-portcullis-subject",
        "X_Portcullis_Principal",
        "x-portcullis_client",
        "authorization",
        "Proxy-Authorization",
        "x-token",
        "x_token",
        "x-api-key",
        "x_api_key",
        ":authority",
        ":path",
        "host",
        "Host",
        "connection",
        "keep-alive",
        "keep_alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
        "cookie",
        "x-http-method-override",
        "X_Original_URL",
    ] {
        let err = claim_target(target, "").unwrap_err();
        assert!(err.contains("`authn.issuers[0].claims_to_headers.email`"), "{target}: {err}");
    }
    // A renamed identity header and a custom strip entry are covered too.
    let err = claim_target("x-who", "headers: {subject: x_who}\n").unwrap_err();
    assert!(err.contains("claims_to_headers.email") && err.contains("identity header"), "{err}");
    let err = claim_target("x-debug", "headers: {strip_on_allow: [x_debug]}\n").unwrap_err();
    assert!(err.contains("claims_to_headers.email") && err.contains("strip_on_allow"), "{err}");
    // Two claims of one issuer onto one header (in any spelling) would race: refused.
    let err = parse(
        "policy: {dir: x}\nauthn:\n  issuers:\n    - issuer: https://i\n      \
         claims_to_headers: {email: x-mail, mail: x_mail}\n",
    )
    .unwrap_err();
    assert!(err.contains("authn.issuers[0].claims_to_headers.mail"), "{err}");
    // An ordinary target is fine.
    assert!(claim_target("x-user-email", "").is_ok());
}

#[test]
fn owned_header_names_are_bounded_in_separators() {
    let nine = "a-b-c-d-e-f-g-h-i-j";
    let err = parse(&format!("policy: {{dir: x}}\nheaders: {{subject: {nine}}}\n")).unwrap_err();
    assert!(err.contains("`headers.subject`") && err.contains("separators"), "{err}");
    let err = parse(&format!("policy: {{dir: x}}\nheaders: {{strip_on_allow: [x, {nine}]}}\n")).unwrap_err();
    assert!(err.contains("`headers.strip_on_allow[1]`"), "{err}");
    let err = parse(&format!(
        "policy: {{dir: x}}\nauthn:\n  issuers:\n    - issuer: https://i\n      claims_to_headers: {{e: {nine}}}\n"
    ))
    .unwrap_err();
    assert!(err.contains("`authn.issuers[0].claims_to_headers.e`"), "{err}");
    // A credential header is owned only when it is removed.
    let y = format!("policy: {{dir: x}}\nauthn: {{api_keys: {{header: {nine}}}}}\n");
    assert!(parse(&y).is_ok());
    let err = parse(&format!("{y}headers: {{remove_credentials: true}}\n")).unwrap_err();
    assert!(err.contains("`authn.api_keys.header`"), "{err}");
    assert!(parse("policy: {dir: x}\nheaders: {subject: a-b-c-d-e-f-g-h-i}\n").is_ok(), "8 is the limit");
}

#[test]
fn spellings_cover_every_separator_combination() {
    assert_eq!(separator_spellings("X-a_B"), vec!["x-a-b", "x-a_b", "x_a-b", "x_a_b"]);
    assert_eq!(separator_spellings("host"), vec!["host"]);
    assert_eq!(separator_spellings("a-b-c-d-e-f-g-h-i").len(), 256);
    let c = parse("policy: {dir: x}\n").unwrap();
    assert_eq!(
        c.headers.strip_on_allow,
        ["x-http-method-override", "x-http-method", "x-method-override", "x-original-url", "x-rewrite-url"]
    );
    assert!(!c.headers.strip_foreign_credentials);
}

#[test]
fn tenant_must_be_a_claim_header() {
    // A tenant read from any other header could be the client's own: refused, naming the field.
    for tenant in ["x-tenant", "x-portcullis-subject", "bad name"] {
        let err = claim_target("x-org", &format!("headers: {{tenant: '{tenant}'}}\n")).unwrap_err();
        assert!(err.contains("headers.tenant"), "{tenant}: {err}");
    }
    let err = parse("policy: {dir: x}\nheaders: {tenant: x-org}\n").unwrap_err();
    assert!(err.contains("headers.tenant"), "{err}");
    // The claim's header, in any `-`/`_` spelling or case.
    assert!(claim_target("x-org", "headers: {tenant: X_Org}\n").is_ok());
}

#[test]
fn body_limits_default_and_are_bounded_by_the_message_limit() {
    let c = parse("policy: {dir: x}\n").unwrap();
    assert_eq!((c.request.body_bytes(&c.limits), c.request.max_body_depth), (8192, 32));
    let c = parse("policy: {dir: x}\nrequest: {max_body_bytes: 65536, max_body_depth: 8}\n").unwrap();
    assert_eq!((c.request.body_bytes(&c.limits), c.request.max_body_depth), (65536, 8));
    // Unset, the default never exceeds a smaller message limit (older configs stay valid).
    let c = parse("policy: {dir: x}\nlimits: {max_message_bytes: 4096}\n").unwrap();
    assert_eq!(c.request.body_bytes(&c.limits), 4096);
    for (yaml, field) in [
        ("request: {max_body_bytes: 0}", "request.max_body_bytes"),
        ("request: {max_body_bytes: 5000000}", "request.max_body_bytes"),
        ("request: {max_body_bytes: 4096}\nlimits: {max_message_bytes: 4096}", "request.max_body_bytes"),
        ("request: {max_body_depth: 0}", "request.max_body_depth"),
        ("request: {max_body_depth: 129}", "request.max_body_depth"),
    ] {
        let err = parse(&format!("policy: {{dir: x}}\n{yaml}\n")).unwrap_err();
        assert!(err.contains(field), "{yaml}: {err}");
    }
}
