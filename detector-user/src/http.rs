//! The HTTP endpoint: `/metrics` (Prometheus text), `/healthz`, and `/top` (the top SYN
//! sources as JSON, for `syndetector top`). Bound to loopback unless configured.

use std::sync::Arc;

use axum::{extract::State, http::header, response::IntoResponse, routing::get, Json, Router};

use crate::{control::SharedTop, metrics::Metrics};

#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    top: SharedTop,
}

pub fn router(metrics: Arc<Metrics>, top: SharedTop) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/top", get(top_handler))
        .with_state(Shared { metrics, top })
}

async fn metrics_handler(State(s): State<Shared>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.metrics.render())
}

async fn top_handler(State(s): State<Shared>) -> impl IntoResponse {
    let top = s.top.lock().expect("top list lock").clone();
    Json(top)
}
