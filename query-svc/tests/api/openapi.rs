//! `GET /openapi.json`: served without a token, valid OpenAPI 3.x by a real validator
//! (openapi-spec-validator, through `deploy/openapi/validate.py`), listing exactly the routes the
//! router serves, and with schemas that describe what those routes really answer.
//!
//! The validator lives in the virtualenv that `deploy/dev-deps.sh` makes; without it the test
//! fails (it never skips).

use std::{
    collections::BTreeSet,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{helpers::*, projection::until_projected};

const DOCUMENT: &str = "/openapi.json";
const BILLING: &str = "/api/v1/billing/";
const BEARER: &str = "bearer_jwt";

/// Every route query-svc serves, by method and path as the router writes it. A route added
/// without documentation, or documentation removed from a route, fails the test below.
const ROUTES: [(&str, &str); 20] = [
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/api/v1/billing/account"),
    ("GET", "/api/v1/billing/records"),
    ("GET", "/api/v1/billing/records/export"),
    ("GET", "/api/v1/billing/usage"),
    ("POST", "/api/v1/billing/recharge"),
    ("GET", "/api/v1/billing/recharge/orders"),
    ("GET", "/api/v1/billing/recharge/orders/{order_no}"),
    ("GET", "/api/v1/billing/alerts"),
    ("PUT", "/api/v1/billing/alerts"),
    ("PATCH", "/api/v1/billing/alerts"),
    ("GET", "/api/v1/billing/prices"),
    ("GET", "/api/v1/billing/limits"),
    ("PUT", "/api/v1/billing/limits"),
    ("GET", "/console"),
    ("GET", "/console/console.css"),
    ("GET", "/console/console.js"),
];

/// The methods probed on every path (HEAD is left out: axum answers it wherever GET is served).
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// The keys of an OpenAPI path item that are operations.
const OPERATIONS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

// --- helpers ----------------------------------------------------------------------------------

/// The virtualenv's python, found the way deploy/dev-deps.sh makes it: `$BILLING_DEPS_VENV`, else
/// `${XDG_CACHE_HOME:-$HOME/.cache}/billing-service/venv` (as shared/tests/deploy_manifests.rs).
fn venv_python() -> PathBuf {
    let non_empty = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
    let venv = match non_empty("BILLING_DEPS_VENV") {
        Some(dir) => PathBuf::from(dir),
        None => non_empty("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(non_empty("HOME").unwrap_or_else(|| "/tmp".into())).join(".cache")
            })
            .join("billing-service/venv"),
    };
    venv.join("bin/python")
}

/// `deploy/openapi/validate.py` on `document`: its exit code and what it printed.
fn validate(document: &Value) -> (Option<i32>, String) {
    let python = venv_python();
    assert!(
        python.exists(),
        "no virtualenv with openapi-spec-validator at {}: run deploy/dev-deps.sh",
        python.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/openapi/validate.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    child
        .stdin
        .take()
        .expect("a piped stdin")
        .write_all(document.to_string().as_bytes())
        .expect("the document is written to the validator");
    let output = child.wait_with_output().expect("the validator ends");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_ne!(
        output.status.code(),
        Some(2),
        "the validator cannot run: {printed}\nrun deploy/dev-deps.sh"
    );
    (output.status.code(), printed)
}

/// The document as the service serves it, asked for without a token.
async fn served_document(stack: &Stack) -> Value {
    let response = reqwest::get(stack.url(DOCUMENT)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    response.json().await.expect("the document is JSON")
}

/// The (method, path) of every operation the document lists.
fn documented_operations(document: &Value) -> BTreeSet<(String, String)> {
    let paths = document["paths"]
        .as_object()
        .expect("the document has paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            let item = item.as_object().expect("a path item is an object");
            item.keys()
                .filter(|key| OPERATIONS.contains(&key.as_str()))
                .map(move |method| (method.to_uppercase(), path.clone()))
        })
        .collect()
}

fn operation<'a>(document: &'a Value, method: &str, path: &str) -> &'a Value {
    let operation = &document["paths"][path][method.to_lowercase()];
    assert!(operation.is_object(), "{method} {path} is not documented");
    operation
}

