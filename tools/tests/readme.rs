//! The README kept honest: its examples and tables are checked against the code, so that the next
//! drift between them fails here.
//! - every `grpcurl` call names an RPC the service has, with request fields its message has, and
//!   a development token of a caller that may call it;
//! - every `curl` call names a route the services serve, with that route's method and documented
//!   query parameters;
//! - every reason or code in capitals the README names is one the code answers (or a status,
//!   outcome or enum value the contract has);
//! - the configuration table names every key the settings have.

use std::{collections::BTreeSet, path::Path};

use prost::Message;
use serde_json::Value;

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap()
}

fn source(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)).unwrap()
}

/// The commands of the README's `bash` blocks, continuation lines joined, comments dropped.
fn shell_commands(text: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut in_bash = false;
    let mut pending = String::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_bash = !in_bash && line.trim() == "```bash";
            continue;
        }
        if !in_bash {
            continue;
        }
        let line = line.trim_end();
        if let Some(continued) = line.strip_suffix('\\') {
            pending.push_str(continued);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let command = std::mem::take(&mut pending);
        if !command.trim().is_empty() && !command.trim_start().starts_with('#') {
            commands.extend(substitutions(&command));
            commands.push(command);
        }
    }
    commands
}

/// The commands inside `$(…)` of a command line (`ORDER=$(grpcurl … | sed …)`).
fn substitutions(command: &str) -> Vec<String> {
    let mut inner = Vec::new();
    let mut rest = command;
    while let Some(start) = rest.find("$(") {
        let mut depth = 0;
        let body = &rest[start + 1..];
        let end = body
            .char_indices()
            .find(|(_, c)| {
                depth += i32::from(*c == '(') - i32::from(*c == ')');
                depth == 0
            })
            .map_or(body.len(), |(i, _)| i);
        inner.push(body[1..end].to_owned());
        rest = &body[end..];
    }
    inner
}

/// A command line split into words as the shell would: quotes removed, `$VAR`, `${VAR}` and
/// `$(…)` replaced by `X`, a comment ended.
fn words(command: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut started = false;
    let mut chars = command.chars().peekable();
    let (mut single, mut double) = (false, false);
    while let Some(c) = chars.next() {
        match c {
            '\'' if !double => {
                single = !single;
                started = true;
            }
            '"' if !single => {
                double = !double;
                started = true;
            }
            '$' if !single => {
                started = true;
                word.push('X');
                match chars.peek() {
                    Some('(') => {
                        let mut depth = 0;
                        for c in chars.by_ref() {
                            depth += i32::from(c == '(') - i32::from(c == ')');
                            if depth == 0 {
                                break;
                            }
                        }
                    }
                    Some('{') => {
                        for c in chars.by_ref() {
                            if c == '}' {
                                break;
                            }
                        }
                    }
                    _ => {
                        while chars
                            .peek()
                            .is_some_and(|c| c.is_alphanumeric() || *c == '_')
                        {
                            chars.next();
                        }
                    }
                }
            }
            '#' if !single && !double && !started => break,
            c if c.is_whitespace() && !single && !double => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            c => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(word);
    }
    words
}

/// The message types of the gRPC API, from its descriptor set: name → field names.
fn messages() -> std::collections::BTreeMap<String, BTreeSet<String>> {
    let set =
        prost_types::FileDescriptorSet::decode(shared::proto::v1::FILE_DESCRIPTOR_SET).unwrap();
    set.file
        .iter()
        .flat_map(|file| {
            file.message_type.iter().map(move |message| {
                (
                    format!(".{}.{}", file.package(), message.name()),
                    message
                        .field
                        .iter()
                        .map(|field| field.name().to_owned())
                        .collect(),
                )
            })
        })
        .collect()
}

/// The RPCs: method path → (input type, output type).
fn rpcs() -> std::collections::BTreeMap<String, String> {
    let set =
        prost_types::FileDescriptorSet::decode(shared::proto::v1::FILE_DESCRIPTOR_SET).unwrap();
    let mut rpcs = std::collections::BTreeMap::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                rpcs.insert(
                    format!("{}.{}/{}", file.package(), service.name(), method.name()),
                    method.input_type().to_owned(),
                );
            }
        }
    }
    rpcs
}

/// The development callers' tokens and the scopes each holds.
fn dev_tokens() -> Vec<(String, Vec<String>)> {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/config.yaml");
    let settings = shared::config::Settings::load_with_env(&config, Some(Default::default()))
        .expect("the repository configuration loads");
    settings
        .auth
        .callers
        .iter()
        .map(|caller| {
            let scopes = caller
                .scopes
                .iter()
                .map(|scope| format!("{scope:?}").to_lowercase())
                .collect();
            (caller.token.expose().to_owned(), scopes)
        })
        .collect()
}

