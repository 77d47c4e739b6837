//! Policy test files and their runner (`portcullis test`). A test file lives beside the policies
//! as `*.test.yaml` (the loaders read only `*.cedar`, `*.cedarschema` and `*.entities.json`, so
//! the sidecar never sees it) and lists cases: a request, the identity authentication would have
//! proven (no token is signed), and the expected decision.
//!
//! Each directory is loaded exactly as the sidecar loads it (`policy::files`, the same strict
//! validation) and every case goes through the same [`Checker`] as `serve`, with authentication
//! replaced by the stated identity ([`Checker::check_as`]) and nothing else.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use serde::Deserialize;

use crate::authn::{ApiClientIdentity, Identities, peer::parse_spiffe_id};
use crate::check::{Checker, invalid_request};
use crate::client::CheckRequestBuilder;
use crate::config::{Config, IssuerConfig};
use crate::decision::Decision;
use crate::policy::{PolicyStore, files, snapshot::format_errors};
use crate::proto::core::Metadata;
use crate::request::{RequestView, RouteFactNamespaces};

/// Test files end with this; policy loaders ignore them.
pub const TEST_FILE_SUFFIX: &str = ".test.yaml";
/// Largest test file read (the same bound as a policy file).
const MAX_TEST_FILE_BYTES: u64 = files::MAX_FILE_BYTES;

/// One `*.test.yaml` file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    pub cases: Vec<Case>,
}

/// One expected decision.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub request: CaseRequest,
    /// What authentication proved; absent (or empty) is an anonymous caller.
    #[serde(default)]
    pub identity: CaseIdentity,
    /// `context.time` for this case (RFC 3339 with `Z` or an offset, or unix seconds), so
    /// policies on time are tested at a fixed moment; absent: the clock, as in the sidecar.
    #[serde(default)]
    pub time: Option<CaseTime>,
    pub expect: Expectation,
}

/// A moment as a test file states it: unix seconds, or text (RFC 3339 or digits).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum CaseTime {
    Unix(i64),
    Text(String),
}

impl CaseTime {
    /// Unix seconds, or why the text is not a moment.
    pub fn unix_seconds(&self) -> Result<i64, String> {
        match self {
            CaseTime::Unix(s) => Ok(*s),
            CaseTime::Text(t) => parse_time(t.trim()).ok_or_else(|| {
                format!(
                    "time: {t:?} is neither RFC 3339 (2026-01-31T18:00:00Z, or with a ±HH:MM offset) nor unix seconds"
                )
            }),
        }
    }
}

/// RFC 3339 with `Z` or a `±HH:MM` offset (at or after 1970), or unix seconds as digits.
fn parse_time(t: &str) -> Option<i64> {
    if let Ok(s) = t.parse::<i64>() {
        return Some(s);
    }
    if !t.is_ascii() || t.len() < 20 {
        return None;
    }
    let (base, offset) = if let Some(b) = t.strip_suffix(['Z', 'z']) {
        (b, 0)
    } else {
        let (b, off) = t.split_at(t.len() - 6);
        let o = off.as_bytes();
        let sign = match o[0] {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        let two = |i: usize| -> Option<i64> {
            (o[i].is_ascii_digit() && o[i + 1].is_ascii_digit())
                .then(|| i64::from((o[i] - b'0') * 10 + (o[i + 1] - b'0')))
        };
        let (h, m) = (two(1)?, two(4)?);
        if o[3] != b':' || h > 23 || m > 59 {
            return None;
        }
        (b, sign * (h * 3600 + m * 60))
    };
    let utc = humantime::parse_rfc3339(&format!("{base}Z")).ok()?;
    let secs = i64::try_from(utc.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs()).ok()?;
    // The local time minus its offset is UTC.
    secs.checked_sub(offset)
}

/// The request, as Envoy would describe it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseRequest {
    #[serde(default = "get")]
    pub method: String,
    #[serde(default)]
    pub host: String,
    pub path: String,
    /// Query string without `?`.
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub source_ip: Option<String>,
    #[serde(default)]
    pub id: String,
    /// The route's `ExtAuthzPerRoute` context extensions (policies read `ext:<key>` tags).
    #[serde(default)]
    pub context_extensions: BTreeMap<String, String>,
    /// Dynamic metadata strings, namespace → key → value (`metadata:<ns>:<key>` tags; only the
    /// namespaces in `cedar.metadata_namespaces` are read, as in the sidecar).
    #[serde(default)]
    pub metadata: BTreeMap<String, BTreeMap<String, String>>,
    /// Route metadata strings, namespace → key → value (`route_metadata:<ns>:<key>` tags;
    /// only the namespaces in `cedar.route_metadata_namespaces` are read).
    #[serde(default)]
    pub route_metadata: BTreeMap<String, BTreeMap<String, String>>,
}