/// A request of any method; its status, `error.code` (for an error of the contract's shape)
/// and body.
async fn call(
    stack: &Stack,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, Option<String>, String) {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = reqwest::Client::new().request(method.clone(), stack.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if method == Method::POST || method == Method::PUT {
        // Refused by validation, so probing writes nothing.
        request = request
            .header("content-type", "application/json")
            .body(r#"{"amount_micros": 0, "low_balance_threshold_micros": -1}"#);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    let code = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|json| json["error"]["code"].as_str().map(str::to_owned));
    (status, code, body)
}

/// A path of the document with its parameters filled in.
fn concrete(path: &str) -> String {
    path.replace("{order_no}", "RO-openapi-probe")
}

/// The JSON schema of an answer, as the document declares it for this operation and status.
fn answer_schema<'a>(document: &'a Value, method: &str, path: &str, status: u16) -> &'a Value {
    let response = &operation(document, method, path)["responses"][status.to_string()];
    assert!(
        response.is_object(),
        "{method} {path} does not document status {status}"
    );
    let schema = &response["content"]["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "{method} {path} {status} declares no JSON schema"
    );
    schema
}

/// `#/components/schemas/Name` followed, once or more.
fn resolve<'a>(document: &'a Value, mut schema: &'a Value) -> &'a Value {
    while let Some(reference) = schema["$ref"].as_str() {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("a reference outside the components: {reference}"));
        schema = &document["components"]["schemas"][name];
        assert!(schema.is_object(), "{reference} resolves to nothing");
    }
    schema
}

