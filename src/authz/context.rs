//! The Cedar context of a request, built in one place for requests and for the samples the
//! index checks against the schema, so both have the same shape.
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use cedar_policy_core::ast::{Context as CoreContext, EntityUID, Name, RestrictedExpr, Value};
use cedar_policy_core::evaluator::RestrictedEvaluator;
use cedar_policy_core::extensions::Extensions;

use super::AuthzError;
use super::model;

/// Source addresses kept per worker thread; the map is emptied when full, so it stays bounded
/// whatever addresses arrive.
pub(super) const MAX_CACHED_IPS: usize = 1024;

thread_local! {
    static IPS: RefCell<HashMap<IpAddr, Value>> = RefCell::new(HashMap::new());
}

/// `ip("…")` for a source address. Building the value runs Cedar's extension function (and
/// parses its name), which cost as much as the rest of the context: callers repeat, so each
/// address is built once per thread.
fn ip_value(ip: IpAddr) -> Result<Value, AuthzError> {
    IPS.with(|cell| {
        let mut ips = cell.borrow_mut();
        if let Some(v) = ips.get(&ip) {
            return Ok(v.clone());
        }
        let name: Name = model::IP_EXTENSION.parse().map_err(|e| AuthzError::Request(format!("ip extension: {e}")))?;
        let call = RestrictedExpr::call_extension_fn(name, [RestrictedExpr::val(ip.to_string())]);
        let v = RestrictedEvaluator::new(Extensions::all_available())
            .interpret(call.as_borrowed())
            .map_err(|e| AuthzError::Request(format!("source address {ip}: {e}")))?;
        if ips.len() >= MAX_CACHED_IPS {
            ips.clear();
        }
        ips.insert(ip, v.clone());
        Ok(v)
    })
}

/// The values of a request's Cedar context.
pub(super) struct ContextParts<'a> {
    pub(super) method: &'a str,
    pub(super) path: &'a str,
    pub(super) query: &'a str,
    pub(super) host: &'a str,
    pub(super) scheme: &'a str,
    pub(super) request_id: &'a str,
    pub(super) authn: &'a [&'static str],
    pub(super) source_ip: Option<IpAddr>,
    pub(super) peer: Option<&'a EntityUID>,
    /// `context.time` instead of the clock (`portcullis test` cases state it).
    pub(super) time: Option<i64>,
    /// `(service, method)`, only when the schema declares them.
    pub(super) grpc: Option<(&'a str, &'a str)>,
    /// The body converted with the schema's type, only when the schema declares one.
    pub(super) body: Option<Value>,
}

/// `context.time` of one request: the stated value (`portcullis test` cases), or the clock read
/// once, when first needed. A memo hit on a slice that never reads the time reads no clock; a
/// key that holds the time and the context built on a miss read the same value.
pub(super) struct RequestTime {
    stated: Option<i64>,
    read: std::cell::OnceCell<i64>,
}

impl RequestTime {
    pub(super) fn new(stated: Option<i64>) -> Self {
        RequestTime { stated, read: std::cell::OnceCell::new() }
    }

    pub(super) fn get(&self) -> i64 {
        self.stated.unwrap_or_else(|| *self.read.get_or_init(now))
    }
}

/// `context.time` from the clock: unix seconds.
pub(super) fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// The one place a Cedar context is built.
pub(super) fn context(c: &ContextParts<'_>) -> Result<CoreContext, AuthzError> {
    let now = c.time.unwrap_or_else(now);
    let mut ctx: BTreeMap<_, Value> = BTreeMap::from([
        (model::CTX_METHOD.into(), c.method.into()),
        (model::CTX_PATH.into(), c.path.into()),
        (model::CTX_QUERY.into(), c.query.into()),
        (model::CTX_HOST.into(), c.host.into()),
        (model::CTX_SCHEME.into(), c.scheme.into()),
        (model::CTX_REQUEST_ID.into(), c.request_id.into()),
        (model::CTX_AUTHN.into(), Value::set(c.authn.iter().map(|m| Value::from(*m)), None)),
        (model::CTX_TIME.into(), now.into()),
    ]);
    if let Some(ip) = c.source_ip {
        ctx.insert(model::CTX_SOURCE_IP.into(), ip_value(ip)?);
    }
    if let Some(p) = c.peer {
        ctx.insert(model::CTX_PEER.into(), p.clone().into());
    }
    if let Some((service, method)) = c.grpc {
        ctx.insert(model::CTX_GRPC_SERVICE.into(), service.into());
        ctx.insert(model::CTX_GRPC_METHOD.into(), method.into());
    }
    if let Some(body) = &c.body {
        ctx.insert(model::CTX_BODY.into(), body.clone());
    }
    Ok(CoreContext::Value(Arc::new(ctx)))
}
