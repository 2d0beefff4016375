//! Who may call what: the credentials every gRPC service accepts (the cluster secret for
//! controller members, the node secret for nodes, client tokens carrying a role) and the one
//! table mapping each RPC to what it needs.
//!
//! Every service is wrapped in a [`Guard`], which looks the request's method up in
//! [`RPC_TABLE`] before the handler runs: a method missing from the table is refused, so a new
//! RPC cannot be served until someone decides who may call it.

pub mod rate;
pub mod secrets;
pub mod serving;
pub mod streams;
mod wire;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::RwLock;
use rebeam_tls::identity::members_of;
use rebeam_tls::{Member, PeerInfo};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tonic::codegen::http;
use tonic::Status;

use rate::{Key, RateLimit, RateLimiter};
use streams::{Slot, StreamLimiter};

/// What a client token may do; each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Look: apps, nodes, processes, trees, logs, names, cluster state.
    Read,
    /// Read, plus call, cast and send into apps' processes.
    Call,
    /// Call, plus submit, upgrade, roll back, stop and delete apps and write the registry.
    Deploy,
    /// Everything: controller membership, snapshots, client tokens.
    Admin,
}

impl Role {
    /// Every role, weakest first.
    pub const ALL: [Role; 4] = [Role::Read, Role::Call, Role::Deploy, Role::Admin];

    /// The lowest role allowed to act from the dashboard (stop an app, kill a process).
    pub const OPERATOR: Role = Role::Deploy;

    /// The role's name as users write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Call => "call",
            Role::Deploy => "deploy",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(Role::Read),
            "call" => Ok(Role::Call),
            "deploy" => Ok(Role::Deploy),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role `{other}`; use read, call, deploy or admin"
            )),
        }
    }
}

/// What a method requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// The cluster secret: controller members and nodes only.
    Member,
    /// A client token of at least this role (the cluster secret also passes).
    Role(Role),
}

/// Who a request comes from, once authenticated; handlers find it in the request extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Holder of the cluster secret (a controller member or a node), or of a controller's
    /// certificate.
    Member,
    /// A node proven by its certificate (named here) or by the node secret (an empty
    /// name): only the RPCs nodes use ([`NODE_RPCS`]), never membership, tokens or app
    /// changes.
    Node(String),
    /// A client with a token of this role; `token` is the token's id (`static` for tokens
    /// given on the command line).
    Client {
        /// The token's role.
        role: Role,
        /// The token's id.
        token: String,
    },
}

impl Principal {
    fn satisfies(&self, need: Need) -> bool {
        match (self, need) {
            (Principal::Member, _) => true,
            // Decided per method by NODE_RPCS, before roles are looked at.
            (Principal::Node(_), _) => false,
            (Principal::Client { .. }, Need::Member) => false,
            (Principal::Client { role, .. }, Need::Role(r)) => *role >= r,
        }
    }
}

use Need::{Member as M, Role as R};
use Role::{Admin, Call, Deploy, Read};

