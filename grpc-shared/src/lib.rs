//! The wire pieces shared by the node, the controller and their tests, so none of them
//! depends on another for them: one error model and its gRPC status mapping, the leader
//! hint on redirects and how nodes follow it, and the bearer credential members send.

pub mod error;
pub mod leaders;
pub mod tracecontext;

pub use error::{code_name, Error, Result, LEADER_METADATA_KEY, LEASE_METADATA_KEY};
pub use leaders::Leaders;

use std::time::Duration;
use tonic::metadata::MetadataValue;

/// How long a node waits for one lease renewal attempt, given its fence, before it gives up
/// on it and tries another member (a fifth of the fence, 50–250 ms): a frozen leader costs
/// it one attempt, not its fence. Sent with each renewal (`HeartbeatRequest.attempt_ms`).
pub fn renewal_attempt(fence: Duration) -> Duration {
    (fence / 5).clamp(Duration::from_millis(50), Duration::from_millis(250))
}
use tonic::{Request, Status};

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
