//! The small HTTP server every ironlb process runs: `/healthz`, `/readyz` and
//! `/metrics` (OpenMetrics text).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// `PoolExhausted` as `pool_exhausted`: label values in ironlb's metrics are
/// snake_case, as Prometheus conventions ask, while event reasons stay
/// CamelCase as Kubernetes conventions ask.
pub fn snake_case(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// What a process exposes.
pub trait Endpoints: Send + Sync + 'static {
    /// Whether `/readyz` answers 200.
    fn ready(&self) -> bool;
    /// The `/metrics` body.
    fn metrics(&self) -> Result<String, std::fmt::Error>;
}

/// Binds `addr` for [`serve`].
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves the endpoints on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    endpoints: Arc<dyn Endpoints>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render))
        .with_state(endpoints);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn readyz(State(e): State<Arc<dyn Endpoints>>) -> impl IntoResponse {
    if e.ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// Serves OpenMetrics to a scraper that asks for it (Prometheus does), and the
/// classic text format (0.0.4) to everything else — curl, `promtool check
/// metrics`, older scrapers — which reads a counter's HELP and TYPE under its
/// `_total` name.
async fn render(
    State(e): State<Arc<dyn Endpoints>>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let Ok(body) = e.metrics() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    if openmetrics {
        (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response()
    } else {
        (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            classic_text(&body),
        )
            .into_response()
    }
}

/// An OpenMetrics page in the classic text format: a counter's HELP and TYPE
/// lines take its samples' `_total` name, and `# UNIT` and `# EOF` go.
pub fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let counter = |name: &str| counters.contains(name);
    let mut out = String::with_capacity(openmetrics.len() + 64);
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counter(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{classic_text, snake_case};

    #[test]
    fn the_classic_format_names_counters_by_their_samples() {
        let om = "# HELP a_b Things.\n# TYPE a_b counter\na_b_total{x=\"1\"} 2\n\
                  # HELP g Level.\n# TYPE g gauge\n# UNIT g seconds\ng 1.0\n# EOF\n";
        assert_eq!(
            classic_text(om),
            "# HELP a_b_total Things.\n# TYPE a_b_total counter\na_b_total{x=\"1\"} 2\n\
             # HELP g Level.\n# TYPE g gauge\ng 1.0\n"
        );
    }

    #[test]
    fn reasons_become_snake_case_label_values() {
        assert_eq!(snake_case("PoolExhausted"), "pool_exhausted");
        assert_eq!(snake_case("SourceRange"), "source_range");
        assert_eq!(snake_case("already_snake"), "already_snake");
    }
}
