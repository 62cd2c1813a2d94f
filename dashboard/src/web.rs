//! The router, security headers, authentication of requests, and the
//! login, logout and page routes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, FromRef, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use tokio::sync::watch;
use wattson_ingest::auth::{AuthError, Role, TokenStore, UserStore, Verifier};
use wattson_ingest::mqtt::MqttStats;
use wattson_query::QueryEngine;
use wattson_storage::Store;

use crate::error::json_error;
use crate::metrics::QueryMetrics;
use crate::session::{COOKIE, SessionInfo, Sessions, same_secret};
use crate::tls::ClientAddr;
use crate::{DashboardConfig, Deps, LiveHub, assets, metrics, sql, views};

/// The header that carries a session's CSRF token on state-changing
/// requests made by script.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";

/// Everything a request handler may need.
#[derive(Debug)]
pub(crate) struct App {
    pub(crate) store: Arc<Store>,
    pub(crate) users: Arc<UserStore>,
    pub(crate) verifier: Verifier,
    pub(crate) tokens: Arc<TokenStore>,
    pub(crate) engine: Arc<QueryEngine>,
    pub(crate) mqtt_stats: Arc<MqttStats>,
    pub(crate) live: Arc<LiveHub>,
    pub(crate) sessions: Sessions,
    pub(crate) queries: QueryMetrics,
    /// Cookies get `Secure`, responses HSTS.
    pub(crate) tls: bool,
    pub(crate) metrics_token: Option<String>,
    pub(crate) stale_after: Duration,
    /// Turns true at shutdown; live streams end on it.
    pub(crate) stopped: watch::Receiver<bool>,
}

impl App {
    pub(crate) fn new(
        config: &DashboardConfig,
        deps: Deps,
        tls: bool,
        stopped: watch::Receiver<bool>,
    ) -> App {
        App {
            store: deps.store,
            users: deps.users,
            verifier: deps.verifier,
            tokens: deps.tokens,
            engine: deps.engine,
            mqtt_stats: deps.mqtt_stats,
            live: deps.live,
            sessions: Sessions::new(config.session_idle, config.session_max),
            queries: QueryMetrics::default(),
            tls,
            metrics_token: config.metrics_token.clone().filter(|t| !t.is_empty()),
            stale_after: config.stale_after,
            stopped,
        }
    }
}

pub(crate) type AppState = Arc<App>;

pub(crate) fn router(app: AppState) -> Router {
    Router::new()
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/", get(views::live_page))
        .route("/history", get(views::history_page))
        .route("/fleet", get(views::fleet_page))
        .route("/static/{file}", get(assets::serve))
        .route("/api/session", get(session_info))
        .route("/api/catalog", get(views::catalog))
        .route("/api/live", get(views::live_stream))
        .route("/api/live/init", get(views::live_init))
        .route("/api/history", get(views::history))
        .route("/api/kwh", get(views::kwh))
        .route("/api/export", get(views::export))
        .route("/api/fleet", get(views::fleet))
        .route("/api/query", post(sql::query))
        .route("/api/token", post(sql::token))
        .route("/metrics", get(metrics::with_token))
        .fallback(not_found)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::map_response_with_state(
            app.clone(),
            security_headers,
        ))
        .with_state(app)
}

/// Unknown paths: a page redirect or a 401 without a session, so probing
/// does not tell which routes exist; 404 with one.
async fn not_found(State(app): State<AppState>, parts: Parts) -> Response {
    if session_from(&app, &parts.headers, true).is_none() {
        return refuse(&parts);
    }
    json_error(StatusCode::NOT_FOUND, "no such page")
}

/// A known path with the wrong method: refused like [`not_found`] without
/// a session, 405 with one.
async fn wrong_method(State(app): State<AppState>, parts: Parts) -> Response {
    if session_from(&app, &parts.headers, true).is_none() {
        return refuse(&parts);
    }
    json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
}