/// Every RPC of every service and what it needs. The single place that decides access: a
/// method that is not listed here is refused.
pub const RPC_TABLE: &[(&str, Need)] = &[
    // Client and admin traffic (controllers).
    ("/rebeam.v1.ClusterService/RegisterName", R(Deploy)),
    ("/rebeam.v1.ClusterService/RegisterNames", R(Deploy)),
    ("/rebeam.v1.ClusterService/UnregisterName", R(Deploy)),
    ("/rebeam.v1.ClusterService/Whereis", R(Read)),
    ("/rebeam.v1.ClusterService/ListNames", R(Read)),
    ("/rebeam.v1.ClusterService/PgJoin", R(Deploy)),
    ("/rebeam.v1.ClusterService/PgLeave", R(Deploy)),
    ("/rebeam.v1.ClusterService/PgMembers", R(Read)),
    ("/rebeam.v1.ClusterService/SubmitApp", R(Deploy)),
    ("/rebeam.v1.ClusterService/UpgradeApp", R(Deploy)),
    ("/rebeam.v1.ClusterService/StopApp", R(Deploy)),
    ("/rebeam.v1.ClusterService/RollbackApp", R(Deploy)),
    ("/rebeam.v1.ClusterService/DeleteApp", R(Deploy)),
    ("/rebeam.v1.ClusterService/ListApps", R(Read)),
    ("/rebeam.v1.ClusterService/ClusterState", R(Read)),
    ("/rebeam.v1.ClusterService/Status", R(Read)),
    ("/rebeam.v1.ClusterService/AddController", R(Admin)),
    ("/rebeam.v1.ClusterService/RemoveController", R(Admin)),
    ("/rebeam.v1.ClusterService/Snapshot", R(Admin)),
    ("/rebeam.v1.ClusterService/CreateToken", R(Admin)),
    ("/rebeam.v1.ClusterService/ListTokens", R(Admin)),
    ("/rebeam.v1.ClusterService/RevokeToken", R(Admin)),
    // Node control traffic (controllers).
    ("/rebeam.v1.NodeService/Join", M),
    ("/rebeam.v1.NodeService/Heartbeat", M),
    ("/rebeam.v1.NodeService/Leave", M),
    ("/rebeam.v1.NodeService/Watch", M),
    ("/rebeam.v1.NodeService/ReportExit", M),
    ("/rebeam.v1.NodeService/ReportChildStarted", M),
    ("/rebeam.v1.NodeService/FetchCode", M),
    ("/rebeam.v1.NodeService/ReportChildFailed", M),
    ("/rebeam.v1.NodeService/ReportUpgrade", M),
    ("/rebeam.v1.NodeService/RecordNote", M),
    // Raft between controller members.
    ("/rebeam.v1.RaftPeer/AppendEntries", M),
    ("/rebeam.v1.RaftPeer/Vote", M),
    ("/rebeam.v1.RaftPeer/InstallSnapshot", M),
    ("/rebeam.v1.RaftPeer/PreVote", M),
    ("/rebeam.v1.RaftPeer/Advertise", M),
    // Node to node.
    // Clients at a node's gateway.
    ("/rebeam.v1.GatewayService/Deliver", R(Call)),
    ("/rebeam.v1.GatewayService/ListProcesses", R(Read)),
    ("/rebeam.v1.GatewayService/Logs", R(Read)),
    ("/rebeam.v1.GatewayService/Kill", R(Admin)),
    ("/rebeam.v1.GatewayService/ListTables", R(Read)),
    ("/rebeam.v1.GatewayService/NodeStats", R(Read)),
];

/// The RPCs a node's certificate or the node secret may call: its control traffic, the
/// registry writes and lookups it makes for its processes, and peer links. A node that is
/// taken over (app code can read what its node holds) must not be able to change
/// membership, issue tokens or submit code, as a member could.
pub const NODE_RPCS: &[&str] = &[
    "/rebeam.v1.NodeService/Join",
    "/rebeam.v1.NodeService/Heartbeat",
    "/rebeam.v1.NodeService/Leave",
    "/rebeam.v1.NodeService/Watch",
    "/rebeam.v1.NodeService/ReportExit",
    "/rebeam.v1.NodeService/ReportChildStarted",
    "/rebeam.v1.NodeService/FetchCode",
    "/rebeam.v1.NodeService/ReportChildFailed",
    "/rebeam.v1.NodeService/ReportUpgrade",
    "/rebeam.v1.ClusterService/RegisterName",
    "/rebeam.v1.ClusterService/UnregisterName",
    "/rebeam.v1.ClusterService/Whereis",
    "/rebeam.v1.ClusterService/PgJoin",
    "/rebeam.v1.ClusterService/PgLeave",
];

/// What `path` (`/package.Service/Method`) needs, or None for a method nobody may call.
pub fn required(path: &str) -> Option<Need> {
    RPC_TABLE
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, need)| *need)
}

/// Compares without an early exit so timing does not leak how much of a token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Prefix of every token the cluster issues (`rbt_<id>_<secret>`), so they are recognisable in
/// a leaked file and their id can be found without a table scan.
pub const TOKEN_PREFIX: &str = "rbt_";

/// A client token as the replicated state keeps it: never the token itself, only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public id (shown by `rebeam token list`, used to revoke).
    pub id: String,
    /// Hex SHA-256 of the whole token text.
    pub sha256: String,
    /// What the token may do.
    pub role: Role,
    /// When it was created (leader clock, ms since the epoch).
    pub created_at_ms: u64,
    /// When it stops working (ms since the epoch); 0 for never.
    pub expires_at_ms: u64,
    /// Free text saying whom it was made for.
    pub note: String,
}

