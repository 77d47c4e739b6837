//! portcullis: an Envoy ext_authz (v3) sidecar that authenticates callers and authorizes them
//! with Cedar. The binary in `main.rs` only parses the CLI; everything else lives here.
//!
//! Data flows one way: `request` (normalize) → `authn` (prove identity) → `authz` (Cedar over the
//! current `policy` snapshot) → `decision` → `response` (render the wire answer). `check` runs that
//! pipeline on a normalized view; `server` and the offline `check` command normalize the wire
//! request, call it and render the decision. `client` builds `CheckRequest`s (CLI, tests, benches).

#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

mod admin;
pub mod anomaly;
pub mod authn;
pub mod authz;
pub mod check;
pub mod cli;
pub mod client;
pub mod config;
pub mod decision;
pub mod kubeapi;
pub mod metrics;
pub mod net;
pub mod policy;
pub mod policytest;
pub mod proto;
mod ratelimit;
pub mod request;
pub mod response;
pub mod server;
mod telemetry;
pub mod token;
mod trace;
mod watch;
