//! Tokens as the watch stream carries them to nodes (`IssuedToken`): here, beside
//! [`TokenRecord`], so both the controller and the node convert the one way.

use rebeam_grpc::{Error, Result};
use rebeam_proto::v1 as pb;

use crate::{Role, TokenRecord};

impl From<&TokenRecord> for pb::IssuedToken {
    fn from(t: &TokenRecord) -> Self {
        pb::IssuedToken {
            id: t.id.clone(),
            sha256: t.sha256.clone(),
            role: t.role.as_str().into(),
            created_at_ms: t.created_at_ms,
            expires_at_ms: t.expires_at_ms,
        }
    }
}

impl TryFrom<&pb::IssuedToken> for TokenRecord {
    type Error = Error;

    fn try_from(t: &pb::IssuedToken) -> Result<Self> {
        Ok(TokenRecord {
            id: t.id.clone(),
            sha256: t.sha256.clone(),
            role: t.role.parse::<Role>().map_err(Error::InvalidArgument)?,
            created_at_ms: t.created_at_ms,
            expires_at_ms: t.expires_at_ms,
            note: String::new(),
        })
    }
}
