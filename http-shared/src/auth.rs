//! Who may use the HTTP server and how: bearer tokens or a login cookie, roles, and the
//! Host/Origin/CSRF checks that keep a browser from being turned against the cluster.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use rebeam_auth::rate::{Key, Limited, RateLimiter};
use rebeam_auth::streams::{StreamLimiter, TooManyStreams};

pub use rebeam_auth::Role;

/// Who made a request: a role and a name for the event log (never the token itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// What the request may do.
    pub role: Role,
    /// How events name this client.
    pub who: String,
    /// A cluster member (the cluster secret): held to no client limit.
    #[serde(skip)]
    pub member: bool,
}

/// Maps a presented token to its principal; the controller's token roles plug in here.
pub trait TokenRoles: Send + Sync + 'static {
    /// The principal for `token`, or `None` when it is not accepted.
    fn principal(&self, token: &str) -> Option<Principal>;

    /// The request rate limit these tokens are held to, if any.
    fn limiter(&self) -> Option<&RateLimiter> {
        None
    }

    /// The cap on requests in flight per token these tokens are held to, if any.
    fn streams(&self) -> Option<&Arc<StreamLimiter>> {
        None
    }
}

/// Compares without an early exit so timing does not leak how much of a token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A short, stable, non-reversible name for a token.
fn token_name(role: Role, token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    format!("{role} token {}", hex::encode(&digest[..4]))
}

/// The cluster's credentials (the secret is admin; static and issued client tokens carry
/// their own role) plus the dashboard's read-only tokens.
pub struct ClusterTokens {
    credentials: rebeam_auth::Credentials,
    read_tokens: Vec<String>,
}

impl ClusterTokens {
    /// Roles from `credentials`, and `read_tokens` that may only look.
    pub fn new(credentials: rebeam_auth::Credentials, read_tokens: &[String]) -> Self {
        ClusterTokens {
            credentials,
            read_tokens: read_tokens
                .iter()
                .filter(|t| !t.is_empty())
                .cloned()
                .collect(),
        }
    }
}

impl TokenRoles for ClusterTokens {
    fn limiter(&self) -> Option<&RateLimiter> {
        Some(self.credentials.limiter())
    }

    fn streams(&self) -> Option<&Arc<StreamLimiter>> {
        Some(self.credentials.streams())
    }

    fn principal(&self, token: &str) -> Option<Principal> {
        match self.credentials.authenticate(token, rebeam_auth::now_ms()) {
            Some(rebeam_auth::Principal::Member) => {
                return Some(Principal {
                    role: Role::Admin,
                    who: "cluster secret".to_string(),
                    member: true,
                })
            }
            Some(rebeam_auth::Principal::Client { role, token: id }) => {
                let who = if id == "static" {
                    token_name(role, token)
                } else {
                    format!("{role} token {id}")
                };
                return Some(Principal {
                    role,
                    who,
                    member: false,
                });
            }
            // Nodes are known by certificate only, never by a token.
            Some(rebeam_auth::Principal::Node(_)) | None => {}
        }
        // Every entry is compared, so the time taken does not say which one matched.
        let mut found = false;
        for t in &self.read_tokens {
            found |= constant_time_eq(t.as_bytes(), token.as_bytes());
        }
        found.then(|| Principal {
            role: Role::Read,
            who: token_name(Role::Read, token),
            member: false,
        })
    }
}

/// Name of the HttpOnly session cookie.
pub const SESSION_COOKIE: &str = "rebeam_session";
/// Header a cookie-authenticated non-GET request must carry with the session's CSRF token.
pub const CSRF_HEADER: &str = "x-rebeam-csrf";
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
const MAX_SESSIONS: usize = 10_000;

/// A logged-in browser.
#[derive(Clone)]
struct Session {
    principal: Principal,
    csrf: String,
    expires: Instant,
}

/// How a request was authenticated: cookie-borne credentials need a CSRF token on writes.
#[derive(Clone, Debug)]
pub struct Authenticated {
    /// Who it is.
    pub principal: Principal,
    /// The session's CSRF token when authenticated by cookie.
    pub csrf: Option<String>,
}

/// Hosts and origins the server answers to, beyond IP literals and `localhost`.
#[derive(Clone, Debug, Default)]
pub struct AccessPolicy {
    /// Extra host names (without port) accepted in `Host` and `Origin`, e.g. a DNS name
    /// an ingress forwards under; `*` accepts any (only behind a trusted proxy).
    pub allowed_hosts: Vec<String>,
}

