//! The one error model of Re:BEAM's gRPC services (controller and node) and its mapping
//! to gRPC status codes.

use tonic::metadata::MetadataValue;

/// Metadata key carrying the leader's API address on a redirect.
pub const LEADER_METADATA_KEY: &str = "x-rebeam-leader";

/// Metadata key carrying the leader's lease address (where it serves renewals on a runtime
/// of its own) on a refused renewal; absent when the leader advertises none (an older
/// member): renew at its API address then.
pub const LEASE_METADATA_KEY: &str = "x-rebeam-leader-lease";

/// Everything a Re:BEAM service can refuse or fail with, each with a message saying what
/// to do.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Error {
    /// A request field is missing, malformed or out of bounds.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// A node id, app or name the request refers to does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The request is well formed but the cluster state refuses it (e.g. a stale incarnation).
    #[error("refused: {0}")]
    FailedPrecondition(String),
    /// The thing being created already exists.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// A size limit was exceeded.
    #[error("too large: {0}")]
    TooLarge(String),
    /// This member is not the leader; `leader` is the leader's API address when known.
    #[error("this controller is not the leader; {}", match .leader { Some(l) => format!("retry at {l} (see the x-rebeam-leader metadata)"), None => "no leader is elected yet, retry shortly".to_string() })]
    NotLeader {
        /// API address of the current leader, if one is known.
        leader: Option<String>,
    },
    /// Missing or wrong credentials.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The Raft group is shutting down or could not be reached.
    #[error("controller unavailable: {0}")]
    Unavailable(String),
    /// Storage or another internal component failed.
    #[error("internal error: {0}; check the controller logs")]
    Internal(String),
}

impl Error {
    /// The gRPC code clients see for this error.
    pub fn code(&self) -> tonic::Code {
        match self {
            Error::InvalidArgument(_) => tonic::Code::InvalidArgument,
            Error::NotFound(_) => tonic::Code::NotFound,
            Error::FailedPrecondition(_) => tonic::Code::FailedPrecondition,
            Error::AlreadyExists(_) => tonic::Code::AlreadyExists,
            Error::TooLarge(_) => tonic::Code::ResourceExhausted,
            Error::NotLeader { .. } | Error::Unavailable(_) => tonic::Code::Unavailable,
            Error::Unauthenticated(_) => tonic::Code::Unauthenticated,
            Error::Internal(_) => tonic::Code::Internal,
        }
    }

    /// The HTTP status the dashboard answers with for this error.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::InvalidArgument(_) => 400,
            Error::NotFound(_) => 404,
            Error::FailedPrecondition(_) | Error::AlreadyExists(_) => 409,
            Error::TooLarge(_) => 413,
            Error::NotLeader { .. } | Error::Unavailable(_) => 503,
            Error::Unauthenticated(_) => 401,
            Error::Internal(_) => 500,
        }
    }

    /// Shorthand for an invalid-argument error.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }

    /// Shorthand for an internal error from any displayable cause.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Error::Internal(e.to_string())
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let mut status = tonic::Status::new(e.code(), e.to_string());
        if let Error::NotLeader { leader: Some(l) } = &e {
            if let Ok(v) = MetadataValue::try_from(l.as_str()) {
                status.metadata_mut().insert(LEADER_METADATA_KEY, v);
            }
        }
        status
    }
}

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The gRPC status name (`NOT_FOUND`), as the Python client's errors carry it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}
