//! Internal callers authenticate with bearer tokens; each token carries scopes (ARCHITECTURE.md):
//! `quota` for the gateway, `orders` for query-svc, `payment` for the payment service and
//! `admin`, which may do everything, for operators.

use std::{collections::HashMap, sync::Arc};

use shared::config::{CallerSettings, Scope};
use tonic::{Request, Status};

use super::error::{REASON_SCOPE, REASON_UNAUTHENTICATED, status_with_reason};

/// A configured caller, attached to each authenticated request.
#[derive(Debug)]
pub struct Caller {
    pub name: String,
    scopes: Vec<Scope>,
}

impl Caller {
    pub fn may(&self, scope: Scope) -> bool {
        self.scopes
            .iter()
            .any(|granted| *granted == scope || *granted == Scope::Admin)
    }
}

/// The token table, shared by every connection.
#[derive(Clone, Debug)]
pub struct Callers(Arc<HashMap<String, Arc<Caller>>>);

impl Callers {
    pub fn new(settings: &[CallerSettings]) -> Self {
        let table = settings
            .iter()
            .map(|caller| {
                let entry = Caller {
                    name: caller.name.clone(),
                    scopes: caller.scopes.clone(),
                };
                (caller.token.expose().to_owned(), Arc::new(entry))
            })
            .collect();
        Callers(Arc::new(table))
    }

    /// The interceptor: a request without a known bearer token stops here.
    pub fn authenticate(&self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim);
        let caller = token
            .and_then(|token| self.0.get(token))
            .cloned()
            .ok_or_else(|| {
                status_with_reason(
                    tonic::Code::Unauthenticated,
                    "a known bearer token is required in the authorization metadata",
                    REASON_UNAUTHENTICATED,
                )
            })?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// Lets the call through when its caller holds one of `scopes`.
pub fn require<T>(request: &Request<T>, scopes: &[Scope]) -> Result<(), Status> {
    let caller = request.extensions().get::<Arc<Caller>>();
    match caller {
        Some(caller) if scopes.iter().any(|scope| caller.may(*scope)) => Ok(()),
        Some(caller) => Err(status_with_reason(
            tonic::Code::PermissionDenied,
            format!("caller {} may not call this method", caller.name),
            REASON_SCOPE,
        )),
        None => Err(status_with_reason(
            tonic::Code::Unauthenticated,
            "a known bearer token is required in the authorization metadata",
            REASON_UNAUTHENTICATED,
        )),
    }
}
