//! Who a request comes from: the API token (`Authorization: Bearer`, the CLI) or a console
//! session (a cookie set by logging in with that token), and the cross-site checks a
//! cookie-authenticated request must pass.
//!
//! A session is a random 256-bit secret in an HttpOnly, SameSite=Strict cookie (Secure on
//! the HTTPS listener) that expires after [`SESSION_HOURS`]; the registry stores only its
//! SHA-256 with the expiry and a CSRF token. A state-changing request authenticated by the
//! cookie must also (1) carry that CSRF token in `X-Lacave-Csrf`, which a page of another
//! site cannot read or set, and (2) not come from another origin by its `Origin` or
//! `Sec-Fetch-Site` headers. SameSite=Strict alone would keep the cookie off cross-site
//! requests in today's browsers; the other two hold without it.

use axum::http::{HeaderMap, HeaderValue, Method, header};
use base64::Engine;
use sha2::{Digest, Sha256};

use super::{ApiError, AppState};
use crate::secrets::constant_time_eq;
use crate::store::Session;

/// How long a console login lasts.
pub const SESSION_HOURS: i64 = 12;
/// The session cookie's name.
pub const COOKIE: &str = "lacave_session";
/// The header carrying the session's CSRF token on state-changing requests.
pub const CSRF_HEADER: &str = "x-lacave-csrf";

/// How the request was authenticated (a request extension under `/api/v1`).
#[derive(Clone, Debug)]
pub enum Auth {
    Token,
    Session,
}

/// A new random secret, URL-safe base64 (256 bits).
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The registry key of a session: the SHA-256 of its secret.
pub fn session_key(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The session cookie's value, if the request carries one.
pub fn cookie_secret(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
        .filter(|v| !v.is_empty() && v.len() <= 64)
}

/// The live session the request's cookie names, if any.
pub async fn session(state: &AppState, headers: &HeaderMap) -> Result<Option<Session>, ApiError> {
    let Some(secret) = cookie_secret(headers) else {
        return Ok(None);
    };
    let key = session_key(secret);
    super::blocking(state, move |store| store.session(&key)).await
}

/// `Set-Cookie` for a new session, or (`None`) one that ends the browser's.
pub fn set_cookie(secret: Option<&str>, https: bool) -> HeaderValue {
    let secure = if https { "; Secure" } else { "" };
    let value = match secret {
        Some(secret) => format!(
            "{COOKIE}={secret}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            SESSION_HOURS * 3600
        ),
        None => format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    };
    HeaderValue::from_str(&value).expect("a cookie of URL-safe characters")
}

/// Refuses a request another site's page made: by `Sec-Fetch-Site` (sent by every current
/// browser) or by an `Origin` other than this listener's own.
pub fn same_origin(headers: &HeaderMap, https: bool) -> Result<(), ApiError> {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return Err(ApiError::forbidden(format!(
            "a cross-site request (Sec-Fetch-Site: {site}) cannot use the console's session"
        )));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let expected = format!("{}://{host}", if https { "https" } else { "http" });
        if origin.as_bytes() != expected.as_bytes() {
            return Err(ApiError::forbidden(format!(
                "a request from origin {:?} cannot use the console's session (expected {expected})",
                String::from_utf8_lossy(origin.as_bytes())
            )));
        }
    }
    Ok(())
}

/// Whether the method changes state (and so needs the CSRF checks).
pub fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The checks a cookie-authenticated, state-changing request passes.
pub fn check_csrf(headers: &HeaderMap, session: &Session, https: bool) -> Result<(), ApiError> {
    same_origin(headers, https)?;
    let presented = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !constant_time_eq(&session.csrf, presented) {
        return Err(ApiError::forbidden(format!(
            "a state-changing request with the console's session must carry its CSRF token in {CSRF_HEADER}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; lacave_session=abc; b=2")]);
        assert_eq!(cookie_secret(&h), Some("abc"));
        assert_eq!(cookie_secret(&headers(&[("cookie", "a=1")])), None);
    }

    #[test]
    fn cross_site_requests_are_refused() {
        let session = Session {
            expires: time::OffsetDateTime::now_utc(),
            csrf: "t0k".into(),
        };
        let ok = headers(&[
            ("host", "127.0.0.1:8443"),
            ("origin", "https://127.0.0.1:8443"),
            ("sec-fetch-site", "same-origin"),
            (CSRF_HEADER, "t0k"),
        ]);
        assert!(check_csrf(&ok, &session, true).is_ok());
        for bad in [
            headers(&[
                ("host", "h"),
                ("origin", "https://evil.example"),
                (CSRF_HEADER, "t0k"),
            ]),
            headers(&[
                ("host", "h"),
                ("sec-fetch-site", "cross-site"),
                (CSRF_HEADER, "t0k"),
            ]),
            headers(&[("host", "h"), ("origin", "null"), (CSRF_HEADER, "t0k")]),
            headers(&[("host", "h"), ("origin", "https://h")]),
            headers(&[("host", "h"), (CSRF_HEADER, "wrong")]),
            // The same host over plain HTTP is another origin.
            headers(&[("host", "h"), ("origin", "http://h"), (CSRF_HEADER, "t0k")]),
        ] {
            assert!(check_csrf(&bad, &session, true).is_err(), "{bad:?}");
        }
    }
}
