//! The operators' REST API (`/api/v1`, :7701): JSON everywhere, one error
//! shape (`{"error": {"code", "message"}}`), cursor pagination on every
//! list, bearer JWTs with `admin` and `viewer` roles, and an OpenAPI 3
//! document generated from the handlers themselves at
//! `/api/v1/openapi.json`.
//!
//! Handlers are thin: they authenticate, parse, and call the same
//! control-data functions the `tyr-server` admin subcommands call, which
//! write the audit log in the transaction of each change.

mod audit;
mod context;
mod daemons;
mod discovered;
mod error;
mod events;
mod extract;
mod limits;
mod openapi;
mod pagination;
mod policies;
mod serve;
mod session;
mod tokens;
mod users;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use context::{ApiContext, LOGIN_CHECKS, MAX_TAILS};
pub use error::ErrorBody;
pub use serve::{RestTls, serve};

/// Largest request body accepted (a policy document is at most 1 MiB of YAML).
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// The API's router and its OpenAPI document (the same routes, by construction).
pub fn router(ctx: ApiContext) -> (Router, utoipa::openapi::OpenApi) {
    let (router, api) = OpenApiRouter::<ApiContext>::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(session::login))
        .routes(routes!(session::whoami))
        .routes(routes!(session::ca_pem))
        .routes(routes!(openapi::document))
        .routes(routes!(daemons::list))
        .routes(routes!(daemons::show, daemons::delete))
        .routes(routes!(daemons::effective_policy))
        .routes(routes!(tokens::create, tokens::list))
        .routes(routes!(tokens::delete))
        .routes(routes!(policies::apply, policies::list))
        .routes(routes!(policies::check))
        .routes(routes!(policies::show, policies::delete))
        .routes(routes!(policies::history))
        .routes(routes!(policies::assign, policies::unassign, policies::list_assignments_of))
        .routes(routes!(policies::assignments))
        .routes(routes!(discovered::list))
        .routes(routes!(discovered::show))
        .routes(routes!(discovered::rename))
        .routes(routes!(discovered::merge))
        .routes(routes!(discovered::reclassify))
        .routes(routes!(discovered::promote))
        .routes(routes!(discovered::archive))
        .routes(routes!(events::query))
        .routes(routes!(events::count))
        .routes(routes!(events::stream))
        .routes(routes!(events::counts))
        .routes(routes!(events::top_resources))
        .routes(routes!(events::agent_types))
        .routes(routes!(events::summary))
        .routes(routes!(audit::list))
        .routes(routes!(users::create, users::list))
        .routes(routes!(users::disable))
        .split_for_parts();
    let json = Arc::new(serde_json::to_string(&api).unwrap_or_default());
    let router = router
        .fallback(error::no_such_route)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(limits::refuse_oversized))
        .layer(axum::Extension(openapi::Document(json)))
        .with_state(ctx);
    (router, api)
}
