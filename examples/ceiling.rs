//! The benchmark ceiling: an ext_authz server on the same tonic stack as portcullis (same
//! generated service, same prost decoding of the full `CheckRequest`, TCP_NODELAY, Unix socket)
//! that does no work and always allows. Every scenario in `scripts/bench.sh` is reported as a
//! fraction of this server's throughput measured in the same run.
//!
//! `cargo run --release --example ceiling -- [--tcp 127.0.0.1:9291] [--unix /tmp/ceiling.sock]`
use std::net::SocketAddr;
use std::path::PathBuf;

use portcullis::proto::RpcStatus;
use portcullis::proto::auth::authorization_server::{Authorization, AuthorizationServer};
use portcullis::proto::auth::{CheckRequest, CheckResponseOut, OkHttpResponseOut, check_response_out::HttpResponse};
use tonic::{Request, Response, Status};

struct AlwaysAllow;

#[tonic::async_trait]
impl Authorization for AlwaysAllow {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponseOut>, Status> {
        // Touch the decoded request so the decode cannot be optimized away.
        let _ = std::hint::black_box(request.into_inner());
        Ok(Response::new(CheckResponseOut {
            status: Some(RpcStatus { code: 0, ..Default::default() }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponseOut::default())),
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
    let svc = AuthorizationServer::new(AlwaysAllow);
    // The sidecar's default connection limits, so both servers run on the same transport.
    let g = portcullis::config::Limits::default().grpc;
    let limits = portcullis::net::ConnLimits {
        max_connections: g.max_connections,
        idle_timeout: g.idle_timeout,
        max_lifetime: None,
    };
    let metrics = portcullis::net::ListenerMetrics::unregistered;

    let listener = tokio::net::TcpListener::bind(tcp).await?;
    let tcp_server = tonic::transport::Server::builder()
        .add_service(svc.clone())
        .serve_with_incoming(portcullis::net::tcp_incoming(listener, limits, metrics()));

    let _ = std::fs::remove_file(&unix);
    let ul = tokio::net::UnixListener::bind(&unix)?;
    let uds_server = tonic::transport::Server::builder()
        .add_service(svc)
        .serve_with_incoming(portcullis::net::unix_incoming(ul, limits, metrics()));
    eprintln!("ceiling listening on {tcp} and unix:{}", unix.display());
    tokio::select! {
        r = tcp_server => r?,
        r = uds_server => r?,
        _ = tokio::signal::ctrl_c() => {}
    }
    let _ = std::fs::remove_file(&unix);
    Ok(())
}
