//! Who may call the API: the bearer of the token kept in `baton.token` beside the database
//! (mode 0600, created once, stable across restarts), by `Authorization: Bearer`, by the
//! `baton_token` cookie, or by `?token=` (which sets that cookie, HttpOnly and
//! SameSite=Strict, for the browser). Mutating calls also refuse cross-site requests.
//!
//! Invariant: a refusal says nothing (401 or 403 with an empty body), and tokens are
//! compared in constant time.

use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{AppState, HttpError, Result};

pub(crate) const COOKIE: &str = "baton_token";

/// Reads the token file, or creates it (0600) with 32 random bytes from the OS.
pub(crate) fn load_or_create_token(path: &Path) -> Result<String> {
    let err = |source| HttpError::File {
        path: path.to_owned(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => {
            let mode = std::fs::metadata(path).map_err(err)?.permissions().mode();
            if mode & 0o077 != 0 {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(err)?;
            }
            return Ok(s.trim().to_owned());
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(err)?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    // Two processes may start at once: the first to create the file wins, the other reads it.
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut f) => {
            f.write_all(format!("{token}\n").as_bytes()).map_err(err)?;
            f.sync_all().map_err(err)?;
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let s = std::fs::read_to_string(path).map_err(err)?;
            Ok(s.trim().to_owned())
        }
        Err(e) => Err(err(e)),
    }
}

/// Writes a small file readable by its owner only.
pub(crate) fn write_private(path: &Path, text: &str) -> Result<()> {
    let err = |source| HttpError::File {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("http.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// The `token` query parameter, if any.
pub(crate) fn query_token(query: Option<&str>) -> Option<&str> {
    query?.split('&').find_map(|kv| kv.strip_prefix("token="))
}

/// Whether a request carries the token (any of the three ways).
pub(crate) fn authorised(token: &str, req: &Request) -> bool {
    let t = token.as_bytes();
    [
        bearer(req.headers()),
        cookie(req.headers()),
        query_token(req.uri().query()),
    ]
    .into_iter()
    .flatten()
    .any(|given| same(given.as_bytes(), t))
}

/// The cookie that lets a browser keep the token after one `?token=` link.
pub(crate) fn set_cookie(token: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"
    ))
    .ok()
}

/// A mutating request whose `Origin` is another site (or that the browser marks
/// cross-site). Requests without `Origin` (curl, scripts) are not cross-site.
pub(crate) fn cross_site(req: &Request) -> bool {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return false;
    }
    let h = req.headers();
    if h.get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site")
    {
        return true;
    }
    let Some(origin) = h.get(header::ORIGIN) else {
        return false;
    };
    let host = h.get(header::HOST).and_then(|v| v.to_str().ok());
    match (origin.to_str().ok(), host) {
        (Some(o), Some(host)) => o != format!("http://{host}"),
        _ => true,
    }
}

/// The middleware of every `/api/` route.
pub(crate) async fn require_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    if !authorised(&state.token, &req) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
        )
            .into_response();
    }
    if cross_site(&req) {
        return StatusCode::FORBIDDEN.into_response();
    }
    let via_query = query_token(req.uri().query()).is_some();
    let mut resp = next.run(req).await;
    if via_query && let Some(c) = set_cookie(&state.token) {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, headers: &[(&str, &str)]) -> Request {
        let mut b = axum::http::Request::builder().method(method).uri("/api/x");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn only_the_exact_token_is_accepted_by_any_of_the_three_ways() {
        let r = req(Method::GET, &[("authorization", "Bearer abc")]);
        assert!(authorised("abc", &r));
        assert!(!authorised("abcd", &r));
        let r = req(Method::GET, &[("cookie", "x=1; baton_token=abc")]);
        assert!(authorised("abc", &r));
        let r = axum::http::Request::builder()
            .uri("/api/x?a=1&token=abc")
            .body(axum::body::Body::empty())
            .unwrap();
        assert!(authorised("abc", &r));
        assert!(!authorised("abc", &req(Method::GET, &[])));
    }

    #[test]
    fn mutating_requests_from_another_origin_are_cross_site() {
        let own = [("host", "127.0.0.1:8"), ("origin", "http://127.0.0.1:8")];
        assert!(!cross_site(&req(Method::POST, &own)));
        let other = [("host", "127.0.0.1:8"), ("origin", "http://evil.example")];
        assert!(cross_site(&req(Method::POST, &other)));
        assert!(cross_site(&req(Method::DELETE, &other)));
        assert!(
            !cross_site(&req(Method::GET, &other)),
            "reads are not checked"
        );
        assert!(!cross_site(&req(Method::POST, &[("host", "127.0.0.1:8")])));
    }
}