/// What in `value` the schema does not describe: an undeclared property, a missing required one,
/// a JSON type, format or value the schema does not allow. `at` is where `value` is.
fn mismatches(document: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    let schema = resolve(document, schema);
    let mut found = Vec::new();
    let types: Vec<&str> = match &schema["type"] {
        Value::String(one) => vec![one.as_str()],
        Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let allowed = types.contains(&kind) || (kind == "integer" && types.contains(&"number"));
    if !allowed {
        found.push(format!(
            "{at}: a {kind} ({value}) where the schema allows {types:?}"
        ));
        return found;
    }
    if let Some(values) = schema["enum"].as_array()
        && !values.contains(value)
    {
        found.push(format!("{at}: {value} is not one of {values:?}"));
    }
    match (schema["format"].as_str(), value) {
        (Some("int64"), Value::Number(n)) if n.as_i64().is_none() => {
            found.push(format!("{at}: {n} is not an int64"));
        }
        (Some("date-time"), Value::String(text))
            if chrono::DateTime::parse_from_rfc3339(text).is_err() =>
        {
            found.push(format!("{at}: {text:?} is not an RFC 3339 date-time"));
        }
        (Some("date"), Value::String(text))
            if chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").is_err() =>
        {
            found.push(format!("{at}: {text:?} is not a date"));
        }
        _ => {}
    }
    match value {
        // A map: every value by `additionalProperties`.
        Value::Object(fields)
            if schema["properties"].is_null() && schema["additionalProperties"].is_object() =>
        {
            for (name, field) in fields {
                let values = &schema["additionalProperties"];
                found.extend(mismatches(document, values, field, &format!("{at}.{name}")));
            }
        }
        Value::Object(fields) => {
            let Some(properties) = schema["properties"].as_object() else {
                found.push(format!(
                    "{at}: an object whose schema declares no properties"
                ));
                return found;
            };
            for (name, field) in fields {
                match properties.get(name) {
                    Some(property) => found.extend(mismatches(
                        document,
                        property,
                        field,
                        &format!("{at}.{name}"),
                    )),
                    None => found.push(format!("{at}.{name}: not declared in the schema")),
                }
            }
            for required in schema["required"].as_array().into_iter().flatten() {
                let required = required.as_str().unwrap_or_default();
                if !fields.contains_key(required) {
                    found.push(format!("{at}.{required}: required, not in the answer"));
                }
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                found.extend(mismatches(
                    document,
                    &schema["items"],
                    item,
                    &format!("{at}[{index}]"),
                ));
            }
        }
        _ => {}
    }
    found
}

/// Asserts that the document's schema for this operation and status describes `body`.
fn assert_conforms(document: &Value, method: &str, path: &str, status: StatusCode, body: &Value) {
    let schema = answer_schema(document, method, path, status.as_u16());
    let found = mismatches(document, schema, body, "$");
    assert!(
        found.is_empty(),
        "{method} {path} {status} does not match its schema:\n  {}\nanswer: {body}",
        found.join("\n  ")
    );
}

/// A GET with a token (or none) that must answer `expected`; the JSON body.
async fn get_json(stack: &Stack, path: &str, token: Option<&str>, expected: StatusCode) -> Value {
    let (status, _, body) = call(stack, "GET", path, token).await;
    assert_eq!(status, expected, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|_| panic!("GET {path} answers JSON: {body}"))
}

// --- the tests --------------------------------------------------------------------------------

#[tokio::test]
async fn the_served_document_is_valid_openapi_3_without_a_token() {
    let stack = spawn_stack().await;
    let document = served_document(&stack).await;
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.")),
        "{}",
        document["openapi"]
    );
    assert_eq!(
        document["info"]["title"],
        "DevShare billing service: query API"
    );
    assert_eq!(document["info"]["version"], env!("CARGO_PKG_VERSION"));
    // The document the router was built with is the one it serves.
    assert_eq!(
        document,
        serde_json::to_value(query_svc::api::openapi_document()).unwrap()
    );

    let (code, printed) = validate(&document);
    assert_eq!(
        code,
        Some(0),
        "deploy/openapi/validate.py refused the document:\n{printed}"
    );

    // The validator does look: a response without its description, a parameter in no place,
    // and a reference to nothing are refused.
    let mut broken = document.clone();
    broken["paths"]["/healthz"]["get"]["responses"]["200"]
        .as_object_mut()
        .unwrap()
        .remove("description");
    broken["paths"]["/api/v1/billing/records"]["get"]["parameters"][0]["in"] = json!("nowhere");
    let (code, printed) = validate(&broken);
    assert_eq!(code, Some(1), "{printed}");
    // jsonschema quotes names with ' or " depending on its version.
    let printed = printed.replace('"', "'");
    assert!(
        printed.contains("'description' is a required property"),
        "{printed}"
    );
    assert!(printed.contains("'nowhere' is not one of"), "{printed}");
    let mut dangling = document.clone();
    dangling["paths"]["/api/v1/billing/account"]["get"]["responses"]["200"]["content"]["application/json"]
        ["schema"] = json!({ "$ref": "#/components/schemas/Nothing" });
    let (code, printed) = validate(&dangling);
    assert_eq!(code, Some(1), "{printed}");
    assert!(printed.contains("/components/schemas/Nothing"), "{printed}");
    stack.cleanup().await;
}