fn get() -> String {
    "GET".into()
}

/// What authentication would have proven. Several may hold at once (a service calling on
/// behalf of a user), as in the sidecar.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseIdentity {
    #[serde(default)]
    pub jwt: Option<JwtCase>,
    /// The mTLS peer's SPIFFE id (`spiffe://<td>/ns/<ns>/sa/<sa>`).
    #[serde(default)]
    pub spiffe_id: Option<String>,
    #[serde(default)]
    pub api_client: Option<ApiClientCase>,
}

/// A verified token: its issuer and claims (`sub` required; groups from the issuer's
/// `group_claims`, claim headers from its `claims_to_headers`, as for a real token).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtCase {
    pub issuer: String,
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// A known API client.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiClientCase {
    pub client: String,
    /// The client's groups; absent: the groups configured for it (none if not configured).
    #[serde(default)]
    pub groups: Option<Vec<String>>,
}

/// The expected decision.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    pub decision: Verdict,
    /// HTTP status (200 for an allow).
    #[serde(default)]
    pub status: Option<u16>,
    /// The deny reason label (`no_permit`, `forbidden_by_policy`, `credential_required`, …).
    #[serde(default)]
    pub reason: Option<String>,
    /// Exactly these determining policy ids (in any order).
    #[serde(default)]
    pub policies: Option<Vec<String>>,
    /// Identity headers the upstream must receive, with these values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

/// The outcome of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The test file's name inside its directory.
    pub file: String,
    pub name: String,
    /// Why it failed (expected vs actual); empty when it passed.
    pub failures: Vec<String>,
    /// The decision, one line.
    pub actual: String,
    /// Determining policy ids of the decision.
    pub determining: Vec<String>,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Every case of one policy directory.
#[derive(Debug, Clone)]
pub struct DirReport {
    pub dir: PathBuf,
    pub results: Vec<CaseResult>,
    /// `(policy id, document)` of every policy no case made determining, sorted.
    pub uncovered: Vec<(String, String)>,
    pub policy_count: usize,
}

/// Reads every `*.test.yaml` in `dir`, sorted by name.
pub fn read_test_files(dir: &Path) -> anyhow::Result<Vec<(String, TestFile)>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && name.ends_with(TEST_FILE_SUFFIX) && entry.path().is_file() {
            names.push(name);
        }
    }
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let path = dir.join(&name);
        let len = std::fs::metadata(&path).with_context(|| format!("{}", path.display()))?.len();
        anyhow::ensure!(len <= MAX_TEST_FILE_BYTES, "{}: larger than {MAX_TEST_FILE_BYTES} bytes", path.display());
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let file: TestFile = serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        out.push((name, file));
    }
    Ok(out)
}

/// Without a config, every issuer a case names is trusted with the default claim mapping, so
/// cases can state tokens; with a config, its issuers (and their mappings) are the only ones.
pub fn add_case_issuers(cfg: &mut Config, files: &[(String, TestFile)]) -> anyhow::Result<()> {
    let named: BTreeSet<&str> =
        files.iter().flat_map(|(_, f)| &f.cases).filter_map(|c| c.identity.jwt.as_ref()).map(|j| &*j.issuer).collect();
    for issuer in named {
        if !cfg.authn.issuers.iter().any(|i| i.issuer == issuer) {
            let ic: IssuerConfig = serde_json::from_value(serde_json::json!({ "issuer": issuer }))?;
            cfg.authn.issuers.push(ic);
        }
    }
    Ok(())
}

/// Without a config, every metadata namespace a case names is read (so cases can state
/// metadata); with a config, only its `cedar.metadata_namespaces` /
/// `cedar.route_metadata_namespaces`, exactly as the sidecar reads them.
pub fn add_case_namespaces(cfg: &mut Config, files: &[(String, TestFile)]) {
    for case in files.iter().flat_map(|(_, f)| &f.cases) {
        let r = &case.request;
        for (named, configured) in [
            (&r.metadata, &mut cfg.cedar.metadata_namespaces),
            (&r.route_metadata, &mut cfg.cedar.route_metadata_namespaces),
        ] {
            for ns in named.keys() {
                if !configured.contains(ns) {
                    configured.push(ns.clone());
                }
            }
        }
    }
}

