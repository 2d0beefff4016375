//! The dashboard page and the login form, embedded in the binary (no CDN; works offline).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

use crate::http::auth::{session_cookie, HttpAuth, SESSION_COOKIE};

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");
const LOGIN: &str = include_str!("assets/login.html");

/// Headers every page carries: no framing, no inline script, no sniffing.
fn page(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            // `no-referrer` would make browsers send `Origin: null` on the login POST.
            (header::REFERRER_POLICY, "same-origin"),
        ],
        body,
    )
        .into_response()
}

/// The dashboard's routes: the page, its assets, login and logout.
pub fn routes(auth: Arc<HttpAuth>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { page("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/assets/app.js",
            get(|| async { page("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/assets/style.css",
            get(|| async { page("text/css; charset=utf-8", STYLE) }),
        )
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .with_state(auth)
}

async fn login_form() -> Response {
    page("text/html; charset=utf-8", LOGIN)
}

/// The login form's fields.
#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

async fn login(State(auth): State<Arc<HttpAuth>>, Form(f): Form<LoginForm>) -> Response {
    let Some(principal) = auth.principal(f.token.trim()) else {
        return (
            StatusCode::UNAUTHORIZED,
            Html("<!doctype html><p>Wrong token. <a href=\"/login\">Try again</a>.</p>"),
        )
            .into_response();
    };
    let id = auth.login(principal);
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/".to_string()),
            (
                header::SET_COOKIE,
                format!("{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age=43200"),
            ),
        ],
    )
        .into_response()
}

async fn logout(State(auth): State<Arc<HttpAuth>>, headers: HeaderMap) -> Response {
    if let Some(id) = session_cookie(&headers) {
        auth.logout(&id);
    }
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/login".to_string()),
            (
                header::SET_COOKIE,
                format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
            ),
        ],
    )
        .into_response()
}