/// The Content-Security-Policy: only this origin's files, no inline code,
/// no framing.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data: blob:; connect-src 'self'; font-src 'self'; form-action 'self'; \
frame-ancestors 'none'; base-uri 'none'";

async fn security_headers(State(app): State<AppState>, mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        // Not `no-referrer`: with it, browsers send `Origin: null` on form
        // posts, and the same-origin check could not tell friend from foe.
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "permissions-policy",
        HeaderValue::from_static("camera=(), microphone=(), geolocation=()"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if app.tls {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    res
}

/// The session id from the request's cookie header.
fn cookie_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

pub(crate) fn session_from(app: &App, headers: &HeaderMap, touch: bool) -> Option<SessionInfo> {
    let id = cookie_id(headers)?;
    app.sessions.get(&app.users, id, Instant::now(), touch)
}

/// The answer to a request without a valid session: pages go to the login
/// page, everything else gets 401 JSON.
fn refuse(parts: &Parts) -> Response {
    let path = parts.uri.path();
    if parts.method == Method::GET && !path.starts_with("/api/") && path != "/metrics" {
        Redirect::to("/login").into_response()
    } else {
        json_error(StatusCode::UNAUTHORIZED, "log in first")
    }
}

/// `Origin`, when the browser sent one, must be this server: a form or
/// script on another site cannot post here with the user's cookie.
fn same_origin(app: &App, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let scheme = if app.tls { "https" } else { "http" };
    origin.to_str().ok() == Some(&format!("{scheme}://{host}"))
}

/// A request from a logged-in person. On anything but GET and HEAD it also
/// checks the CSRF token (header [`CSRF_HEADER`]) and `Origin`.
#[derive(Debug)]
pub(crate) struct Authed(pub(crate) SessionInfo);

impl<S: Send + Sync> FromRequestParts<S> for Authed
where
    AppState: FromRef<S>,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let app = AppState::from_ref(state);
        let Some(session) = session_from(&app, &parts.headers, true) else {
            return Err(refuse(parts));
        };
        if !matches!(parts.method, Method::GET | Method::HEAD) {
            if !same_origin(&app, &parts.headers) {
                return Err(json_error(
                    StatusCode::FORBIDDEN,
                    "cross-origin request refused",
                ));
            }
            let token = parts
                .headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !same_secret(token, &session.csrf) {
                return Err(json_error(
                    StatusCode::FORBIDDEN,
                    "missing or wrong CSRF token",
                ));
            }
        }
        Ok(Authed(session))
    }
}

/// A caller of the HTTP API: a session (CSRF-checked like [`Authed`]) or a
/// bearer token from the shared token store.
#[derive(Debug)]
pub(crate) struct ApiCaller {
    pub(crate) user: String,
    pub(crate) role: Role,
}

impl<S: Send + Sync> FromRequestParts<S> for ApiCaller
where
    AppState: FromRef<S>,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let app = AppState::from_ref(state);
        if let Some(auth) = parts.headers.get(header::AUTHORIZATION) {
            let token = auth
                .to_str()
                .ok()
                .and_then(|a| a.strip_prefix("Bearer "))
                .unwrap_or("")
                .trim();
            return match app.tokens.check(token) {
                Ok(p) => Ok(ApiCaller {
                    user: p.user,
                    role: p.role,
                }),
                Err(e) => Err(json_error(StatusCode::UNAUTHORIZED, &e.to_string())),
            };
        }
        let Authed(s) = Authed::from_request_parts(parts, state).await?;
        Ok(ApiCaller {
            user: s.user,
            role: s.role,
        })
    }
}

