//! Command line: `serve`, `validate`, `check` (offline or against a running sidecar, with an
//! offline `--explain`), `test` (policy test files) and the dev-only `token`. Every flag can
//! also come from the environment.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use serde::Deserialize;

use crate::client::CheckRequestBuilder;
use crate::config::{Config, PolicyConfig};
use crate::policy::{PolicySnapshot, PolicyStore, files, snapshot::format_errors};
use crate::proto::auth::{self, CheckRequest, CheckResponse};
use crate::request::{RequestView, RouteFactNamespaces};

/// `println!`/`print!` for the commands' output. A reader that went away (`portcullis check … |
/// head`) ends the output quietly; `println!` would panic on the broken pipe. The exit code still
/// says how the command went.
macro_rules! say {
    () => { $crate::cli::write_out(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::cli::write_out(format_args!("{}\n", format_args!($($arg)*))) };
}
macro_rules! say_raw {
    ($($arg:tt)*) => { $crate::cli::write_out(format_args!($($arg)*)) };
}

mod explain;
mod test;

use explain::print_explanation;
use test::run_tests;

/// Envoy ext_authz sidecar: JWT / mTLS / API-key authentication, Cedar authorization.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar.
    Serve {
        /// Config file (YAML).
        #[arg(long, short, env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
    },
    /// Validate a policy directory (*.cedar, *.cedarschema, *.entities.json); exits non-zero
    /// with file:line:column: message for every problem.
    Validate {
        /// Policy directory.
        #[arg(env = "PORTCULLIS_POLICY_DIR")]
        dir: PathBuf,
    },
    /// Decide one request described in a YAML/JSON file, offline or against a running sidecar.
    Check {
        /// Request file (method, path, host, headers, bearer, source).
        request: PathBuf,
        /// Config file for offline checks (issuers, header names, policy dir).
        #[arg(long, short, env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
        /// Policy directory for offline checks (overrides the config's `policy.dir`).
        #[arg(long, env = "PORTCULLIS_POLICY_DIR")]
        policies: Option<PathBuf>,
        /// Send a real gRPC Check to this sidecar: `http://127.0.0.1:9191` or `unix:/path.sock`.
        #[arg(long, env = "PORTCULLIS_SERVER")]
        server: Option<String>,
        /// Bearer token to send (overrides the file's `bearer`).
        #[arg(long, env = "PORTCULLIS_BEARER")]
        bearer: Option<String>,
        /// Exit non-zero unless the decision is this.
        #[arg(long)]
        expect: Option<Expect>,
        /// Offline only: also print what Cedar saw (principal, action, resource, context), the
        /// policies considered after indexing, the satisfied and determining ones, and every
        /// evaluation error. Shows request data: for a terminal, never for logs.
        #[arg(long, conflicts_with = "server")]
        explain: bool,
        /// Offline only: `context.time` instead of the clock (RFC 3339 with `Z` or `±HH:MM`, or
        /// unix seconds), to ask about a policy that reads the time.
        #[arg(long, conflicts_with = "server")]
        time: Option<String>,
    },
    /// Run the policy test files (`*.test.yaml`) of each policy directory; exits 1 if any case
    /// fails, 2 if the tests cannot run (policies or test files that do not load).
    Test {
        /// Policy directories holding `*.test.yaml` files (default: the config's `policy.dir`).
        dirs: Vec<PathBuf>,
        /// Config file: issuers and their claim mapping, header names, Cedar context headers.
        #[arg(long, short, env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
        /// `human` (like cargo test) or `junit` (JUnit XML, to --output or stdout).
        #[arg(long, value_enum, default_value = "human")]
        format: TestFormat,
        /// Where the JUnit XML goes (default: stdout).
        #[arg(long)]
        output: Option<PathBuf>,
        /// List the policies that no case made determining.
        #[arg(long)]
        coverage: bool,
    },
    /// DEV ONLY: mint a token with a local private key, or print its JWKS. Refuses to run
    /// without `--dev` (or `PORTCULLIS_DEV=1`).
    Token {
        /// Confirms this is a development setup (also `PORTCULLIS_DEV=1`).
        #[arg(long, env = "PORTCULLIS_DEV", value_parser = clap::builder::BoolishValueParser::new())]
        dev: bool,
        /// PEM private key (or HMAC secret file for HS*).
        #[arg(long, env = "PORTCULLIS_TOKEN_KEY", default_value = "examples/demo/keys/demo-signing-key.pem")]
        key: PathBuf,
        #[arg(long, default_value = "RS256")]
        alg: String,
        #[arg(long, default_value = "demo")]
        kid: String,
        #[arg(long, default_value = "https://demo.portcullis.dev")]
        iss: String,
        #[arg(long, default_value = "alice")]
        sub: String,
        #[arg(long, default_value = "demo-api")]
        aud: String,
        /// Comma-separated groups.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Extra claims as key=value (repeatable).
        #[arg(long = "claim")]
        claims: Vec<String>,
        /// Lifetime, e.g. 1h.
        #[arg(long, default_value = "1h")]
        ttl: humantime::Duration,
        /// Print the public JWKS for the key instead of a token.
        #[arg(long)]
        jwks: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Expect {
    Allow,
    Deny,
}

/// Output of `portcullis test`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TestFormat {
    Human,
    Junit,
}

/// A request described for `portcullis check`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    #[serde(default = "get")]
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Shorthand for an `authorization: Bearer …` header.
    #[serde(default)]
    pub bearer: Option<String>,
    #[serde(default)]
    pub source: PeerSpec,
    #[serde(default)]
    pub id: String,
}

