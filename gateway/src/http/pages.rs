//! The built-in pages: the operator console (`/console`) and the demo chat (`/demo`), with
//! their scripts and the two client libraries they load, embedded in the binary at build time
//! (gateway/web/), so a node needs no web server beside it. `--console=false` leaves them out.
//!
//! The pages hold no secret: the console asks its user for the API key or an admin token and
//! keeps it in the tab's `sessionStorage`; the demo gets a token from `/api/dev/token` in
//! `--dev`, or has one pasted.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One embedded file, served at `/assets/{name}`.
struct Asset {
    name: &'static str,
    mime: &'static str,
    body: &'static [u8],
}

/// `asset!("name", mime)` from `gateway/web/`, `asset!("dir/", "name", mime)` from a folder in it.
macro_rules! asset {
    ($name:literal, $mime:expr) => {
        asset!("", $name, $mime)
    };
    ($dir:literal, $name:literal, $mime:expr) => {
        Asset {
            name: $name,
            mime: $mime,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/", $dir, $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Everything under `/assets/`. The client libraries are vendored at the versions the
/// end-to-end suite's lockfile pins (gateway/web/vendor/README.md; a test compares the bytes).
static ASSETS: &[Asset] = &[
    asset!("switchboard.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("console.js", JS),
    asset!("demo.js", JS),
    asset!("common.js", JS),
    asset!("vendor/", "socket.io.min.js", JS),
    asset!("vendor/", "phoenix.min.js", JS),
];

static CONSOLE: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/console.html"));
static DEMO: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/demo.html"));

/// Scripts and styles from this node only; no inline script, no framing by other sites.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page routes.
pub(super) fn routes() -> Router {
    Router::new()
        .route("/console", get(console))
        .route("/demo", get(demo))
        .route("/assets/{name}", get(asset))
}

/// The operator console (a page; it asks for the API key or an admin token).
#[utoipa::path(get, path = "/console", tag = "console",
    responses((status = 200, description = "The console page", body = String, content_type = "text/html")))]
pub(super) async fn console() -> Response {
    page(CONSOLE)
}

/// The demo chat (a page; Socket.IO or Phoenix).
#[utoipa::path(get, path = "/demo", tag = "console",
    responses((status = 200, description = "The demo chat page", body = String, content_type = "text/html")))]
pub(super) async fn demo() -> Response {
    page(DEMO)
}

fn page(body: &'static [u8]) -> Response {
    let mut response = (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response();
    secure(&mut response);
    response
}

/// A script, stylesheet or icon of the pages.
#[utoipa::path(get, path = "/assets/{name}", tag = "console",
    params(("name" = String, Path, description = "The file, e.g. `console.js` or `phoenix.min.js`")),
    responses(
        (status = 200, description = "The file", body = String, content_type = "text/javascript"),
        (status = 404, description = "No such asset", body = String, content_type = "text/plain"),
    ))]
pub(super) async fn asset(Path(name): Path<String>) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    let mut response = (
        [
            (header::CONTENT_TYPE, asset.mime),
            // The binary's version names the assets: a new build is a new page load anyway.
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        asset.body,
    )
        .into_response();
    secure(&mut response);
    response
}

fn secure(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_embedded_and_pages_load_only_listed_assets() {
        for asset in ASSETS {
            assert!(!asset.body.is_empty(), "{} is empty", asset.name);
        }
        for page in [CONSOLE, DEMO] {
            let html = String::from_utf8_lossy(page);
            for src in html.split("\"/assets/").skip(1) {
                let name = src.split('"').next().unwrap_or_default();
                assert!(
                    ASSETS.iter().any(|a| a.name == name),
                    "a page loads /assets/{name}, which is not embedded"
                );
            }
        }
    }
}