/// The HTTP server's authentication state: token roles, sessions and the access policy.
pub struct HttpAuth {
    tokens: Arc<dyn TokenRoles>,
    sessions: Mutex<HashMap<String, Session>>,
    policy: AccessPolicy,
}

fn random_hex() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl HttpAuth {
    /// Authenticates with `tokens` and answers only hosts `policy` allows.
    pub fn new(tokens: Arc<dyn TokenRoles>, policy: AccessPolicy) -> Self {
        HttpAuth {
            tokens,
            sessions: Mutex::new(HashMap::new()),
            policy,
        }
    }

    /// The principal for a raw token.
    pub fn principal(&self, token: &str) -> Option<Principal> {
        self.tokens.principal(token)
    }

    /// Starts a session for `principal`; returns the cookie value.
    pub fn login(&self, principal: Principal) -> String {
        let id = random_hex();
        let now = Instant::now();
        let mut sessions = self.sessions.lock();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS {
            // The oldest session makes room: a flood of logins cannot grow memory.
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            id.clone(),
            Session {
                principal,
                csrf: random_hex(),
                expires: now + SESSION_TTL,
            },
        );
        id
    }

    /// Ends the session with this cookie value.
    pub fn logout(&self, id: &str) {
        self.sessions.lock().remove(id);
    }

    /// Who presented these headers: a bearer token first, else the session cookie.
    pub fn authenticate(&self, headers: &HeaderMap) -> Option<Authenticated> {
        if let Some(v) = headers.get(header::AUTHORIZATION) {
            let token = v.to_str().ok()?.strip_prefix("Bearer ")?;
            return self.principal(token.trim()).map(|principal| Authenticated {
                principal,
                csrf: None,
            });
        }
        let id = session_cookie(headers)?;
        let sessions = self.sessions.lock();
        let s = sessions.get(&id).filter(|s| s.expires > Instant::now())?;
        Some(Authenticated {
            principal: s.principal.clone(),
            csrf: Some(s.csrf.clone()),
        })
    }

    /// Whether a `Host` or `Origin` host name may be answered: IP literals (a DNS
    /// rebinding attack needs a name), `localhost`, and the configured names.
    pub fn host_allowed(&self, host: &str) -> bool {
        let name = strip_port(host).to_ascii_lowercase();
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        if bare.parse::<std::net::IpAddr>().is_ok() || name == "localhost" {
            return true;
        }
        self.policy
            .allowed_hosts
            .iter()
            .any(|h| h == "*" || h.eq_ignore_ascii_case(&name))
    }
}

/// The session cookie's value, if the request carries one.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_string())
}

/// Middleware of an HTTPS listener: every cookie it sets is `Secure`, so a browser never
/// sends the session over plaintext (a `http://` page on the same host, a downgrade).
pub async fn secure_cookies(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    if !headers.contains_key(header::SET_COOKIE) {
        return response;
    }
    let cookies: Vec<_> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .cloned()
        .collect();
    headers.remove(header::SET_COOKIE);
    for cookie in cookies {
        let secured = cookie
            .to_str()
            .ok()
            .filter(|c| !secure_flag(c))
            .and_then(|c| header::HeaderValue::from_str(&format!("{c}; Secure")).ok())
            .unwrap_or(cookie);
        headers.append(header::SET_COOKIE, secured);
    }
    response
}

/// Whether a `Set-Cookie` value already has the `Secure` attribute.
fn secure_flag(cookie: &str) -> bool {
    cookie
        .split(';')
        .skip(1)
        .any(|a| a.trim().eq_ignore_ascii_case("secure"))
}