fn get() -> String {
    "GET".into()
}

/// The calling peer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSpec {
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub principal: Option<String>,
}

impl RequestSpec {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// The Istio-shaped CheckRequest Envoy would send.
    pub fn to_check_request(&self) -> CheckRequest {
        let mut b = CheckRequestBuilder::new(&self.method, &self.path).host(&self.host).id(&self.id);
        for (k, v) in &self.headers {
            b = b.header(k, v);
        }
        if let Some(t) = &self.bearer {
            // Replaces any `authorization` from `headers` (the merged map keeps the last copy).
            b = b.bearer(t);
        }
        if let Some(a) = &self.source.address {
            b = b.source_ip(a);
        }
        if let Some(p) = &self.source.principal {
            b = b.peer(p);
        }
        b.build()
    }
}

/// Entry point for the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Writes to stdout, ignoring a closed reader (see `say!`).
fn write_out(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = std::io::stdout().lock().write_fmt(args);
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => {
            let cfg = Config::load(&config)?;
            let _log = crate::telemetry::init(&cfg.log);
            for issuer in crate::token::issuers_trusting_demo_key(&cfg) {
                tracing::warn!(
                    issuer = %issuer,
                    "DEMO KEY TRUSTED: this issuer's jwks_file holds the committed demo signing key \
                     (examples/demo), so anyone can mint tokens it accepts. Never run this in production."
                );
            }
            runtime()?.block_on(crate::server::run(cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { dir } => {
            let docs = match files::read_dir(&dir) {
                Ok(d) => d,
                Err(errs) => {
                    eprintln!("{}", format_errors(&errs));
                    return Ok(ExitCode::FAILURE);
                }
            };
            match PolicySnapshot::build(&docs, &dir.display().to_string()) {
                Ok(s) => {
                    say!("ok: {} policies, version {}", s.policy_count, s.version);
                    for w in &s.warnings {
                        say!("warning: {w}");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(errs) => {
                    for e in &errs {
                        eprintln!("{}", prefix_dir(&dir, e));
                    }
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Test { dirs, config, format, output, coverage } => run_tests(dirs, config, format, output, coverage),
        Command::Check { request, config, policies, server, bearer, expect, explain, time } => {
            let time = time
                .map(|t| crate::policytest::CaseTime::Text(t).unix_seconds())
                .transpose()
                .map_err(|e| anyhow::anyhow!("--{e}"))?;
            let mut spec = RequestSpec::load(&request)?;
            if bearer.is_some() {
                spec.bearer = bearer;
            }
            let req = spec.to_check_request();
            let allowed = match server {
                Some(addr) => {
                    let resp = runtime()?.block_on(send_check(&addr, req))?;
                    print_response(&resp)
                }
                None => {
                    let mut cfg = match &config {
                        Some(p) => Config::load(p)?,
                        None => Config::from_yaml("policy: {dir: .}\n").map_err(anyhow::Error::msg)?,
                    };
                    if let Some(p) = policies {
                        cfg.policy = PolicyConfig { dir: Some(p), kubernetes: None, ..cfg.policy };
                    }
                    let dir = cfg.policy.dir.clone().context("offline check needs a policy directory")?;
                    runtime()?.block_on(offline_check(&cfg, &dir, &req, explain, time))?
                }
            };
            Ok(match expect {
                Some(Expect::Allow) if !allowed => ExitCode::FAILURE,
                Some(Expect::Deny) if allowed => ExitCode::FAILURE,
                _ => ExitCode::SUCCESS,
            })
        }
        Command::Token { dev, key, alg, kid, iss, sub, aud, groups, claims, ttl, jwks } => {
            if !dev {
                eprintln!(
                    "portcullis token mints tokens with a local key, for development only; \
                     pass --dev (or set PORTCULLIS_DEV=1) to confirm"
                );
                return Ok(ExitCode::from(2));
            }
            let alg = crate::config::JwtAlgorithm::from_name(&alg)
                .map(crate::authn::jwt::algorithm)
                .context("unsupported algorithm")?;
            if jwks {
                say!("{}", serde_json::to_string_pretty(&crate::token::jwks_for(&key, alg, &kid)?)?);
                return Ok(ExitCode::SUCCESS);
            }
            let mut extra = BTreeMap::new();
            for c in claims {
                let (k, v) = c.split_once('=').context("--claim takes key=value")?;
                let v = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_owned()));
                extra.insert(k.to_owned(), v);
            }
            let spec = crate::token::TokenSpec {
                issuer: iss,
                subject: sub,
                audience: Some(aud),
                groups,
                ttl: ttl.into(),
                kid: Some(kid),
                extra,
            };
            say!("{}", crate::token::mint(&key, alg, &spec)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn prefix_dir(dir: &Path, e: &crate::policy::LoadError) -> String {
    let mut e = e.clone();
    if !Path::new(&e.origin).is_absolute() && e.origin != dir.display().to_string() {
        e.origin = dir.join(&e.origin).display().to_string();
    }
    e.to_string()
}

async fn offline_check(
    cfg: &Config,
    dir: &Path,
    req: &CheckRequest,
    explain: bool,
    time: Option<i64>,
) -> anyhow::Result<bool> {
    let mut registry = prometheus_client::registry::Registry::default();
    let store = Arc::new(PolicyStore::new(cfg.policy.on_empty, &mut registry));
    if let Err(errs) = files::load_into(dir, &store) {
        anyhow::bail!("policies do not load:\n{}", format_errors(&errs));
    }
    let checker = crate::check::Checker::new(cfg, store, &mut registry)?;
    let mut explanation = None;
    let req = &crate::proto::check_in(req);
    let view = RequestView::from_check_route(
        req,
        &cfg.limits,
        cfg.request.matrix_parameters,
        RouteFactNamespaces::of(&cfg.cedar),
    )
    .map(|mut view| {
        view.time = time;
        view
    });
    let d = match view {
        // The same decision as `check`, with the identities kept to explain Cedar's part.
        Ok(view) if explain => match checker.authenticator().authenticate(&view).await {
            Ok(ids) => {
                explanation = checker.explain(&view, &ids);
                checker.check_as(&view, ids)
            }
            Err(_) => checker.check(&view).await,
        },
        Ok(view) => checker.check(&view).await,
        Err(e) => crate::check::invalid_request(&e),
    };
    say!("decision:  {} (HTTP {})", d.verdict(), d.http_status());
    say!("reason:    {}", d.reason());
    say!("principal: {}", d.principal());
    say!("action:    {}", d.action());
    say!("resource:  {}", d.resource());
    say!("policies:  {}", d.policies().join(", "));
    if let Some(a) = d.as_allow() {
        for (k, v) in &a.upstream_headers {
            say!("header:    {}: {}", String::from_utf8_lossy(k), String::from_utf8_lossy(v));
        }
        print_removals(&a.remove_headers.to_vec());
    }
    if let Some(c) = d.as_deny().and_then(|den| den.challenge.as_ref()) {
        say!("header:    www-authenticate: {}", crate::response::challenge_header(c));
    }
    if explain {
        print_explanation(explanation);
    }
    Ok(d.is_allowed())
}

/// Sends a real gRPC Check over TCP (`http://host:port`) or a Unix socket (`unix:/path`).
pub async fn send_check(addr: &str, req: CheckRequest) -> anyhow::Result<CheckResponse> {
    use auth::authorization_client::AuthorizationClient;
    let channel = if let Some(path) = addr.strip_prefix("unix:") {
        let path = path.to_owned();
        tonic::transport::Endpoint::try_from("http://localhost")?
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move { tokio::net::UnixStream::connect(path).await.map(hyper_util::rt::TokioIo::new) }
            }))
            .await?
    } else {
        tonic::transport::Endpoint::try_from(addr.to_owned())?.connect().await?
    };
    Ok(AuthorizationClient::new(channel).check(req).await?.into_inner())
}

fn print_response(resp: &CheckResponse) -> bool {
    use auth::check_response::HttpResponse;
    let code = resp.status.as_ref().map(|s| s.code).unwrap_or(-1);
    let allowed = code == 0;
    let meta = |k: &str| -> String {
        resp.dynamic_metadata
            .as_ref()
            .and_then(|m| m.fields.get(k))
            .map(|v| match &v.kind {
                Some(prost_types::value::Kind::StringValue(s)) => s.clone(),
                Some(prost_types::value::Kind::ListValue(l)) => l
                    .values
                    .iter()
                    .filter_map(|v| match &v.kind {
                        Some(prost_types::value::Kind::StringValue(s)) => Some(s.as_str()),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                _ => String::new(),
            })
            .unwrap_or_default()
    };
    match &resp.http_response {
        Some(HttpResponse::DeniedResponse(d)) => {
            say!("decision:  deny (HTTP {})", d.status.as_ref().map(|s| s.code).unwrap_or(403));
        }
        _ => say!("decision:  {}", if allowed { "allow" } else { "deny (HTTP 403)" }),
    }
    say!("reason:    {}", meta("reason"));
    say!("principal: {}", meta("principal"));
    say!("policies:  {}", meta("policy_ids"));
    match &resp.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            for h in ok.headers.iter().filter_map(|h| h.header.as_ref()) {
                say!("header:    {}: {}", h.key, h.value);
            }
            print_removals(&ok.headers_to_remove);
        }
        Some(HttpResponse::DeniedResponse(d)) => {
            for h in d.headers.iter().filter_map(|h| h.header.as_ref()) {
                say!("header:    {}: {}", h.key, h.value);
            }
            say!("body:      {}", d.body);
        }
        None => {}
    }
    allowed
}

/// Removals on one line for people: the owned names, and how many `_` spellings of them go too.
fn print_removals<N: AsRef<[u8]>>(names: &[N]) {
    if names.is_empty() {
        return;
    }
    let names: Vec<std::borrow::Cow<'_, str>> = names.iter().map(|n| String::from_utf8_lossy(n.as_ref())).collect();
    let (underscored, plain): (Vec<&str>, Vec<&str>) = names.iter().map(|n| n.as_ref()).partition(|n| n.contains('_'));
    if underscored.is_empty() {
        say!("remove:    {}", plain.join(", "));
    } else {
        say!("remove:    {} (and {} `_` spellings of owned names)", plain.join(", "), underscored.len());
    }
}