#[tokio::test]
async fn the_document_lists_exactly_the_routes_the_router_serves() {
    let stack = spawn_stack().await;
    let document = served_document(&stack).await;
    let documented = documented_operations(&document);
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(method, path)| ((*method).to_owned(), (*path).to_owned()))
        .collect();
    assert_eq!(
        documented,
        expected,
        "documented but not expected: {:?}; expected but not documented: {:?}",
        documented.difference(&expected).collect::<Vec<_>>(),
        expected.difference(&documented).collect::<Vec<_>>()
    );

    let token = stack.token(&new_user(&stack.tag));
    for (method, path) in &documented {
        let billing = path.starts_with(BILLING);
        let target = concrete(path);
        // Served: an answer of the handler, never the router's own 404 or 405, and one the
        // document lists for this operation.
        let (status, code, body) = call(&stack, method, &target, Some(&token)).await;
        assert!(
            !(status == StatusCode::NOT_FOUND && code.as_deref() == Some("NOT_FOUND"))
                && status != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path} is documented but not served: {status} {body}"
        );
        let responses = &operation(&document, method, path)["responses"];
        assert!(
            responses[status.as_str()].is_object(),
            "{method} {path} answered {status}, which it does not document: {body}"
        );

        // The bearer JWT on the billing routes, and only there.
        let security = &operation(&document, method, path)["security"];
        if billing {
            assert_eq!(security, &json!([{ BEARER: [] }]), "{method} {path}");
            let (status, code, _) = call(&stack, method, &target, None).await;
            assert_eq!(
                (status, code.as_deref()),
                (StatusCode::UNAUTHORIZED, Some("UNAUTHENTICATED")),
                "{method} {path} without a token"
            );
            assert!(
                responses["401"].is_object(),
                "{method} {path} documents no 401"
            );
        } else {
            assert!(
                security.is_null(),
                "{method} {path} needs no token: {security}"
            );
        }

        // No method the document does not list is served on a documented path.
        for other in METHODS {
            if documented.contains(&(other.to_owned(), path.clone())) {
                continue;
            }
            let (status, code, body) = call(&stack, other, &target, Some(&token)).await;
            assert_eq!(
                (status, code.as_deref()),
                (StatusCode::METHOD_NOT_ALLOWED, Some("METHOD_NOT_ALLOWED")),
                "{other} {path} is served but not documented: {body}"
            );
        }
    }

    let scheme = &document["components"]["securitySchemes"][BEARER];
    assert_eq!(
        (&scheme["type"], &scheme["scheme"], &scheme["bearerFormat"]),
        (&json!("http"), &json!("bearer"), &json!("JWT"))
    );
    // A path outside the document is the router's own 404.
    for undocumented in [
        "/api/v1/billing/settings",
        "/openapi.yaml",
        "/api/v1/billing",
    ] {
        let (status, code, _) = call(&stack, "GET", undocumented, Some(&token)).await;
        assert_eq!(
            (status, code.as_deref()),
            (StatusCode::NOT_FOUND, Some("NOT_FOUND")),
            "{undocumented}"
        );
    }
    stack.cleanup().await;
}

