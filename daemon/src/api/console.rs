//! The web console: a page served by the daemon itself (HTML, CSS and JavaScript embedded in
//! the binary from `daemon/console/`, no build step, nothing fetched from elsewhere), which
//! reads and changes the registry through `/api/v1` with a session cookie, and follows it live
//! through `GET /api/v1/events`.
//!
//! Only on a listener that serves the API and is not the machines' (see `Surfaces::console`).
//! Every route but the login form (and its style sheet) needs a session; every response
//! carries a strict Content-Security-Policy (scripts and styles from this origin only, no
//! inline code, no frames, forms only to this origin).

use axum::Router;
use axum::extract::{ConnectInfo, Form, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::session::{self, SESSION_HOURS};
use super::{ApiError, AppState, PeerAddr};
use crate::store::Session;

const INDEX: &str = include_str!("../../console/index.html");
const LOGIN: &str = include_str!("../../console/login.html");
const APP_JS: &str = include_str!("../../console/app.js");
const STYLE: &str = include_str!("../../console/style.css");

/// Scripts, styles, images and connections from this origin only; no plug-ins, frames or
/// foreign form targets.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub(super) fn routes(state: AppState) -> Router<AppState> {
    let private = Router::new()
        .route("/console/", get(index))
        .route("/console/app.js", get(app_js))
        .route("/console/session", get(session_info))
        .route("/console/logout", axum::routing::post(logout))
        .route_layer(middleware::from_fn_with_state(state, require_session));
    Router::new()
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route("/console/login", get(login_page).post(login))
        .route("/console/style.css", get(style))
        .merge(private)
        .layer(middleware::map_response(security_headers))
}

async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
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
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// A session, or: a page is sent to the login form, anything else gets 401. The session
/// found is handed to the handler (an extension), which does not look it up again.
async fn require_session(
    State(state): State<AppState>,
    mut request: axum::extract::Request,
    next: Next,
) -> Response {
    match session::session(&state, request.headers()).await {
        Ok(Some(found)) => {
            request.extensions_mut().insert(found);
            next.run(request).await
        }
        Ok(None) if request.uri().path() == "/console/" => {
            Redirect::to("/console/login").into_response()
        }
        Ok(None) => {
            ApiError::unauthorized("log in to the console first (/console/login)").into_response()
        }
        Err(e) => e.into_response(),
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        INDEX,
    )
        .into_response()
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

fn login_form(status: StatusCode, error: Option<&str>) -> Response {
    let message = match error {
        Some(e) => format!("<p class=\"error\" role=\"alert\" id=\"login-error\">{e}</p>"),
        None => String::new(),
    };
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        LOGIN.replace("<!--error-->", &message),
    )
        .into_response()
}

async fn login_page() -> Response {
    login_form(StatusCode::OK, None)
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

/// The login form's POST: the API token in exchange for a session cookie.
async fn login(
    State(state): State<AppState>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let https = state.console_https();
    // A login another site's page submits would log the browser in to the attacker's
    // session on some other daemon; refuse it like any cross-site write.
    if let Err(e) = session::same_origin(&headers, https) {
        tracing::warn!(%peer, "console login from another site refused");
        return e.into_response();
    }
    let Ok(Form(form)) = form else {
        return login_form(
            StatusCode::BAD_REQUEST,
            Some("The form needs the API token (field token)."),
        );
    };
    match state
        .auth_failures
        .check(peer.ip(), || state.token.matches(form.token.trim()))
    {
        super::throttle::Verdict::Accepted => {}
        super::throttle::Verdict::Refused(failures) => {
            // No delay here (it would hold a connection slot): the source address pays
            // instead, with a bounded number of guesses per window; the token's 256 bits do
            // the rest.
            state.metrics.auth_failures.inc(&["console", "refused"]);
            super::throttle::AuthFailures::log("console", &peer.to_string(), failures);
            return login_form(
                StatusCode::UNAUTHORIZED,
                Some(
                    "That is not the API token. It is in the daemon's token file (lacave serve prints where).",
                ),
            );
        }
        super::throttle::Verdict::Throttled(left) => {
            state.metrics.auth_failures.inc(&["console", "throttled"]);
            let secs = left.as_secs().max(1);
            let mut response = login_form(
                StatusCode::TOO_MANY_REQUESTS,
                Some(&format!(
                    "Too many wrong tokens from this address: try again in {secs} s."
                )),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            return response;
        }
    }
    let secret = session::random_secret();
    let record = Session {
        expires: OffsetDateTime::now_utc() + time::Duration::hours(SESSION_HOURS),
        csrf: session::random_secret(),
    };
    let key = session::session_key(&secret);
    if let Err(e) = super::blocking(&state, move |store| store.create_session(&key, &record)).await
    {
        return e.into_response();
    }
    tracing::info!(%peer, "console login");
    let mut response = Redirect::to("/console/").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session::set_cookie(Some(&secret), https),
    );
    response
}

#[derive(Serialize)]
struct SessionInfo {
    csrf: String,
    #[serde(with = "time::serde::rfc3339")]
    expires: OffsetDateTime,
}

/// The session's CSRF token (readable by this origin's script only) and its expiry.
async fn session_info(axum::Extension(s): axum::Extension<Session>) -> Response {
    axum::Json(SessionInfo {
        csrf: s.csrf,
        expires: s.expires,
    })
    .into_response()
}

async fn logout(
    State(state): State<AppState>,
    axum::Extension(session): axum::Extension<Session>,
    headers: HeaderMap,
) -> Response {
    let https = state.console_https();
    if let Err(e) = session::check_csrf(&headers, &session, https) {
        return e.into_response();
    }
    if let Some(secret) = session::cookie_secret(&headers) {
        let key = session::session_key(secret);
        if let Err(e) = super::blocking(&state, move |store| store.delete_session(&key)).await {
            return e.into_response();
        }
    }
    tracing::info!("console logout");
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::set_cookie(None, https));
    response
}
