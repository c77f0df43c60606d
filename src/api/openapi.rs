//! The OpenAPI document of the HTTP API, generated: each handler's
//! `#[utoipa::path]` gives its operation, the request and response types
//! (`ToSchema`) give the schemas. `schemas/openapi.json` is this document as
//! `orderlog openapi` prints it; a test keeps the two equal and keeps the
//! documented operations equal to [`super::routes`].
//!
//! Never here: a route (they are declared in [`super::routes`] only) or a
//! rule of the API (the handlers and the domain hold those; the document
//! describes them).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::ErrorBody;
use super::{ops, orders, subjects, views};

/// The API's own version, which `info.version` states (not the crate's).
const API_VERSION: &str = "1.0.0";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "orderlog command API",
        version = API_VERSION,
        description = "Event-sourced orders with encrypted personal data. Every write is \
            answered only after Kafka acknowledged its events. Authentication: \
            `Authorization: Bearer <token>`; roles in brackets in each summary."
    ),
    // In the order of `super::routes`.
    paths(
        orders::place_order,
        orders::get_order,
        orders::share_order,
        orders::cancel_order,
        orders::erase_order,
        orders::hold_order,
        orders::release_hold,
        orders::erasure_status,
        subjects::search,
        subjects::export,
        subjects::erase,
        ops::cluster,
        views::shipping_feed,
        views::shipping_order,
        views::merchant_feed,
        views::merchant_order,
        ops::healthz,
        ops::readyz,
        ops::metrics,
    ),
    // `Error` is referred to by the `Error` response only, which names it.
    components(schemas(ErrorBody), responses(ErrorBody)),
    modifiers(&Bearer, &OptionalEraseBody),
    security(("bearer" = []))
)]
struct ApiDoc;

/// The `bearer` scheme every operation but the operational ones requires.
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
    }
}

/// The body of `POST /v1/orders/{id}/erase` may be left out (the whole
/// order), but not be `null`: utoipa spells an optional body only as an
/// `Option`, which 3.1 also makes nullable, so the body is declared required
/// in the handler's attribute and made optional here.
struct OptionalEraseBody;

impl Modify for OptionalEraseBody {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let body = doc
            .paths
            .paths
            .get_mut("/v1/orders/{id}/erase")
            .and_then(|item| item.post.as_mut())
            .and_then(|op| op.request_body.as_mut());
        match body {
            Some(utoipa::openapi::RefOr::T(body)) => {
                body.required = Some(utoipa::openapi::Required::False)
            }
            _ => panic!("POST /v1/orders/{{id}}/erase is documented with an inline body"),
        }
    }
}

/// The OpenAPI document of the HTTP API.
///
/// Descriptions from wrapped doc comments keep their line breaks; in
/// CommonMark, which OpenAPI descriptions are, a single line break is a
/// space.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// [`document`] as `orderlog openapi` prints it and `schemas/openapi.json`
/// holds it: pretty JSON and a final newline.
pub fn document_json() -> String {
    let mut text = document()
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    text.push('\n');
    text
}
