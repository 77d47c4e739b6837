//! The benchmark ceiling: an ext_authz server on the same tonic stack as portcullis (TCP_NODELAY,
//! Unix socket, the same connection limits) that decodes the full standard `CheckRequest` with
//! prost (headers into a `HashMap`), does no work and always allows. Every scenario in
//! `scripts/bench.sh` is reported as a fraction of this server's throughput measured in the same run.
//! It allocates through mimalloc, as the binary does.
//!
//! `--list-decode` serves portcullis's own decode instead (`CheckRequestIn`: the merged headers
//! as a list, build.rs) and answers with its `CheckResponseOut`: an extra bench row, never a
//! ratio's basis.
//!
//! `cargo run --release --example ceiling -- [--tcp 127.0.0.1:9291] [--unix /tmp/ceiling.sock] [--list-decode]`
use std::net::SocketAddr;
use std::path::PathBuf;

use portcullis::proto::RpcStatus;
use portcullis::proto::auth::{
    CheckRequest, CheckRequestIn, CheckResponse, CheckResponseOut, OkHttpResponse, OkHttpResponseOut, check_response,
    check_response_out,
};
use portcullis::proto::{auth, standard};
use tonic::{Request, Response, Status};

/// The binary's allocator (`src/main.rs`), so that the basis pays for its allocations what
/// portcullis pays for the same ones: with glibc malloc the ceiling cost ~2 µs more per check,
/// which flattered every ratio.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Decodes the standard `CheckRequest` (the ceiling proper).
struct AlwaysAllow;

#[tonic::async_trait]
impl standard::authorization_server::Authorization for AlwaysAllow {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        // Touch the decoded request so the decode cannot be optimized away.
        let _ = std::hint::black_box(request.into_inner());
        Ok(Response::new(CheckResponse {
            status: Some(RpcStatus { code: 0, ..Default::default() }),
            http_response: Some(check_response::HttpResponse::OkResponse(OkHttpResponse::default())),
            ..Default::default()
        }))
    }
}

/// Decodes `CheckRequestIn`, as portcullis does (`--list-decode`).
struct AlwaysAllowList;

#[tonic::async_trait]
impl auth::authorization_server::Authorization for AlwaysAllowList {
    async fn check(&self, request: Request<CheckRequestIn>) -> Result<Response<CheckResponseOut>, Status> {
        let _ = std::hint::black_box(request.into_inner());
        Ok(Response::new(CheckResponseOut {
            status: Some(RpcStatus { code: 0, ..Default::default() }),
            http_response: Some(check_response_out::HttpResponse::OkResponse(OkHttpResponseOut::default())),
            ..Default::default()
        }))
    }
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let tcp: SocketAddr = arg("--tcp").unwrap_or_else(|| "127.0.0.1:9291".into()).parse()?;
    let unix = PathBuf::from(arg("--unix").unwrap_or_else(|| "/tmp/portcullis-ceiling.sock".into()));
    // The sidecar's default connection limits, so both servers run on the same transport.
    let g = portcullis::config::Limits::default().grpc;
    let limits = portcullis::net::ConnLimits {
        max_connections: g.max_connections,
        idle_timeout: g.idle_timeout,
        max_lifetime: None,
    };
    let metrics = portcullis::net::ListenerMetrics::unregistered;

    let list_decode = std::env::args().any(|a| a == "--list-decode");
    let router = || {
        let mut b = tonic::transport::Server::builder();
        if list_decode {
            b.add_service(auth::authorization_server::AuthorizationServer::new(AlwaysAllowList))
        } else {
            b.add_service(standard::authorization_server::AuthorizationServer::new(AlwaysAllow))
        }
    };

    let listener = tokio::net::TcpListener::bind(tcp).await?;
    let tcp_server = router().serve_with_incoming(portcullis::net::tcp_incoming(listener, limits, metrics()));

    let _ = std::fs::remove_file(&unix);
    let ul = tokio::net::UnixListener::bind(&unix)?;
    let uds_server = router().serve_with_incoming(portcullis::net::unix_incoming(ul, limits, metrics()));
    let decode = if list_decode { "CheckRequestIn (headers as a list)" } else { "CheckRequest" };
    eprintln!("ceiling ({decode}) listening on {tcp} and unix:{}", unix.display());
    tokio::select! {
        r = tcp_server => r?,
        r = uds_server => r?,
        _ = tokio::signal::ctrl_c() => {}
    }
    let _ = std::fs::remove_file(&unix);
    Ok(())
}