impl TokenRecord {
    /// Whether the token has expired at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms != 0 && now_ms >= self.expires_at_ms
    }
}

/// A freshly made token: the text to show once, and the record to store.
pub struct NewToken {
    /// The token text; shown to its creator once and never stored.
    pub text: String,
    /// What the state keeps.
    pub record: TokenRecord,
}

/// Hex SHA-256 of a token's text.
pub fn token_hash(text: &str) -> String {
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// Makes a token with 256 random bits; `ttl_ms` 0 means it never expires.
pub fn new_token(role: Role, now_ms: u64, ttl_ms: u64, note: String) -> NewToken {
    let id = format!("{:016x}", rand::random::<u64>());
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let text = format!("{TOKEN_PREFIX}{id}_{secret}");
    let record = TokenRecord {
        id,
        sha256: token_hash(&text),
        role,
        created_at_ms: now_ms,
        expires_at_ms: if ttl_ms == 0 {
            0
        } else {
            now_ms.saturating_add(ttl_ms)
        },
        note,
    };
    NewToken { text, record }
}

/// Where issued tokens are looked up (the controller's applied state, a node's watch cache).
pub trait TokenSource: Send + Sync + 'static {
    /// The record with this id, if any.
    fn token(&self, id: &str) -> Option<TokenRecord>;
}

/// A node's copy of the issued tokens, kept current by the controller's watch stream.
#[derive(Default)]
pub struct TokenCache {
    tokens: RwLock<HashMap<String, TokenRecord>>,
}

impl TokenCache {
    /// Replaces every record (a fresh view).
    pub fn replace(&self, records: impl IntoIterator<Item = TokenRecord>) {
        *self.tokens.write() = records.into_iter().map(|r| (r.id.clone(), r)).collect();
    }

    /// Adds or replaces one record.
    pub fn set(&self, record: TokenRecord) {
        self.tokens.write().insert(record.id.clone(), record);
    }

    /// Forgets a revoked token.
    pub fn remove(&self, id: &str) {
        self.tokens.write().remove(id);
    }
}

impl TokenSource for TokenCache {
    fn token(&self, id: &str) -> Option<TokenRecord> {
        self.tokens.read().get(id).cloned()
    }
}

/// A token given at start (`--client-token`): `ROLE:TOKEN`, or a bare `TOKEN` for admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticToken {
    /// What it may do.
    pub role: Role,
    /// The token text.
    pub token: String,
}

impl std::str::FromStr for StaticToken {
    type Err = String;

    /// A prefix that is not a role name is part of the token, so `a:b` is the admin token `a:b`.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (role, token) = match s.split_once(':') {
            Some((r, t)) => match r.parse::<Role>() {
                Ok(role) => (role, t),
                Err(_) => (Role::Admin, s),
            },
            None => (Role::Admin, s),
        };
        if token.is_empty() {
            return Err("a client token is empty; give ROLE:TOKEN or TOKEN".into());
        }
        Ok(StaticToken {
            role,
            token: token.to_string(),
        })
    }
}

/// A static token known only by the hex SHA-256 of its text (`--client-token-digest
/// ROLE:SHA256`, or `SHA256` for admin): what a node is given so that its gateway accepts the
/// token without holding it, since app code can read what its node holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenDigest {
    /// What the token may do.
    pub role: Role,
    /// Lowercase hex SHA-256 of the token's text (as [`token_hash`] makes it).
    pub sha256: String,
}

impl std::str::FromStr for TokenDigest {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (role, hex) = match s.split_once(':') {
            Some((r, h)) => (r.parse::<Role>()?, h),
            None => (Role::Admin, s),
        };
        let hex = hex.to_ascii_lowercase();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(
                "a client token digest is ROLE:SHA256 with 64 hex digits (`sha256sum` of the token)"
                    .into(),
            );
        }
        Ok(TokenDigest { role, sha256: hex })
    }
}

/// Reads tokens from a file: one per line (`ROLE:TOKEN` or `TOKEN`); blank lines and lines
/// starting with `#` are skipped.
pub fn read_token_file(path: &std::path::Path) -> Result<Vec<StaticToken>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read client tokens from {}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| (i, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .map(|(i, l)| {
            l.parse()
                .map_err(|e| format!("{} line {}: {e}", path.display(), i + 1))
        })
        .collect()
}