/// Loads `dir` as the sidecar would and runs `files` against it.
pub fn run_dir(cfg: &Config, dir: &Path, files: &[(String, TestFile)]) -> anyhow::Result<DirReport> {
    let mut registry = prometheus_client::registry::Registry::default();
    let store = Arc::new(PolicyStore::new(cfg.policy.on_empty, &mut registry));
    if let Err(errs) = files::load_into(dir, &store) {
        anyhow::bail!("{}: policies do not load:\n{}", dir.display(), format_errors(&errs));
    }
    // Cases are not traffic: a rate limit would turn the later ones into 429s.
    let checker = Checker::new(cfg, store.clone(), &mut registry)?.without_rate_limit();
    let mut results = Vec::new();
    for (file, tf) in files {
        for case in &tf.cases {
            results.push(run_case(cfg, &checker, file, case));
        }
    }
    let covered: BTreeSet<&str> = results.iter().flat_map(|r| &r.determining).map(String::as_str).collect();
    let (uncovered, policy_count) = match store.load() {
        Some(s) => {
            let mut u: Vec<(String, String)> = s
                .origins
                .iter()
                .filter(|(id, _)| !covered.contains(id.as_str()))
                .map(|(i, o)| (i.clone(), o.clone()))
                .collect();
            u.sort();
            (u, s.policy_count)
        }
        None => (Vec::new(), 0),
    };
    Ok(DirReport { dir: dir.to_owned(), results, uncovered, policy_count })
}

/// The identities a case states, mapped as authentication would map them.
fn identities(cfg: &Config, checker: &Checker, id: &CaseIdentity) -> Result<Identities, String> {
    let mut ids = Identities::default();
    if let Some(j) = &id.jwt {
        let identity = checker
            .authenticator()
            .jwt()
            .identity_from_claims(&j.issuer, &j.claims)
            .map_err(|e| format!("identity.jwt: {e} (issuer {:?})", j.issuer))?;
        ids.jwt = Some(Arc::new(identity));
    }
    if let Some(s) = &id.spiffe_id {
        ids.peer = Some(parse_spiffe_id(s).ok_or_else(|| format!("identity.spiffe_id: not a SPIFFE id: {s:?}"))?);
    }
    if let Some(c) = &id.api_client {
        let configured = cfg.authn.api_keys.keys.iter().find(|k| k.client == c.client).map(|k| k.groups.clone());
        let groups = c.groups.clone().or(configured).unwrap_or_default();
        ids.api_client = Some(Arc::new(ApiClientIdentity { client: c.client.clone(), groups, rate_limit: None }));
    }
    Ok(ids)
}

fn run_case(cfg: &Config, checker: &Checker, file: &str, case: &Case) -> CaseResult {
    let r = &case.request;
    let path = match &r.query {
        Some(q) => format!("{}?{q}", r.path),
        None => r.path.clone(),
    };
    let mut b = CheckRequestBuilder::new(&r.method, &path).host(&r.host).id(&r.id);
    for (k, v) in &r.headers {
        b = b.header(k, v);
    }
    if let Some(ip) = &r.source_ip {
        b = b.source_ip(ip);
    }
    if let Some(s) = &case.identity.spiffe_id {
        b = b.peer(s);
    }
    let mut wire = b.build();
    if let Some(a) = wire.attributes.as_mut() {
        a.context_extensions = r.context_extensions.clone().into_iter().collect();
        a.metadata_context = metadata(&r.metadata);
        a.route_metadata_context = metadata(&r.route_metadata);
    }
    let mut result = CaseResult {
        file: file.to_owned(),
        name: case.name.clone(),
        failures: Vec::new(),
        actual: String::new(),
        determining: Vec::new(),
    };
    let ids = match identities(cfg, checker, &case.identity) {
        Ok(ids) => ids,
        Err(e) => {
            result.actual = "not run".into();
            result.failures.push(e);
            return result;
        }
    };
    let time = match case.time.as_ref().map(CaseTime::unix_seconds).transpose() {
        Ok(t) => t,
        Err(e) => {
            result.actual = "not run".into();
            result.failures.push(e);
            return result;
        }
    };
    let decision = match RequestView::from_check_route(
        &crate::proto::check_in(&wire),
        &cfg.limits,
        cfg.request.matrix_parameters,
        RouteFactNamespaces::of(&cfg.cedar),
    ) {
        Ok(mut view) => {
            view.time = time;
            checker.check_as(&view, ids)
        }
        Err(e) => invalid_request(&e),
    };
    result.actual = summary(&decision);
    result.determining = decision.policies().to_vec();
    result.failures = compare(&case.expect, &decision);
    result
}

/// Envoy's `Metadata` for namespace → key → string value; `None` when the case states none.
fn metadata(m: &BTreeMap<String, BTreeMap<String, String>>) -> Option<Metadata> {
    if m.is_empty() {
        return None;
    }
    let string = |v: &String| prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(v.clone())) };
    let filter_metadata = m
        .iter()
        .map(|(ns, fields)| {
            let fields = fields.iter().map(|(k, v)| (k.clone(), string(v))).collect();
            (ns.clone(), prost_types::Struct { fields })
        })
        .collect();
    Some(Metadata { filter_metadata, ..Default::default() })
}

