//! Shared-secret authentication for every gRPC service.

use std::sync::Arc;

use tonic::metadata::MetadataValue;
use tonic::{Request, Status};

/// Compares without an early exit so timing does not leak how much of a token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks `authorization: Bearer <token>` against a set of accepted tokens.
#[derive(Clone)]
pub struct Authenticator {
    tokens: Arc<Vec<String>>,
}

impl Authenticator {
    /// Accepts exactly these tokens.
    pub fn new(tokens: Vec<String>) -> Self {
        Authenticator {
            tokens: Arc::new(tokens.into_iter().filter(|t| !t.is_empty()).collect()),
        }
    }

    /// Interceptor body: passes authenticated requests, refuses others with `unauthenticated`.
    pub fn check<T>(&self, req: Request<T>) -> Result<Request<T>, Status> {
        let Some(value) = req.metadata().get("authorization") else {
            return Err(Status::unauthenticated(
                "missing credentials; send `authorization: Bearer <cluster secret or client token>`",
            ));
        };
        let presented = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if self
            .tokens
            .iter()
            .any(|t| constant_time_eq(t.as_bytes(), presented.as_bytes()))
        {
            Ok(req)
        } else {
            Err(Status::unauthenticated(
                "wrong credentials; check the cluster secret or client token",
            ))
        }
    }
}

/// Adds `authorization: Bearer <secret>` to outgoing requests.
#[derive(Clone)]
pub struct BearerInjector {
    value: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl BearerInjector {
    /// Injects this secret; a secret that is not valid metadata is sent as nothing (and refused).
    pub fn new(secret: &str) -> Self {
        BearerInjector {
            value: MetadataValue::try_from(format!("Bearer {secret}")).ok(),
        }
    }
}

impl BearerInjector {
    /// Sends no credential: with mTLS, members authenticate by certificate and the cluster
    /// secret never goes on the wire.
    pub fn none() -> Self {
        BearerInjector { value: None }
    }

    /// The secret as a member sends it: nothing when `dialer` uses TLS, else the secret.
    pub fn for_member(secret: &str, dialer: &rebeam_tls::Dialer) -> Self {
        if dialer.is_tls() {
            BearerInjector::none()
        } else {
            BearerInjector::new(secret)
        }
    }
}

impl tonic::service::Interceptor for BearerInjector {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.value {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}