/// Reads the cluster secret from a file (surrounding whitespace is dropped).
pub fn read_secret_file(path: &std::path::Path) -> Result<String, String> {
    read_named_secret_file(path, "the cluster secret")
}

/// Reads the node secret (`--node-secret-file`) from a file (surrounding whitespace is
/// dropped).
pub fn read_node_secret_file(path: &std::path::Path) -> Result<String, String> {
    read_named_secret_file(path, "the node secret")
}

/// Reads `what` from a file, refusing an empty one.
fn read_named_secret_file(path: &std::path::Path, what: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {what} from {}: {e}", path.display()))?;
    let secret = text.trim().to_string();
    if secret.is_empty() {
        return Err(format!("the secret file {} is empty", path.display()));
    }
    Ok(secret)
}

/// The credentials one server accepts.
#[derive(Clone)]
pub struct Credentials {
    mtls: bool,
    secret: String,
    node_secret: String,
    static_tokens: Arc<Vec<StaticToken>>,
    digests: Arc<Vec<TokenDigest>>,
    issued: Option<Arc<dyn TokenSource>>,
    limiter: Arc<RateLimiter>,
    streams: Arc<StreamLimiter>,
}

/// An admitted request: who made it, and for a client its place under the per-token cap on
/// requests in flight, to be held until the reply ends.
#[derive(Debug)]
pub struct Admission {
    /// Who the caller is.
    pub principal: Principal,
    /// The client's slot (None for members, nodes, or with the cap off).
    pub slot: Option<Slot>,
}

/// An authorized caller and, for a client, the id its requests are counted under.
type Decided = (Principal, Option<String>);

impl Credentials {
    /// Accepts the cluster secret, the static tokens, and tokens found in `issued`.
    pub fn new(
        secret: String,
        static_tokens: Vec<StaticToken>,
        issued: Option<Arc<dyn TokenSource>>,
    ) -> Self {
        Credentials {
            mtls: false,
            secret,
            node_secret: String::new(),
            static_tokens: Arc::new(static_tokens),
            digests: Arc::new(Vec::new()),
            issued,
            limiter: Arc::new(RateLimiter::new(RateLimit::default())),
            streams: Arc::new(StreamLimiter::new(streams::DEFAULT_MAX_STREAMS)),
        }
    }

    /// Also accepts `node_secret` (when not empty), as a [`Principal::Node`] that may call
    /// only [`NODE_RPCS`]: what nodes are given instead of the cluster secret.
    pub fn with_node_secret(mut self, node_secret: String) -> Self {
        self.node_secret = node_secret;
        self
    }

    /// Also accepts the static tokens whose digests these are.
    pub fn with_token_digests(mut self, digests: Vec<TokenDigest>) -> Self {
        self.digests = Arc::new(digests);
        self
    }

    /// Limits each client token to `limit` (and failed authentications per address alike).
    pub fn with_rate_limit(mut self, limit: RateLimit) -> Self {
        self.limiter = Arc::new(RateLimiter::new(limit));
        self
    }

    /// The request rate limiter these credentials apply.
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// Holds each client token to `max` requests and streams in flight at once (0: no cap).
    pub fn with_stream_limit(mut self, max: usize) -> Self {
        self.streams = Arc::new(StreamLimiter::new(max));
        self
    }

    /// The per-token cap on requests in flight these credentials apply.
    pub fn streams(&self) -> &Arc<StreamLimiter> {
        &self.streams
    }

    /// Who presented `token`, or None when it is not a valid credential.
    pub fn authenticate(&self, token: &str, now_ms: u64) -> Option<Principal> {
        self.identify(token, now_ms).map(|(p, _)| p)
    }

