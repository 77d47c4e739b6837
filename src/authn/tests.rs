//! Authentication as a whole: the principal rule, and hostile credential bytes.
use super::*;
use crate::config::Config;
use crate::proto::auth::{AttributeContext, CheckRequest, attribute_context};
use crate::proto::core::{HeaderMap, HeaderValue};
use proptest::prelude::*;

#[test]
fn the_principal_is_user_then_api_client_then_service_then_anonymous() {
    let user = Arc::new(JwtIdentity::for_tests("https://i", "alice", &[], &[]));
    let client = Arc::new(ApiClientIdentity { client: "ci".into(), groups: Vec::new(), rate_limit: None });
    let peer = PeerIdentity {
        spiffe_id: "spiffe://cluster.local/ns/shop/sa/web".into(),
        trust_domain: "cluster.local".into(),
        namespace: "shop".into(),
        service_account: "web".into(),
    };
    let ids = |j: bool, c: bool, p: bool| Identities {
        jwt: j.then(|| user.clone()),
        api_client: c.then(|| client.clone()),
        peer: p.then(|| peer.clone()),
    };
    // Every combination: the strongest present identity wins, whatever else is present.
    for j in [false, true] {
        for c in [false, true] {
            for p in [false, true] {
                let ids = ids(j, c, p);
                // Which identity was chosen, by address: the very one authentication proved.
                let got = match ids.principal() {
                    PrincipalRef::User(u) => ("user", std::ptr::eq(u, &*user)),
                    PrincipalRef::ApiClient(a) => ("api_client", std::ptr::eq(a, &*client)),
                    PrincipalRef::Service(s) => ("service", ids.peer.as_ref().is_some_and(|p| std::ptr::eq(s, p))),
                    PrincipalRef::Anonymous => ("anonymous", true),
                };
                let want = if j {
                    "user"
                } else if c {
                    "api_client"
                } else if p {
                    "service"
                } else {
                    "anonymous"
                };
                assert_eq!(got, (want, true), "jwt={j} api_client={c} peer={p}");
                // `context.authn`: exactly the proven methods, in a fixed order.
                let methods: Vec<&str> = [(j, "jwt"), (p, "mtls"), (c, "api_key")]
                    .into_iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, m)| m)
                    .collect();
                assert_eq!(ids.methods(), methods, "jwt={j} api_client={c} peer={p}");
            }
        }
    }
}

fn authenticator() -> Authenticator {
    let cfg = Config::from_yaml(
        "policy: {dir: x}\nauthn:\n  issuers:\n    - issuer: https://issuer.test\n      \
         jwks_file: /nonexistent/jwks.json\n      from: [{header: authorization, prefix: 'Bearer '}, \
         {cookie: session}]\n  api_keys:\n    keys: [{client: c, sha256: \"\
         b8ce88d57f4916859bcecb01b98b041299a759313987af89f9fc6608d7440537\"}]\n",
    )
    .expect("parses");
    cfg.validate().expect("valid");
    Authenticator::new(&cfg, &mut Registry::default()).expect("authenticator")
}

fn request(headers: Vec<(&str, Vec<u8>)>) -> CheckRequest {
    let mut all: Vec<HeaderValue> = vec![
        HeaderValue { key: ":method".into(), value: "GET".into(), raw_value: Vec::new() },
        HeaderValue { key: ":path".into(), value: "/".into(), raw_value: Vec::new() },
    ];
    all.extend(headers.into_iter().map(|(k, v)| HeaderValue { key: k.into(), value: String::new(), raw_value: v }));
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                time: None,
                http: Some(attribute_context::HttpRequest {
                    header_map: Some(HeaderMap { headers: all }),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}

/// Independent of the extractor: is this `authorization` value ours (the Bearer scheme in
/// any case and spacing, empty, or unreadable)?
fn bearer_is_ours(v: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(v) else { return true };
    let t = s.trim_start_matches([' ', '\t']);
    if t.is_empty() {
        return true;
    }
    let word_end = t.bytes().position(|b| !(b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)));
    t[..word_end.unwrap_or(t.len())].eq_ignore_ascii_case("bearer")
}

/// Values that sit near the parser's edges: scheme spellings, separators, arbitrary tails.
fn near_miss() -> impl Strategy<Value = Vec<u8>> {
    let scheme = prop::sample::select(vec!["Bearer", "bearer", "BEARER", "Basic", "", "Bearerx", " Bearer", "Bear"]);
    let sep = prop::sample::select(vec!["", " ", "\t", "  ", " \t", "\u{a0}"]);
    let tail = prop::collection::vec(any::<u8>(), 0..24);
    prop_oneof![
        (scheme, sep, tail).prop_map(|(a, b, c)| [a.as_bytes(), b.as_bytes(), &c].concat()),
        prop::collection::vec(any::<u8>(), 0..40),
    ]
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    /// Arbitrary bytes in `authorization`, `cookie` and the API-key header never panic, and
    /// a value that is ours never authenticates as anonymous.
    #[test]
    fn arbitrary_credential_bytes_never_become_anonymous(
        auth in prop::option::of(near_miss()),
        cookie in prop::option::of(prop_oneof![
            near_miss().prop_map(|v| [b"session=".as_slice(), &v].concat()),
            near_miss(),
        ]),
        key in prop::option::of(near_miss()),
    ) {
        let ours = auth.as_deref().is_some_and(bearer_is_ours)
            || key.is_some()
            || cookie.as_deref().is_some_and(|c| match std::str::from_utf8(c) {
                Ok(s) => s.split(';').any(|p| p.split_once('=').is_some_and(|(n, _)| n.trim() == "session")),
                Err(_) => true,
            });
        let mut headers = Vec::new();
        if let Some(v) = auth { headers.push(("authorization", v)); }
        if let Some(v) = cookie { headers.push(("cookie", v)); }
        if let Some(v) = key { headers.push(("x-api-key", v)); }
        let req = request(headers);
        let req_in = crate::proto::check_in(&req);
        let view = RequestView::from_check(&req_in, &crate::config::Limits::default()).expect("valid request");
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let res = rt.block_on(authenticator_once().authenticate(&view));
        if ours {
            prop_assert!(res.as_ref().map_or(true, |ids| !ids.is_anonymous()), "ours but anonymous: {res:?}");
        }
    }
}

fn authenticator_once() -> &'static Authenticator {
    static A: std::sync::OnceLock<Authenticator> = std::sync::OnceLock::new();
    A.get_or_init(authenticator)
}
