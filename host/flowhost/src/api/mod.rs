//! The HTTP API (axum): flow routes, plugin and flow listings, cache
//! invalidation, analytics, health and Prometheus metrics, and the OpenAPI
//! document of them all. Every route is registered here, through
//! `utoipa_axum::routes!`, so the document cannot miss one; the handlers live
//! by resource (`runs`, `listing`, `admin`), answers are shaped in `views`,
//! failures in `error`. Handlers translate HTTP to `App` calls and back; they
//! know no Redis key and no wasmtime type.

mod admin;
mod auth;
mod error;
mod listing;
mod runs;
mod views;

use std::future::Future;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::{Method, Uri};
use axum::response::Json;
use axum::{Extension, Router};
use tokio::net::TcpListener;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::{ApiError, ErrorBody};

use crate::app::App;
use auth::{Auth, require_token, time_limit};

type AppState = State<Arc<App>>;

#[derive(OpenApi)]
#[openapi(info(
    title = "flowhost",
    description = "Runs flows of sandboxed WebAssembly executor steps, with state in Redis."
))]
struct ApiDoc;

/// The router and the OpenAPI document of every route in it.
pub fn router_and_openapi(app: Arc<App>) -> (Router, utoipa::openapi::OpenApi) {
    let body_limit = app.config.limits.max_request_bytes;
    let request_timeout = app.config.limits.request_timeout_ms;
    let auth = Auth {
        tokens: Arc::new(app.config.auth.tokens.clone()),
        protect_metrics: app.config.auth.protect_metrics,
        protect_health: app.config.auth.protect_health,
    };
    let (router, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(runs::execute))
        .routes(routes!(runs::execute_async))
        .routes(routes!(listing::active_flows))
        .routes(routes!(runs::status))
        .routes(routes!(runs::resume))
        .routes(routes!(runs::retry))
        .routes(routes!(runs::cancel))
        .routes(routes!(listing::analytics))
        .routes(routes!(admin::list_flows))
        .routes(routes!(admin::list_plugins))
        .routes(routes!(admin::invalidate_cache))
        .routes(routes!(admin::prune_flows))
        .routes(routes!(admin::healthz))
        .routes(routes!(admin::metrics))
        .routes(routes!(openapi))
        .with_state(app)
        .split_for_parts();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    let router = router
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            request_timeout,
            time_limit,
        ))
        .layer(Extension(Arc::new(doc.clone())))
        .layer(axum::middleware::from_fn_with_state(auth, require_token));
    (router, doc)
}

pub fn router(app: Arc<App>) -> Router {
    router_and_openapi(app).0
}

/// Serves `app` on an already bound listener until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Small JSON answers should leave at once, not wait on Nagle's algorithm.
    let listener = listener.tap_io(|stream| {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown)
        .await
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", responses((status = 200, body = Object)))]
async fn openapi(
    Extension(doc): Extension<Arc<utoipa::openapi::OpenApi>>,
) -> Json<utoipa::openapi::OpenApi> {
    Json(doc.as_ref().clone())
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NoRoute(format!("{method} {}", uri.path()))
}

#[cfg(test)]
mod tests {
    /// Every route goes through `routes!`, which puts it in the OpenAPI
    /// document: a plain axum `.route(` here would escape it.
    #[test]
    fn routes_are_registered_only_through_the_openapi_router() {
        let source = include_str!("mod.rs");
        let code = &source[..source.find("#[cfg(test)]").unwrap()];
        assert!(
            !code.contains(concat!(".route", "(")),
            "use .routes(routes!(handler))"
        );
        assert_eq!(code.matches(".routes(routes!(").count(), 15);
    }
}