    /// Who presented `token` and the id its requests are counted under (each static token
    /// apart, though all show as `static`).
    fn identify(&self, token: &str, now_ms: u64) -> Option<(Principal, String)> {
        if token.is_empty() {
            return None;
        }
        if !self.secret.is_empty() && constant_time_eq(self.secret.as_bytes(), token.as_bytes()) {
            return Some((Principal::Member, String::new()));
        }
        if !self.node_secret.is_empty()
            && constant_time_eq(self.node_secret.as_bytes(), token.as_bytes())
        {
            return Some((Principal::Node(String::new()), String::new()));
        }
        let mut found = None;
        for (i, t) in self.static_tokens.iter().enumerate() {
            if constant_time_eq(t.token.as_bytes(), token.as_bytes()) {
                found = Some((i, t.role));
            }
        }
        if let Some((i, role)) = found {
            let principal = Principal::Client {
                role,
                token: "static".into(),
            };
            return Some((principal, format!("static#{i}")));
        }
        if !self.digests.is_empty() {
            let hash = token_hash(token);
            let mut found = None;
            for (i, d) in self.digests.iter().enumerate() {
                if constant_time_eq(d.sha256.as_bytes(), hash.as_bytes()) {
                    found = Some((i, d.role));
                }
            }
            if let Some((i, role)) = found {
                let principal = Principal::Client {
                    role,
                    token: "static".into(),
                };
                return Some((principal, format!("digest#{i}")));
            }
        }
        let rest = token.strip_prefix(TOKEN_PREFIX)?;
        let (id, _) = rest.split_once('_')?;
        let record = self.issued.as_ref()?.token(id)?;
        let hash = token_hash(token);
        (constant_time_eq(record.sha256.as_bytes(), hash.as_bytes()) && !record.expired(now_ms))
            .then(|| {
                let key = record.id.clone();
                let principal = Principal::Client {
                    role: record.role,
                    token: record.id,
                };
                (principal, key)
            })
    }

    /// With mutual TLS on, members prove who they are by certificate only: the cluster secret
    /// no longer passes where a member is needed, so it never has to travel on the wire.
    pub fn with_mtls(mut self, on: bool) -> Self {
        self.mtls = on;
        self
    }

    /// Decides a request for `path` carrying these headers, on a connection from `remote`
    /// whose verified client certificate names `members` (empty without TLS): the caller,
    /// or the refusal. Client tokens are held to the rate limit, and so are failed attempts
    /// per remote address (refused before the credential is hashed once over the limit).
    /// Takes no slot under the cap on requests in flight: for a request, see [`Self::admit`].
    pub fn authorize(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        members: &[Member],
        remote: Option<IpAddr>,
    ) -> Result<Principal, Status> {
        self.decide(path, headers, members, remote)
            .map(|(principal, _)| principal)
    }

    /// Decides a request as [`Self::authorize`] does and, for a client, takes a slot under
    /// its token's cap on requests in flight (refused with `resource_exhausted` at the cap),
    /// to be held until the reply ends.
    pub fn admit(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        members: &[Member],
        remote: Option<IpAddr>,
    ) -> Result<Admission, Status> {
        let (principal, key) = self.decide(path, headers, members, remote)?;
        let slot = match key {
            Some(key) => self.streams.acquire(&key).map_err(|l| l.status())?,
            None => None,
        };
        Ok(Admission { principal, slot })
    }

    fn decide(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        members: &[Member],
        remote: Option<IpAddr>,
    ) -> Result<Decided, Status> {
        let member = |principal| Ok((principal, None));
        let Some(need) = required(path) else {
            return Err(Status::permission_denied(format!(
                "`{path}` is not an rpc this server authorizes"
            )));
        };
        if let Some(principal) = member_by_certificate(path, members)? {
            return member(principal);
        }
        if self.mtls && need == Need::Member {
            return Err(Status::unauthenticated(format!(
                "`{path}` needs a member certificate signed by the cluster CA (URI SAN \
                 urn:rebeam:controller:<id> or urn:rebeam:node:<name>)"
            )));
        }
        let Some(value) = headers.get("authorization") else {
            return Err(Status::unauthenticated(
                "missing credentials; send `authorization: Bearer <client token>`",
            ));
        };
        let presented = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if let Some(ip) = remote {
            self.limiter
                .check(Key::Address(ip))
                .map_err(|l| l.status())?;
        }
        let Some((principal, key)) = self.identify(presented, now_ms()) else {
            if let Some(ip) = remote {
                // Counted only now: a failure is what a guesser spends.
                let _ = self.limiter.take(Key::Address(ip));
            }
            return Err(Status::unauthenticated(
                "wrong credentials (or a revoked or expired token); check the client token",
            ));
        };
        if let Principal::Client { .. } = principal {
            self.limiter
                .take(Key::Token(key.clone()))
                .map_err(|l| l.status())?;
        }
        if let Principal::Node(_) = principal {
            // The node secret: what nodes use and nothing else, whatever the table says.
            if NODE_RPCS.contains(&path) {
                return member(principal);
            }
            return Err(Status::permission_denied(format!(
                "`{path}` is not for nodes: the node secret may call only what nodes use \
                 (control traffic, registry writes for their processes)"
            )));
        }
        if principal.satisfies(need) {
            return Ok(match principal {
                Principal::Client { .. } => (principal, Some(key)),
                Principal::Member | Principal::Node(_) => (principal, None),
            });
        }
        Err(Status::permission_denied(match (need, &principal) {
            (Need::Member, _) => format!("`{path}` is for cluster members only"),
            (Need::Role(r), Principal::Client { role, .. }) => {
                format!("`{path}` needs the `{r}` role; this token's role is `{role}`")
            }
            (Need::Role(r), Principal::Member | Principal::Node(_)) => {
                format!("`{path}` needs the `{r}` role")
            }
        }))
    }
}