/// `host[:port]` or `[v6]:port` without the port.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest
            .split_once(']')
            .map(|(h, _)| &host[..h.len() + 2])
            .unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Paths served without credentials: probes, the login form and the page shell (which
/// holds no data; it asks the API, which does check).
fn public(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/login" | "/")
}

fn refuse(status: StatusCode, error: &str, message: String) -> Response {
    (status, Json(json!({"error": error, "message": message}))).into_response()
}

/// 429 naming the limit, with `Retry-After` in whole seconds (at least 1).
fn too_many(limited: Limited) -> Response {
    let secs = limited.retry_after.as_secs_f64().ceil().max(1.0) as u64;
    let mut response = refuse(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        limited.message(),
    );
    if let Ok(v) = secs.to_string().parse() {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

/// 429 naming the per-token cap on requests in flight, with `Retry-After` (at least 1 s).
fn too_many_streams(refused: TooManyStreams) -> Response {
    let secs = refused.retry_after().as_secs_f64().ceil().max(1.0) as u64;
    let mut response = refuse(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_streams",
        refused.message(),
    );
    if let Ok(v) = secs.to_string().parse() {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

/// Middleware on every route: Host and Origin checks on every method, authentication,
/// the client limits (request rate, requests in flight) and CSRF protection for non-GET
/// requests made with the cookie.
pub async fn guard(State(auth): State<Arc<HttpAuth>>, mut req: Request, next: Next) -> Response {
    let headers = req.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    if !auth.host_allowed(host) {
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            "host_not_allowed",
            format!("host {host:?} is not served here; add it with --http-allowed-host"),
        );
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let origin_host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .unwrap_or("");
        // Same origin as the Host asked for, or an allowed name: a page elsewhere cannot
        // drive the API with the browser's cookie or reach a loopback-only server.
        if !(origin_host.eq_ignore_ascii_case(host)
            || (!origin_host.is_empty() && auth.host_allowed(origin_host)))
        {
            return refuse(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                format!("requests from origin {origin:?} are refused"),
            );
        }
    }
    // Failed attempts are counted per address, and checked before the credential is
    // hashed; a client's requests per token.
    let limiter = auth.tokens.limiter();
    let remote = req
        .extensions()
        .get::<axum::extract::ConnectInfo<crate::HttpConn>>()
        .and_then(|c| c.0.remote)
        .map(|a| Key::Address(a.ip()));
    let presented =
        headers.contains_key(header::AUTHORIZATION) || session_cookie(headers).is_some();
    if let (Some(limiter), Some(key), true) = (limiter, &remote, presented) {
        if let Err(limited) = limiter.check(key.clone()) {
            return too_many(limited);
        }
    }
    let authed = auth.authenticate(headers);
    if let Some(limiter) = limiter {
        let counted = match (&authed, remote) {
            // Members are not held to client rates, as at the gRPC guard.
            (Some(a), _) if a.principal.member => Ok(()),
            (Some(a), _) => limiter.take(Key::Token(a.principal.who.clone())),
            (None, Some(key)) if presented => limiter.take(key),
            (None, _) => Ok(()),
        };
        if let (Err(limited), Some(_)) = (counted, &authed) {
            return too_many(limited);
        }
    }
    let path = req.uri().path().to_string();
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    // Held until the response body ends or is dropped (an event stream's client gone).
    let slot = match (&authed, auth.tokens.streams()) {
        (Some(a), Some(streams)) if !a.principal.member => {
            match streams.acquire(&a.principal.who) {
                Ok(slot) => slot,
                Err(refused) => return too_many_streams(refused),
            }
        }
        _ => None,
    };
    match authed {
        None if public(&path) => {}
        None => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "send `Authorization: Bearer <token>` or log in at /login".into(),
            )
        }
        Some(a) => {
            if let (false, Some(expected)) = (safe, &a.csrf) {
                let sent = req
                    .headers()
                    .get(CSRF_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if !constant_time_eq(sent.as_bytes(), expected.as_bytes()) {
                    return refuse(
                        StatusCode::FORBIDDEN,
                        "csrf",
                        format!("a {} with the session cookie needs the {CSRF_HEADER} header from /api/v1/session", req.method()),
                    );
                }
            }
            req.extensions_mut().insert(a);
        }
    }
    let response = next.run(req).await;
    match slot {
        None => response,
        Some(slot) => response.map(|body| {
            axum::body::Body::new(http_body_util::BodyExt::map_frame(body, move |frame| {
                let _in_flight = &slot;
                frame
            }))
        }),
    }
}

/// Errs with 403 unless the request's principal holds at least `role` (boxed: a response is
/// large and the check is on every action).
pub fn require(authed: &Authenticated, role: Role) -> Result<(), Box<Response>> {
    if authed.principal.role >= role {
        Ok(())
    } else {
        Err(Box::new(refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this needs the {role} role; {} has {}",
                authed.principal.who, authed.principal.role
            ),
        )))
    }
}