/// The scope each RPC needs, from the proto's comments (`Scope: quota.`, `Scopes: orders, admin.`).
fn scopes_in_proto() -> std::collections::BTreeMap<String, Vec<String>> {
    let proto = source("proto/billing/v1/billing.proto");
    let mut scopes = std::collections::BTreeMap::new();
    let mut comment = String::new();
    for line in proto.lines() {
        let line = line.trim();
        if let Some(text) = line.strip_prefix("//") {
            comment.push_str(text);
            comment.push(' ');
        } else if let Some(rest) = line.strip_prefix("rpc ") {
            let name = rest.split('(').next().unwrap().trim().to_owned();
            let named: Vec<String> = comment
                .split("Scope")
                .nth(1)
                .map(|text| {
                    text.trim_start_matches('s')
                        .trim_start_matches(':')
                        .split('.')
                        .next()
                        .unwrap_or_default()
                        .split(',')
                        .map(|scope| scope.trim().to_owned())
                        .filter(|scope| !scope.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            scopes.insert(name, named);
            comment.clear();
        } else {
            comment.clear();
        }
    }
    scopes
}

#[test]
fn every_grpcurl_example_names_an_rpc_its_fields_and_a_caller_that_may_call_it() {
    let (rpcs, messages, tokens, scopes) = (rpcs(), messages(), dev_tokens(), scopes_in_proto());
    let mut checked = 0;
    let mut wrong = Vec::new();
    for command in shell_commands(&readme()) {
        let words = words(&command);
        if words.first().map(String::as_str) != Some("grpcurl") {
            continue;
        }
        let Some(method) = words.iter().find(|word| word.starts_with("billing.v1.")) else {
            continue;
        };
        checked += 1;
        let Some(input) = rpcs.get(method.as_str()) else {
            wrong.push(format!("{method}: no such RPC"));
            continue;
        };
        if let Some(data) = words.iter().position(|w| w == "-d").map(|i| &words[i + 1]) {
            match serde_json::from_str::<Value>(data) {
                Ok(Value::Object(fields)) => {
                    for field in fields.keys() {
                        if !messages[input].contains(field) {
                            wrong.push(format!("{method}: {input} has no field {field}"));
                        }
                    }
                }
                _ => wrong.push(format!(
                    "{method}: the request is not a JSON object: {data}"
                )),
            }
        }
        let name = method.rsplit('/').next().unwrap();
        let needed = &scopes[name];
        let token = words
            .iter()
            .find_map(|word| word.strip_prefix("authorization: Bearer "));
        match token.and_then(|token| tokens.iter().find(|(t, _)| t == token)) {
            Some((_, held)) if needed.is_empty() || held.iter().any(|s| needed.contains(s)) => {}
            Some((token, held)) => wrong.push(format!(
                "{method}: {token} holds {held:?}, the RPC needs one of {needed:?}"
            )),
            None => wrong.push(format!("{method}: no development caller's token")),
        }
    }
    assert!(checked >= 5, "the README shows gRPC calls: {checked}");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn every_curl_example_names_a_route_its_method_and_its_parameters() {
    let document: Value = query_svc::api::openapi_document();
    let paths = document["paths"].as_object().unwrap();
    // command-svc's own routes on its HTTP port.
    let command_routes = [
        "POST /api/v1/billing/recharge/callback",
        "GET /healthz",
        "GET /readyz",
    ];
    let mut checked = 0;
    let mut wrong = Vec::new();
    for command in shell_commands(&readme()) {
        let words = words(&command);
        let Some(curl) = words.iter().position(|word| word == "curl") else {
            continue;
        };
        let words = &words[curl..];
        let Some(url) = words.iter().find(|word| word.starts_with("http://")) else {
            continue;
        };
        checked += 1;
        let method = match words.iter().position(|w| w == "-X") {
            Some(i) => words[i + 1].clone(),
            None if words.iter().any(|w| w == "-d" || w.starts_with("--data")) => "POST".into(),
            None => "GET".into(),
        };
        let rest = url.trim_start_matches("http://");
        let (host, path_and_query) = rest.split_once('/').unwrap_or((rest, ""));
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let path = format!("/{path}");
        if host.ends_with(":8081") {
            if !command_routes.contains(&format!("{method} {path}").as_str()) {
                wrong.push(format!("{method} {path}: not a route of command-svc"));
            }
            continue;
        }
        // The OpenAPI path whose template matches (a segment in braces matches any one).
        let template = paths.keys().find(|template| {
            let (a, b): (Vec<&str>, Vec<&str>) =
                (template.split('/').collect(), path.split('/').collect());
            a.len() == b.len()
                && a.iter()
                    .zip(&b)
                    .all(|(t, p)| t == p || (t.starts_with('{') && !p.is_empty()))
        });
        let Some(template) = template else {
            wrong.push(format!("{method} {path}: no such route of query-svc"));
            continue;
        };
        let operation = &paths[template][method.to_lowercase()];
        if operation.is_null() {
            wrong.push(format!("{method} {path}: the route does not take {method}"));
            continue;
        }
        let documented: BTreeSet<&str> = operation["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|parameter| parameter["in"] == "query")
            .filter_map(|parameter| parameter["name"].as_str())
            .collect();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let name = pair.split('=').next().unwrap();
            if !documented.contains(name) {
                wrong.push(format!("{method} {path}: no query parameter {name}"));
            }
        }
    }
    assert!(checked >= 5, "the README shows REST calls: {checked}");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Every string constant in capitals of a source file: the reasons and codes it answers.
fn capital_constants(path: &str) -> BTreeSet<String> {
    source(path)
        .lines()
        .filter_map(|line| {
            let (_, value) = line.split_once(": &str = \"")?;
            let value = value.split('"').next()?;
            value
                .chars()
                .all(|c| c.is_ascii_uppercase() || c == '_')
                .then(|| value.to_owned())
        })
        .collect()
}

#[test]
fn every_reason_and_code_the_readme_names_is_one_the_code_has() {
    let mut known: BTreeSet<String> = BTreeSet::new();
    known.extend(capital_constants("command-svc/src/api/error.rs"));
    known.extend(capital_constants("query-svc/src/api/error.rs"));
    known.extend(capital_constants("shared/src/listener.rs"));
    // The gRPC status codes.
    known.extend(
        [
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        ]
        .map(str::to_owned),
    );
    // The enum values of the contract, and their short forms (`PAID`, `CREDITED`).
    let set =
        prost_types::FileDescriptorSet::decode(shared::proto::v1::FILE_DESCRIPTOR_SET).unwrap();
    for file in &set.file {
        for enumeration in &file.enum_type {
            for value in &enumeration.value {
                let name = value.name().to_owned();
                for prefix in ["ORDER_STATUS_", "CALLBACK_OUTCOME_"] {
                    if let Some(short) = name.strip_prefix(prefix) {
                        known.insert(short.to_owned());
                    }
                }
                known.insert(name);
            }
        }
    }
    // Names that are not reasons: streams, currencies, algorithms, placeholders, variables,
    // HTTP methods and frames, log levels, the health service's statuses.
    let other = |word: &str| {
        word.starts_with("BILLING")
            || word.ends_with("_PROXY")
            || [
                "GET",
                "POST",
                "PUT",
                "PATCH",
                "DELETE",
                "HEAD",
                "GOAWAY",
                "ERROR",
                "WARN",
                "INFO",
                "DEBUG",
                "TRACE",
                "SERVING",
                "NOT_SERVING",
                "__",
            ]
            .contains(&word)
            || word.starts_with("REPLACE_ME")
            || word.starts_with("RUST_")
            || word.starts_with("XDG_")
            || [
                "CNY", "HS256", "HS512", "JWT", "UTC", "TMPDIR", "HOME", "PATH", "CONFIG", "U", "R",
            ]
            .contains(&word)
            || word.starts_with("MYSQL")
            || word.starts_with("READY_")
            || word.starts_with("STOP_")
            || word.starts_with("TEST_")
    };
    let mut unknown = BTreeSet::new();
    let text = readme();
    for quoted in text.split('`').skip(1).step_by(2) {
        let is_capitals = quoted.len() >= 2
            && quoted
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if is_capitals && !known.contains(quoted) && !other(quoted) {
            unknown.insert(quoted.to_owned());
        }
    }
    assert!(
        unknown.is_empty(),
        "the README names reasons or codes the code does not have: {unknown:?}"
    );
}

#[test]
fn the_configuration_table_names_every_key() {
    let text = readme();
    let table: Vec<&str> = text
        .lines()
        .skip_while(|line| !line.starts_with("| section | keys (defaults) |"))
        .take_while(|line| line.starts_with('|'))
        .collect();
    assert!(table.len() > 10, "the README's configuration table");
    let mut missing = Vec::new();
    for key in shared::config::key_paths() {
        let (section, rest) = key.split_once('.').unwrap_or(("(top level)", key.as_str()));
        let row = table.iter().find(|row| {
            let first = row.split('|').nth(1).unwrap_or_default().trim();
            first == format!("`{section}`") || first == section
        });
        // Nested keys (`group_commit.max_batch`) are named by their last part.
        let name = rest.rsplit('.').next().unwrap();
        if !row.is_some_and(|row| row.contains(&format!("`{name}`"))) {
            missing.push(key);
        }
    }
    assert!(
        missing.is_empty(),
        "keys the README's configuration table does not name: {missing:?}"
    );
}