/// One line: `allow (HTTP 200, policies: a, b)` or `deny (HTTP 403, forbidden_by_policy, policies: x)`.
fn summary(d: &Decision) -> String {
    let policies = if d.policies().is_empty() { "-".to_owned() } else { d.policies().join(", ") };
    match d {
        Decision::Allow(_) => format!("allow (HTTP 200, policies: {policies})"),
        Decision::Deny(den) => format!("deny (HTTP {}, {}, policies: {policies})", den.status.http(), den.reason),
    }
}

/// Every way `d` differs from `e`, each as "expected …, got …".
fn compare(e: &Expectation, d: &Decision) -> Vec<String> {
    let mut out = Vec::new();
    let verdict = if d.is_allowed() { Verdict::Allow } else { Verdict::Deny };
    let name = |v: Verdict| if v == Verdict::Allow { "allow" } else { "deny" };
    if verdict != e.decision {
        out.push(format!("expected {}, got {}", name(e.decision), summary(d)));
        // The rest would only repeat it.
        return out;
    }
    if let Some(s) = e.status
        && s != d.http_status()
    {
        out.push(format!("expected status {s}, got {}", d.http_status()));
    }
    if let Some(r) = &e.reason
        && r != d.reason()
    {
        out.push(format!("expected reason {r}, got {}", d.reason()));
    }
    if let Some(p) = &e.policies {
        let want: BTreeSet<&str> = p.iter().map(String::as_str).collect();
        let got: BTreeSet<&str> = d.policies().iter().map(String::as_str).collect();
        if want != got {
            let list = |s: &BTreeSet<&str>| {
                if s.is_empty() { "-".to_owned() } else { s.iter().copied().collect::<Vec<_>>().join(", ") }
            };
            out.push(format!("expected policies [{}], got [{}]", list(&want), list(&got)));
        }
    }
    let set: &[(bytes::Bytes, bytes::Bytes)] = d.as_allow().map(|a| &a.upstream_headers[..]).unwrap_or(&[]);
    for (k, v) in &e.headers {
        let k = k.to_ascii_lowercase();
        match set.iter().find(|(n, _)| n == k.as_bytes()).map(|(_, got)| String::from_utf8_lossy(got)) {
            Some(got) if got == v.as_str() => {}
            Some(got) => out.push(format!("expected header {k}: {v:?}, got {got:?}")),
            None => out.push(format!("expected header {k}: {v:?}, got none")),
        }
    }
    out
}

/// The `cargo test`-like report: one line per failing case (with its reasons), a coverage list
/// when asked, then the `N passed, M failed` line.
pub fn render_human(reports: &[DirReport], coverage: bool) -> String {
    let mut out = String::new();
    let (mut passed, mut failed) = (0usize, 0usize);
    for rep in reports {
        let _ = writeln!(out, "running {} cases from {}", rep.results.len(), rep.dir.display());
        for r in &rep.results {
            if r.passed() {
                passed += 1;
                continue;
            }
            failed += 1;
            let _ = writeln!(out, "FAILED {}/{}: {}", rep.dir.display(), r.file, r.name);
            for f in &r.failures {
                let _ = writeln!(out, "    {f}");
            }
        }
        if coverage {
            let covered = rep.policy_count - rep.uncovered.len();
            let _ = writeln!(out, "coverage: {covered} of {} policies determined some case", rep.policy_count);
            for (id, origin) in &rep.uncovered {
                let _ = writeln!(out, "    not determining in any case: {id} ({origin})");
            }
        }
    }
    let status = if failed == 0 { "ok" } else { "FAILED" };
    let _ = writeln!(out, "test result: {status}. {passed} passed, {failed} failed");
    out
}

/// A JUnit XML report: one test suite per policy directory, one test case per case.
pub fn render_junit(reports: &[DirReport]) -> anyhow::Result<String> {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let mut report = Report::new("portcullis test");
    for rep in reports {
        let mut suite = TestSuite::new(rep.dir.display().to_string());
        for r in &rep.results {
            let status = if r.passed() {
                TestCaseStatus::success()
            } else {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                s.set_message(r.failures.join("; "));
                s.set_type("decision mismatch");
                s.set_description(format!("actual: {}", r.actual));
                s
            };
            let mut tc = TestCase::new(r.name.clone(), status);
            tc.set_classname(r.file.clone());
            suite.add_test_case(tc);
        }
        report.add_test_suite(suite);
    }
    Ok(report.to_string()?)
}