/// The members named by the connection's verified client certificate (none without TLS).
fn certificate_members(extensions: &http::Extensions) -> Vec<Member> {
    extensions
        .get::<PeerInfo>()
        .and_then(|p| p.certs.as_ref())
        .and_then(|c| c.first())
        .map(members_of)
        .unwrap_or_default()
}

/// A caller proven a member by certificate, checked against what the path allows: Raft
/// traffic only from controllers, and from a node (a certificate naming no controller) only
/// [`NODE_RPCS`]. (Peer links authenticate in the node's peer transport handshake.)
fn member_by_certificate(path: &str, members: &[Member]) -> Result<Option<Principal>, Status> {
    if members.is_empty() {
        return Ok(None);
    }
    if path.starts_with("/rebeam.v1.RaftPeer/")
        && !members.iter().any(|m| matches!(m, Member::Controller(_)))
    {
        return Err(Status::permission_denied(
            "raft traffic needs a controller certificate (URI SAN urn:rebeam:controller:<id>)",
        ));
    }
    if members.iter().any(|m| matches!(m, Member::Controller(_))) {
        return Ok(Some(Principal::Member));
    }
    let node = members
        .iter()
        .find_map(|m| match m {
            Member::Node(name) => Some(name.clone()),
            Member::Controller(_) => None,
        })
        .unwrap_or_default();
    if !NODE_RPCS.contains(&path) {
        return Err(Status::permission_denied(format!(
            "`{path}` is not for nodes: node {node:?}'s certificate may call only what nodes \
             use (control traffic, registry writes for its processes, peer links)"
        )));
    }
    Ok(Some(Principal::Node(node)))
}

/// Wraps a gRPC service: every request is checked against [`RPC_TABLE`] before it reaches
/// the service, and the caller's [`Principal`] is put in the request extensions.
#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    credentials: Credentials,
}

impl<S> Guard<S> {
    /// Guards `inner` with these credentials.
    pub fn new(inner: S, credentials: Credentials) -> Self {
        Guard { inner, credentials }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Guard<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tonic::codegen::Service<http::Request<B>> for Guard<S>
where
    S: tonic::codegen::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let members = certificate_members(req.extensions());
        let peer = req.extensions().get::<PeerInfo>();
        let remote = peer.and_then(|p| p.remote).map(|a| a.ip());
        // In flight until the reply's body ends, so the idle timeout spares a long stream.
        let busy = peer.and_then(|p| p.activity.as_ref()).map(|a| a.begin());
        match self
            .credentials
            .admit(req.uri().path(), req.headers(), &members, remote)
        {
            Ok(Admission { principal, slot }) => {
                req.extensions_mut().insert(principal);
                let reply = self.inner.call(req);
                // Both are held until the reply's body ends or is dropped (the client gone or
                // the stream cancelled); dropping the future before that frees them too.
                let held = (busy, slot);
                Box::pin(async move {
                    let response = reply.await?;
                    Ok(match held {
                        (None, None) => response,
                        held => response.map(|body| {
                            tonic::body::Body::new(http_body_util::BodyExt::map_frame(
                                body,
                                move |frame| {
                                    let _in_flight = &held;
                                    frame
                                },
                            ))
                        }),
                    })
                })
            }
            Err(status) => {
                let response = status.into_http();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

pub use rebeam_grpc::BearerInjector;

/// Milliseconds since the Unix epoch on this machine's clock: token expiry is checked
/// against it.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
