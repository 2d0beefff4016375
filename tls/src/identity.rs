//! Member identities in certificates, and the checks services make with them.
//!
//! A controller's certificate carries the URI SAN `urn:rebeam:controller:<id>`, a node's
//! `urn:rebeam:node:<name>`. The handshake has already verified the chain against the
//! cluster CA; these checks decide what the verified peer may do. A certificate without
//! such a URI (a client's) makes no one a member.

use rustls::pki_types::CertificateDer;
use tonic::{Request, Status};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::incoming::PeerInfo;

/// Metadata in which a peer link names the node it comes from; with TLS its certificate must
/// name the same node.
pub const PEER_NODE_HEADER: &str = "x-rebeam-node";

const CONTROLLER_PREFIX: &str = "urn:rebeam:controller:";
const NODE_PREFIX: &str = "urn:rebeam:node:";

/// Who a verified member certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    /// A controller member, by Raft id.
    Controller(u64),
    /// A worker node, by node name.
    Node(String),
}

impl Member {
    /// The URI SAN a certificate for this member carries.
    pub fn uri(&self) -> String {
        match self {
            Member::Controller(id) => format!("{CONTROLLER_PREFIX}{id}"),
            Member::Node(name) => format!("{NODE_PREFIX}{name}"),
        }
    }
}

/// The members a leaf certificate names in its URI SANs (normally one).
pub fn members_of(leaf: &CertificateDer<'_>) -> Vec<Member> {
    let Ok((_, cert)) = X509Certificate::from_der(leaf.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(uri) => parse_uri(uri),
            _ => None,
        })
        .collect()
}

fn parse_uri(uri: &str) -> Option<Member> {
    if let Some(id) = uri.strip_prefix(CONTROLLER_PREFIX) {
        return id
            .parse()
            .ok()
            .filter(|id| *id != 0)
            .map(Member::Controller);
    }
    uri.strip_prefix(NODE_PREFIX)
        .filter(|n| !n.is_empty())
        .map(|n| Member::Node(n.to_string()))
}

/// The members the request's verified client certificate names (empty without one).
pub fn peer_members<T>(req: &Request<T>) -> Vec<Member> {
    req.extensions()
        .get::<PeerInfo>()
        .and_then(|p| p.certs.as_ref())
        .and_then(|c| c.first())
        .map(members_of)
        .unwrap_or_default()
}

fn refused(what: &str) -> Status {
    Status::unauthenticated(format!(
        "this service needs a {what} certificate (URI SAN {what_uri}) signed by the cluster CA",
        what_uri = if what == "controller" {
            "urn:rebeam:controller:<id>"
        } else {
            "urn:rebeam:node:<name>"
        }
    ))
}

/// Passes requests from a controller member (the Raft peer service).
pub fn require_controller<T>(req: Request<T>) -> Result<Request<T>, Status> {
    if peer_members(&req)
        .iter()
        .any(|m| matches!(m, Member::Controller(_)))
    {
        Ok(req)
    } else {
        Err(refused("controller"))
    }
}

/// Passes requests from a node member (the controller's node service).
pub fn require_node<T>(req: Request<T>) -> Result<Request<T>, Status> {
    if peer_members(&req)
        .iter()
        .any(|m| matches!(m, Member::Node(_)))
    {
        Ok(req)
    } else {
        Err(refused("node"))
    }
}

/// Passes requests from the node whose name is in metadata `header` and whose certificate
/// names it (a peer link says which node it comes from; the certificate must agree).
pub fn require_node_named<T>(req: Request<T>, header: &str) -> Result<Request<T>, Status> {
    let claimed = req
        .metadata()
        .get(header)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let members = peer_members(&req);
    if members.is_empty() {
        return Err(refused("node"));
    }
    if members.contains(&Member::Node(claimed.clone())) {
        Ok(req)
    } else {
        Err(Status::permission_denied(format!(
            "the peer says it is node {claimed:?} but its certificate names {}",
            names(&members)
        )))
    }
}

/// Checks a node name from a request body against the caller's certificate; a request
/// without a certificate (TLS off) passes, since the bearer check already ran.
pub fn check_node_name<T>(req: &Request<T>, name: &str) -> Result<(), Status> {
    let Some(info) = req.extensions().get::<PeerInfo>() else {
        return Ok(());
    };
    if info.certs.is_none() {
        return Ok(());
    }
    let members = peer_members(req);
    if members.contains(&Member::Node(name.to_string())) {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "node {name:?} cannot join with a certificate naming {}",
            names(&members)
        )))
    }
}

/// Passes requests from any member, else hands them to `otherwise` (a bearer check): members
/// need not send the cluster secret to the client API.
pub fn member_or<T>(
    req: Request<T>,
    otherwise: impl FnOnce(Request<T>) -> Result<Request<T>, Status>,
) -> Result<Request<T>, Status> {
    if peer_members(&req).is_empty() {
        otherwise(req)
    } else {
        Ok(req)
    }
}

fn names(members: &[Member]) -> String {
    if members.is_empty() {
        return "no member".into();
    }
    members
        .iter()
        .map(Member::uri)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::{parse_uri, Member};

    #[test]
    fn uris() {
        assert_eq!(
            parse_uri("urn:rebeam:controller:3"),
            Some(Member::Controller(3))
        );
        assert_eq!(parse_uri("urn:rebeam:controller:0"), None);
        assert_eq!(parse_uri("urn:rebeam:controller:x"), None);
        assert_eq!(
            parse_uri("urn:rebeam:node:a"),
            Some(Member::Node("a".into()))
        );
        assert_eq!(parse_uri("urn:rebeam:node:"), None);
        assert_eq!(parse_uri("https://example.com"), None);
    }
}
