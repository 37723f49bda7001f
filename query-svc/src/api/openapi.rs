//! `GET /openapi.json`: the OpenAPI 3.1 document of this API, generated from the code.
//!
//! Every route is registered through `utoipa_axum`'s `routes!`, which takes the method and path
//! from the handler's `#[utoipa::path]` attribute: the router serves exactly the operations the
//! document describes, so the two cannot drift apart. The schemas come from the very structs the
//! handlers serialize. The document is built once, when the router is, and served as is, without
//! a token; it lists itself.

use axum::{
    Extension,
    body::Bytes,
    http::header,
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use super::cursor;
use shared::ids::{Channel, OrderNo, WebhookUrl};
use utoipa::{
    Modify, OpenApi,
    openapi::{
        self, RefOr, Type,
        schema::{ObjectBuilder, Schema},
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

/// Where the document is served.
pub const PATH: &str = "/openapi.json";
/// The name of the bearer JWT scheme in the document's security schemes (the handlers'
/// `security(...)` attributes must repeat it as a literal).
pub const BEARER: &str = "bearer_jwt";
/// The tag of the frontend's routes.
pub const BILLING_TAG: &str = "billing";
/// The tag of the probes, the metrics and this document.
pub const OPERATIONS_TAG: &str = "operations";
/// The tag of the developer console's page and files.
pub const CONSOLE_TAG: &str = "console";

/// What the document says beside its paths; the paths and schemas are added route by route.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "DevShare billing service: query API",
        version = env!("CARGO_PKG_VERSION"),
        description = "The frontend's REST API of the billing service's read side. JSON in \
            snake_case; amounts are integers in micros (int64); instants are RFC 3339 in UTC. \
            Every error, an unknown route (404 NOT_FOUND) and a wrong method (405 \
            METHOD_NOT_ALLOWED) included, has the body {\"error\": {\"code\", \"message\"}}."
    ),
    modifiers(&BearerJwt),
    tags(
        (name = BILLING_TAG, description = "The caller's account, records, usage and recharge \
            orders; each needs a bearer JWT whose subject is the user."),
        (name = OPERATIONS_TAG, description = "Probes, metrics and this document; no token."),
        (name = CONSOLE_TAG, description = "The developer console (HTML, CSS, JavaScript); no \
            token: the page asks for the developer's JWT and calls the billing routes with it."),
    )
)]
pub struct ApiDoc;

/// Declares the HS256 bearer JWT that every `/api/v1/billing/*` operation names.
struct BearerJwt;

impl Modify for BearerJwt {
    fn modify(&self, openapi: &mut openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "HS256, signed with auth.jwt_secret (or a previous secret); claims sub \
                         (the user id) and exp required",
                    ))
                    .build(),
            ),
        );
    }
}

/// The serialized document, shared by every request.
#[derive(Clone)]
pub struct Document(Bytes);

impl Document {
    pub fn new(api: &Value) -> Document {
        let json = serde_json::to_vec(api).expect("an OpenAPI document serializes");
        Document(Bytes::from(json))
    }
}

/// This document: the routes below, with their parameters, bodies, answers and errors.
#[utoipa::path(
    get,
    path = PATH,
    operation_id = "openapi",
    tag = OPERATIONS_TAG,
    responses(
        (status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json",
            body = Object),
    )
)]
pub(super) async fn document(Extension(Document(json)): Extension<Document>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], json).into_response()
}

/// A string schema whose values are `values`, for the enums the code writes as text.
pub(super) fn string_enum(values: impl IntoIterator<Item = &'static str>) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values))
        .into()
}

/// The patterns of the parameters and fields whose rules live in code (an attribute takes only
/// a literal), by path, location and name: the document states each rule from its one place.
const PARAMETER_PATTERNS: [(&str, &str, &str, &str); 3] = [
    (
        "/api/v1/billing/records",
        "query",
        "cursor",
        cursor::RECORDS_PATTERN,
    ),
    (
        "/api/v1/billing/recharge/orders",
        "query",
        "cursor",
        cursor::ORDERS_PATTERN,
    ),
    (
        "/api/v1/billing/recharge/orders/{order_no}",
        "path",
        "order_no",
        OrderNo::PATTERN,
    ),
];

/// The document as the server accepts requests, exactly: the patterns of
/// [`PARAMETER_PATTERNS`] and of [`property_patterns`], and an
/// empty value for every optional query parameter, which the server takes as absent.
pub fn exact(api: openapi::OpenApi) -> Value {
    let mut json = serde_json::to_value(&api).expect("an OpenAPI document serializes");
    for (path, location, name, pattern) in PARAMETER_PATTERNS {
        for parameter in parameters_mut(&mut json, path) {
            if parameter["in"] == location && parameter["name"] == name {
                let schema = &mut parameter["schema"];
                if let Some(schema) = schema.as_object_mut() {
                    schema.remove("minLength");
                    schema.remove("maxLength");
                }
                schema["pattern"] = Value::from(pattern);
            }
        }
    }
    if let Some(schemas) = json["components"]["schemas"].as_object_mut() {
        for (name, schema) in schemas.iter_mut() {
            for (property, pattern) in property_patterns(name) {
                let properties = schema.get_mut("properties");
                if let Some(field) = properties.and_then(|p| p.get_mut(property)) {
                    field["pattern"] = Value::from(pattern);
                }
            }
        }
    }
    let paths: Vec<String> = json["paths"]
        .as_object()
        .map(|paths| paths.keys().cloned().collect())
        .unwrap_or_default();
    for path in paths {
        for parameter in parameters_mut(&mut json, &path) {
            if parameter["in"] == "query" && parameter["required"] != true {
                let schema = parameter["schema"].take();
                parameter["schema"] =
                    json!({ "anyOf": [schema, { "type": "string", "maxLength": 0 }] });
            }
        }
    }
    json
}

/// The patterns of the fields of the component schema `name` whose rules live in code.
fn property_patterns(name: &str) -> Vec<(&'static str, &'static str)> {
    let mut patterns = vec![("webhook_url", WebhookUrl::PATTERN)];
    if name == "RechargeRequest" {
        patterns.push(("channel", Channel::PATTERN));
    }
    if name == "SpendLimitRequest" {
        patterns.push(("scope", shared::limits::Scope::PATTERN));
        patterns.push(("window", shared::limits::Window::PATTERN));
    }
    patterns
}

/// The parameters of every operation of `path`.
fn parameters_mut<'j>(json: &'j mut Value, path: &str) -> impl Iterator<Item = &'j mut Value> {
    json["paths"][path]
        .as_object_mut()
        .into_iter()
        .flat_map(|item| item.values_mut())
        .filter_map(|operation| operation.get_mut("parameters")?.as_array_mut())
        .flatten()
}
