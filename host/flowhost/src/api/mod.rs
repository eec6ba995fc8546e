//! The HTTP API (axum): flow routes, blobs, plugin and flow listings, cache
//! invalidation, analytics, health and Prometheus metrics, and the OpenAPI
//! document of them all. Every route is registered here, through
//! `utoipa_axum::routes!`, so the document cannot miss one; the handlers live
//! by resource (`runs`, `blobs`, `listing`, `admin`; forms in `forms`),
//! answers are shaped in `views`,
//! failures in `error`, the limits on requests are in `limits` and `server`.
//! Every answer that is not a success is the JSON `ErrorBody`, and the
//! document lists each of them. Handlers translate HTTP to `App` calls and
//! back; they know no Redis key and no wasmtime type.

mod admin;
mod auth;
mod blobs;
mod error;
mod forms;
mod limits;
mod listing;
mod runs;
mod server;
mod views;

use std::future::Future;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{Method, Uri};
use axum::response::Json;
use axum::{Extension, Router};
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use utoipa::OpenApi;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder, Schema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use blobs::media_type_for;
pub use error::{ApiError, ErrorBody};

use crate::app::App;
use crate::config::Config;
use auth::{Auth, require_token};
use limits::{RequestLimits, check_uri, read_body, time_limit};

type AppState = State<Arc<App>>;

#[derive(OpenApi)]
#[openapi(info(
    title = "flowhost",
    description = "Runs flows of sandboxed WebAssembly executor steps, with state in Redis."
))]
struct ApiDoc;

/// The router and the OpenAPI document of every route in it.
pub fn router_and_openapi(app: Arc<App>) -> (Router, utoipa::openapi::OpenApi) {
    let config = &app.config;
    let request_limits = RequestLimits {
        max_uri_bytes: config.limits.max_uri_bytes,
        max_body_bytes: config.limits.max_request_bytes,
        max_streamed_bytes: config.blobs.max_bytes,
        body_timeout_ms: config.limits.body_timeout_ms,
    };
    let request_timeout = config.limits.request_timeout_ms;
    let auth = Auth {
        tokens: Arc::new(config.auth.tokens.clone()),
        protect_metrics: config.auth.protect_metrics,
        protect_health: config.auth.protect_health,
    };
    let (router, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(runs::execute))
        .routes(routes!(runs::execute_async))
        .routes(routes!(listing::active_flows))
        .routes(routes!(runs::status))
        .routes(routes!(runs::resume))
        .routes(routes!(runs::retry))
        .routes(routes!(runs::cancel))
        .routes(routes!(blobs::upload))
        .routes(routes!(blobs::download))
        .routes(routes!(blobs::delete))
        .routes(routes!(listing::analytics))
        .routes(routes!(admin::list_flows))
        .routes(routes!(admin::list_plugins))
        .routes(routes!(admin::invalidate_cache))
        .routes(routes!(admin::prune_flows))
        .routes(routes!(admin::healthz))
        .routes(routes!(admin::metrics))
        .routes(routes!(openapi))
        .with_state(app.clone())
        .split_for_parts();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    document_rejections(&mut doc, config);
    // `read_body` holds every body to its own limit before a handler reads
    // it; this one only keeps axum's extractors from cutting the streamed
    // ones (a form of blobs) at their default.
    let extractor_limit = usize::try_from(request_limits.max_streamed_bytes)
        .unwrap_or(usize::MAX)
        .max(request_limits.max_body_bytes);
    let router = router
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(extractor_limit))
        .layer(axum::middleware::from_fn_with_state(
            request_timeout,
            time_limit,
        ))
        .layer(axum::middleware::from_fn_with_state(
            request_limits,
            read_body,
        ))
        .layer(Extension(Arc::new(doc.clone())))
        .layer(axum::middleware::from_fn_with_state(auth, require_token))
        .layer(axum::middleware::from_fn_with_state(
            request_limits,
            check_uri,
        ));
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
    let limits = server::ServerLimits {
        max_connections: app.config.limits.max_connections,
        max_uri_bytes: app.config.limits.max_uri_bytes,
        max_header_bytes: app.config.limits.max_header_bytes,
    };
    server::run(listener, router(app), limits, shutdown).await
}

/// `Path`, with its rejections (a segment that is not UTF-8 once
/// percent-decoded, say) answered as an `ApiError`.
struct PathParams<T>(T);

impl<T, S> FromRequestParts<S> for PathParams<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(PathParams(value)),
            Err(rejection) => Err(ApiError::BadPath(rejection.body_text())),
        }
    }
}

/// Adds to every operation of the document the answers that the layers
/// give before or around its handler, and states the bearer scheme when
/// tokens are set. Route attributes list what their handlers answer.
fn document_rejections(doc: &mut utoipa::openapi::OpenApi, config: &Config) {
    let error = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build(),
        )
    };
    let tokens = !config.auth.tokens.is_empty();
    if tokens {
        let components = doc.components.get_or_insert_with(Default::default);
        components.security_schemes.insert(
            "bearer".into(),
            RefOr::T(SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build(),
            )),
        );
    }
    for (path, item) in doc.paths.paths.iter_mut() {
        let open = (path == "/metrics" && !config.auth.protect_metrics)
            || (path == "/healthz" && !config.auth.protect_health);
        let operations = [&mut item.get, &mut item.post, &mut item.delete];
        for operation in operations.into_iter().flatten() {
            let mut add = |status: &str, description: &str| {
                let responses = &mut operation.responses.responses;
                responses
                    .entry(status.to_owned())
                    .or_insert_with(|| error(description));
            };
            add(
                "408",
                "The request took longer than limits.request_timeout_ms, or its body longer than limits.body_timeout_ms to arrive",
            );
            add("414", "The URI is longer than limits.max_uri_bytes");
            add(
                "431",
                "The request line and header fields are over limits.max_header_bytes, or more than 100 fields",
            );
            if operation.request_body.is_some() {
                add(
                    "413",
                    "The body is over limits.max_request_bytes (a form with files: over blobs.max_bytes)",
                );
            }
            if tokens && !open {
                add(
                    "401",
                    "No Authorization: Bearer TOKEN with a configured token",
                );
                operation.security = Some(vec![SecurityRequirement::new(
                    "bearer",
                    Vec::<String>::new(),
                )]);
            }
            state_query_rules(path, operation);
        }
    }
}

/// What the handlers of the cache and prune routes enforce on their query,
/// which their query structs do not say: the form of `older_than`, and the
/// rule of the cache's three selectors, which no schema of query parameters
/// can express (it is stated, and its 400 documented).
fn state_query_rules(path: &str, operation: &mut Operation) {
    for parameter in operation.parameters.iter_mut().flatten() {
        let RefOr::T(parameter) = parameter else {
            continue;
        };
        if parameter.name == "older_than"
            && let Some(RefOr::T(Schema::Object(schema))) = &mut parameter.schema
        {
            schema.pattern = Some("^[0-9]+[smhd]$".into());
        }
    }
    if path == "/api/v1/cache" {
        let rule = "Exactly one of `plugin`, `flow` and `key` must be given: none, or two, is answered 400.";
        let description = operation.description.get_or_insert_with(String::new);
        if !description.contains(rule) {
            description.push_str("\n\n");
            description.push_str(rule);
        }
    }
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

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
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
        assert_eq!(code.matches(".routes(routes!(").count(), 18);
    }
}
