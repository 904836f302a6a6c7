//! The OpenAPI 3 document: its frame (title, bearer security scheme) here;
//! its paths come from the handlers' `#[utoipa::path]` attributes as the
//! router is built, so the document and the router cannot diverge.

use std::sync::Arc;

use axum::Extension;
use axum::http::header;
use axum::response::IntoResponse;
use utoipa::Modify;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

/// The frame of the document.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    info(title = "Tyr REST API", version = "1", description = "Operate a Tyr fleet: daemons, enrollment, policies, discovered AI agents, events, drift and the audit log."),
    modifiers(&BearerAuth),
    // Types used only in query parameters are not collected from the
    // handlers: they are named here.
    components(schemas(
        super::error::ErrorBody,
        crate::event_query::analytics::Bucket,
        crate::control_db::discovered::AgentState,
    )),
)]
pub struct ApiDoc;

/// Declares the `bearer` security scheme (a JWT from `POST /api/v1/login`).
#[derive(Debug)]
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}

/// The serialized document, shared by the handler.
#[derive(Debug, Clone)]
pub struct Document(pub Arc<String>);

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3 document of this API", content_type = "application/json")))]
pub async fn document(Extension(document): Extension<Document>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], document.0.as_str().to_owned())
}
