//! Operational endpoints: `/healthz` (the process is alive), `/readyz` (every dependency check
//! passes) and `/metrics` (Prometheus text format, from the default registry).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use actix_web::{HttpResponse, web};
use prometheus::{Encoder, TextEncoder};

/// A readiness check: returns `Err(reason)` while the dependency is not usable.
type Check = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Named readiness checks; `/readyz` is 200 only when all pass.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<RwLock<BTreeMap<&'static str, Check>>>,
}

impl Readiness {
    pub fn add(
        &self,
        name: &'static str,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) {
        if let Ok(mut checks) = self.checks.write() {
            checks.insert(name, Arc::new(check));
        }
    }

    /// Every check's result, by name.
    pub fn report(&self) -> BTreeMap<&'static str, Result<(), String>> {
        let checks = self.checks.read().map(|c| c.clone()).unwrap_or_default();
        checks
            .into_iter()
            .map(|(name, check)| (name, check()))
            .collect()
    }
}

/// A service could not listen on its address.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct ListenError {
    pub addr: std::net::SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Bind a service's listener (port 0 picks a free one); the listener and its port.
pub fn bind(addr: std::net::SocketAddr) -> Result<(std::net::TcpListener, u16), ListenError> {
    let error = |source| ListenError { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(error)?;
    let port = listener.local_addr().map_err(error)?.port();
    Ok((listener, port))
}

/// Mount `/healthz`, `/readyz` and `/metrics` on an actix-web app.
pub fn routes(readiness: Readiness) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(web::Data::new(readiness))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics));
    }
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("ok\n")
}

async fn readyz(readiness: web::Data<Readiness>) -> HttpResponse {
    let report = readiness.report();
    let mut body = String::new();
    let mut ready = true;
    for (name, result) in &report {
        match result {
            Ok(()) => body.push_str(&format!("{name}: ok\n")),
            Err(reason) => {
                ready = false;
                body.push_str(&format!("{name}: {reason}\n"));
            }
        }
    }
    let mut response = if ready {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    };
    response
        .content_type("text/plain; charset=utf-8")
        .body(body)
}

async fn metrics() -> HttpResponse {
    let mut buffer = Vec::new();
    match TextEncoder::new().encode(&prometheus::gather(), &mut buffer) {
        Ok(()) => HttpResponse::Ok()
            .content_type(prometheus::TEXT_FORMAT)
            .body(buffer),
        Err(e) => HttpResponse::InternalServerError().body(format!("cannot encode metrics: {e}\n")),
    }
}