fn session_cookie(app: &App, value: &str, max_age: Option<Duration>) -> HeaderValue {
    let secure = if app.tls { "; Secure" } else { "" };
    let age = match max_age {
        Some(d) => format!("; Max-Age={}", d.as_secs()),
        None => "; Max-Age=0".to_owned(),
    };
    let cookie = format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict{secure}{age}");
    // Hex ids and fixed text: always a valid header value.
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

async fn login_page(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if session_from(&app, &headers, false).is_some() {
        return Redirect::to("/").into_response();
    }
    assets::login_html(None).into_response()
}

#[derive(Debug, serde::Deserialize)]
pub(crate) struct LoginForm {
    user: String,
    password: String,
}

async fn login(
    State(app): State<AppState>,
    ConnectInfo(ClientAddr(peer)): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    form: axum::Form<LoginForm>,
) -> Response {
    if !same_origin(&app, &headers) {
        return json_error(StatusCode::FORBIDDEN, "cross-origin request refused");
    }
    let user = form.user.trim();
    let answer = app
        .verifier
        .verify_async(user, &form.password, Some(peer.ip()))
        .await;
    let failed =
        |status: StatusCode, msg: &str| (status, assets::login_html(Some(msg))).into_response();
    let role = match answer {
        Ok(role) => role,
        Err(e) => {
            tracing::info!(user, %peer, "dashboard login refused: {e}");
            let status = match e {
                AuthError::Denied => StatusCode::UNAUTHORIZED,
                AuthError::LockedOut { .. } | AuthError::Throttled => StatusCode::TOO_MANY_REQUESTS,
                AuthError::Busy | AuthError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            };
            return failed(status, &e.to_string());
        }
    };
    if !role.is_person() || !role.allows(Role::Viewer) {
        return failed(
            StatusCode::FORBIDDEN,
            "this account may not use the dashboard",
        );
    }
    // A session id the browser already had is replaced, never reused.
    if let Some(old) = cookie_id(&headers) {
        app.sessions.end(old);
    }
    let session = match app.sessions.create(&app.users, user, Instant::now()) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    tracing::info!(user, %peer, role = role.as_str(), "dashboard login");
    let mut res = Redirect::to("/").into_response();
    let max_age = app.sessions_max_age();
    res.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie(&app, &session.id, Some(max_age)),
    );
    res
}

impl App {
    fn sessions_max_age(&self) -> Duration {
        self.sessions.absolute()
    }
}

/// Ends the session on the server. The CSRF token comes as the form field
/// `csrf` (the logout button is a plain form) or the header, and `Origin`
/// is checked. The body is read raw so that a request without a session
/// is sent to the login page whatever it carries.
async fn logout(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(session) = session_from(&app, &headers, false) else {
        return Redirect::to("/login").into_response();
    };
    // The token is hex, so the form value needs no percent-decoding.
    let field = std::str::from_utf8(&body)
        .ok()
        .and_then(|b| b.split('&').find_map(|kv| kv.strip_prefix("csrf=")));
    let given = field
        .or_else(|| headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()))
        .unwrap_or("");
    if !same_origin(&app, &headers) || !same_secret(given, &session.csrf) {
        return json_error(StatusCode::FORBIDDEN, "missing or wrong CSRF token");
    }
    app.sessions.end(&session.id);
    tracing::info!(user = %session.user, "dashboard logout");
    let mut res = Redirect::to("/login").into_response();
    res.headers_mut()
        .insert(header::SET_COOKIE, session_cookie(&app, "", None));
    res
}

async fn session_info(Authed(s): Authed) -> Response {
    axum::Json(serde_json::json!({
        "user": s.user,
        "role": s.role.as_str(),
        "csrf": s.csrf,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        // Any Cookie headers give the session cookie's value or nothing.
        #[test]
        fn any_cookie_header_is_read_or_ignored(
            cookies in proptest::collection::vec("[ -~]{0,60}", 0..4),
        ) {
            let mut headers = HeaderMap::new();
            for c in &cookies {
                if let Ok(v) = c.parse() {
                    headers.append(header::COOKIE, v);
                }
            }
            if let Some(id) = cookie_id(&headers) {
                proptest::prop_assert!(!id.contains(';'));
            }
        }
    }
}