#[tokio::test]
async fn the_schemas_describe_what_the_routes_answer() {
    let stack = spawn_stack().await;
    let document = served_document(&stack).await;
    let user = new_user(&stack.tag);
    let token = stack.token(&user);

    // A free grant, a paid recharge, a charge and a debit, projected.
    recharge(&stack, &user, 5 * CNY).await;
    stack
        .gateway()
        .await
        .deduct_quota(deduct(&user, 12 * CNY, "openapi-1"))
        .await
        .unwrap();
    stack
        .ops()
        .await
        .adjust_balance(adjust(&user, -CNY, "openapi-adj-1"))
        .await
        .unwrap();
    until_projected(&stack, &user, Duration::from_secs(20)).await;

    let account = "/api/v1/billing/account";
    let body = get_json(&stack, account, Some(&token), StatusCode::OK).await;
    assert!(body["updated_at"].is_string(), "{body}");
    assert_conforms(&document, "GET", account, StatusCode::OK, &body);
    let fresh = stack.token(&new_user(&stack.tag));
    let body = get_json(&stack, account, Some(&fresh), StatusCode::OK).await;
    assert!(body["updated_at"].is_null(), "{body}");
    assert_conforms(&document, "GET", account, StatusCode::OK, &body);

    let records = "/api/v1/billing/records";
    let (mut kinds, mut count) = (BTreeSet::new(), 0);
    let mut next = Some(String::new());
    while let Some(cursor) = next {
        let page = get_json(
            &stack,
            &format!("{records}?limit=2&cursor={cursor}"),
            Some(&token),
            StatusCode::OK,
        )
        .await;
        assert_conforms(&document, "GET", records, StatusCode::OK, &page);
        for record in page["records"].as_array().unwrap() {
            kinds.insert(record["type"].as_str().unwrap().to_owned());
            count += 1;
        }
        next = page["next_cursor"].as_str().map(str::to_owned);
    }
    assert_eq!(
        kinds,
        ["adjust", "deduct", "free_grant", "recharge"]
            .map(str::to_owned)
            .into()
    );

    let (status, _, body) = call(&stack, "POST", "/api/v1/billing/recharge", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_conforms(&document, "POST", "/api/v1/billing/recharge", status, &body);
    let (status, created) = crate::support::post_json(
        &stack,
        "/api/v1/billing/recharge",
        &token,
        &json!({ "amount_micros": 2 * CNY, "channel": "alipay", "idempotency_key": "openapi-k" }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_conforms(
        &document,
        "POST",
        "/api/v1/billing/recharge",
        status,
        &created,
    );

    let orders = "/api/v1/billing/recharge/orders";
    let page = stack
        .eventually(Duration::from_secs(20), || async {
            let page = get_json(&stack, orders, Some(&token), StatusCode::OK).await;
            (page["orders"].as_array().map_or(0, Vec::len) == 2).then_some(page)
        })
        .await;
    assert_conforms(&document, "GET", orders, StatusCode::OK, &page);
    let one = "/api/v1/billing/recharge/orders/{order_no}";
    for order in page["orders"].as_array().unwrap() {
        let order_no = order["order_no"].as_str().unwrap();
        let body = get_json(
            &stack,
            &format!("{orders}/{order_no}"),
            Some(&token),
            StatusCode::OK,
        )
        .await;
        assert_conforms(&document, "GET", one, StatusCode::OK, &body);
    }
    let body = get_json(
        &stack,
        &format!("{orders}/RO-nobody"),
        Some(&token),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_conforms(&document, "GET", one, StatusCode::NOT_FOUND, &body);

    let usage = "/api/v1/billing/usage";
    for query in ["", "?group_by=api"] {
        let body = get_json(
            &stack,
            &format!("{usage}{query}"),
            Some(&token),
            StatusCode::OK,
        )
        .await;
        assert_eq!(body["buckets"].as_array().map(Vec::len), Some(1), "{body}");
        assert_conforms(&document, "GET", usage, StatusCode::OK, &body);
    }
    // A version scheduled ahead, so the scheduled ones are checked too.
    let in_an_hour = chrono::Utc::now() + chrono::TimeDelta::hours(1);
    stack
        .ops()
        .await
        .publish_price_list(shared::proto::v1::PublishPriceListRequest {
            name: "default".into(),
            effective_from_ms: in_an_hour.timestamp_millis(),
            prices: vec![shared::proto::v1::Price {
                api_id: "api.test".into(),
                meter: "call".into(),
                price_micros: 1_000,
                per_units: 1,
            }],
            publish_id: "schema".into(),
            actor: "test".into(),
        })
        .await
        .unwrap();
    let prices = "/api/v1/billing/prices";
    let body = get_json(&stack, prices, Some(&token), StatusCode::OK).await;
    assert_eq!(
        body["scheduled"].as_array().map(Vec::len),
        Some(1),
        "{body}"
    );
    assert_conforms(&document, "GET", prices, StatusCode::OK, &body);
    let limits = "/api/v1/billing/limits";
    stack
        .ops()
        .await
        .set_spend_limits(shared::proto::v1::SetSpendLimitsRequest {
            user_id: user.clone(),
            limits: vec![shared::proto::v1::SpendLimit {
                scope: "account".into(),
                window: "day".into(),
                limit_micros: 5_000_000,
            }],
            actor: "test".into(),
            set_id: String::new(),
        })
        .await
        .unwrap();
    let body = get_json(&stack, limits, Some(&token), StatusCode::OK).await;
    assert_eq!(body["limits"].as_array().map(Vec::len), Some(1), "{body}");
    assert_conforms(&document, "GET", limits, StatusCode::OK, &body);
    let body = get_json(
        &stack,
        &format!("{usage}?group_by=week"),
        Some(&token),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_conforms(&document, "GET", usage, StatusCode::BAD_REQUEST, &body);
    let body = get_json(
        &stack,
        &format!("{records}?limit=0"),
        Some(&token),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_conforms(&document, "GET", records, StatusCode::BAD_REQUEST, &body);
    let body = get_json(&stack, account, None, StatusCode::UNAUTHORIZED).await;
    assert_conforms(&document, "GET", account, StatusCode::UNAUTHORIZED, &body);

    for probe in ["/healthz", "/readyz"] {
        let body = get_json(&stack, probe, None, StatusCode::OK).await;
        assert_conforms(&document, "GET", probe, StatusCode::OK, &body);
    }
    let (status, _, csv) = call(
        &stack,
        "GET",
        "/api/v1/billing/records/export",
        Some(&token),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let export = &operation(&document, "GET", "/api/v1/billing/records/export")["responses"]["200"];
    assert!(export["content"]["text/csv"].is_object(), "{export}");
    assert_eq!(
        csv.lines().count(),
        1 + count,
        "a header and every record: {csv}"
    );

    // The contract writes every field of these, `null` or not; every amount is an int64.
    let schemas = document["components"]["schemas"].as_object().unwrap();
    for name in [
        "Account",
        "FreeQuota",
        "Record",
        "RecordsPage",
        "Order",
        "OrdersPage",
    ] {
        let schema = &schemas[name];
        let declared: BTreeSet<&str> = schema["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{name} declares no properties"))
            .keys()
            .map(String::as_str)
            .collect();
        let required: BTreeSet<&str> = schema["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(declared, required, "{name}: every property is required");
    }
    for (name, schema) in schemas {
        for (property, field) in schema["properties"].as_object().into_iter().flatten() {
            if property.ends_with("_micros") {
                assert_eq!(
                    (&field["type"], &field["format"]),
                    (&json!("integer"), &json!("int64")),
                    "{name}.{property}"
                );
            }
        }
    }
    stack.cleanup().await;
}

/// What the property-based tester finds: schemathesis (pinned in the virtualenv
/// `deploy/dev-deps.sh` makes) against a stack seeded with a recharge and charges, with every
/// check and every phase (examples, coverage, fuzzing, and the stateful phase that follows the
/// document's links), on a fixed seed. Each finding (a request valid by the document refused, a
/// request it forbids accepted, an answer unlike its schema, a server error) fails the test.
#[tokio::test]
async fn the_server_accepts_exactly_what_the_document_says() {
    let schemathesis = venv_python().with_file_name("schemathesis");
    assert!(
        schemathesis.exists(),
        "no schemathesis at {}: run deploy/dev-deps.sh --test-tools",
        schemathesis.display()
    );
    let stack = spawn_stack().await;
    let user = new_user("contract");
    recharge(&stack, &user, 20 * CNY).await;
    let mut gateway = stack.gateway().await;
    for i in 0..5 {
        gateway
            .deduct_quota(deduct(&user, 150_000, &format!("contract-{i}")))
            .await
            .unwrap();
    }
    until_projected(&stack, &user, Duration::from_secs(20)).await;

    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/openapi/schemathesis.toml");
    // schemathesis keeps a cache of what it found in its working directory: a fresh one per run
    // keeps runs independent and the checkout clean.
    let workdir = std::env::temp_dir().join(format!("billing-schemathesis-{}", stack.tag));
    std::fs::create_dir_all(&workdir).unwrap();
    let run = tokio::process::Command::new(&schemathesis)
        .current_dir(&workdir)
        .arg("--no-color")
        .arg("--config-file")
        .arg(&config)
        .args(["run", &stack.url(DOCUMENT)])
        .args([
            "--header",
            &format!("Authorization: Bearer {}", stack.token(&user)),
        ])
        .args([
            "--checks",
            "all",
            "--seed",
            "20261204",
            "--max-examples",
            "40",
        ])
        // One worker: hypothesis describes its strategies by parsing source with `ast`, which
        // Python 3.11 does not guard across threads ("AST constructor recursion depth
        // mismatch", a crash of the tool, not a finding).
        .args(["--workers", "1", "--generation-database", "none"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("schemathesis finishes within ten minutes")
        .expect("schemathesis runs");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && printed.contains("No issues found"),
        "schemathesis found mismatches ({}):\n{printed}",
        output.status
    );
    let _ = std::fs::remove_dir_all(&workdir);
    for phase in ["Examples", "Coverage", "Fuzzing", "Stateful"] {
        assert!(
            printed.contains(&format!("✅ {phase}")),
            "the {phase} phase did not run and pass:\n{printed}"
        );
    }
    stack.cleanup().await;
}
