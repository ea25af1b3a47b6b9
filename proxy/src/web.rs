//! The browser client, served by the proxy itself: the demo call page at `/` (`index.html`,
//! `/app.js`, `/style.css`) and the JavaScript SDK at `/sdk/client.js` (see `proxy/web/`).
//!
//! The files are compiled into the binary (`include_str!`), so the proxy serves them from any
//! working directory and a deploy cannot ship a page that does not match its proxy. Each
//! response carries an ETag derived from the content at compile time and `Cache-Control:
//! no-cache`: browsers revalidate (a cheap 304) instead of running a stale SDK against a newer
//! proxy. The page gets a strict Content-Security-Policy (only its own scripts and styles, only
//! same-origin connections) and `Referrer-Policy: no-referrer`, because its URL may carry a
//! token (`?token=`), which must not leak to any other origin.
//!
//! Endpoints (GET): `/`, `/app.js`, `/style.css`, `/sdk/client.js`.

use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Rejection};

/// The page's Content-Security-Policy. `connect-src 'self'` covers the same-origin `ws://` /
/// `wss://` signaling socket and the dev token fetch; `media-src` admits `MediaStream`s;
/// `img-src data:` is the inline empty favicon (without it the browser logs a 404).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; media-src 'self' blob: mediastream:; \
     connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: u64,
    /// Whether this is a document (gets the CSP and framing headers).
    page: bool,
}

impl Asset {
    const fn new(body: &'static str, content_type: &'static str, page: bool) -> Self {
        Self {
            body,
            content_type,
            etag: fnv1a(body.as_bytes()),
            page,
        }
    }
}

/// FNV-1a 64: a content fingerprint for the ETag, computed at compile time (not a security
/// hash; it only has to change when the file does).
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

static INDEX: Asset = Asset::new(
    include_str!("../web/index.html"),
    "text/html; charset=utf-8",
    true,
);
static APP: Asset = Asset::new(
    include_str!("../web/app.js"),
    "text/javascript; charset=utf-8",
    false,
);
static STYLE: Asset = Asset::new(
    include_str!("../web/style.css"),
    "text/css; charset=utf-8",
    false,
);
static SDK: Asset = Asset::new(
    include_str!("../web/sdk/client.js"),
    "text/javascript; charset=utf-8",
    false,
);

/// The web client's routes; anything else is rejected (not found) for the next filter.
pub fn routes() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let if_none_match = warp::header::optional::<String>("if-none-match");
    let asset = move |asset: &'static Asset| {
        warp::get()
            .and(if_none_match)
            .map(move |tag: Option<String>| reply(asset, tag.as_deref()))
    };
    let index = warp::path::end().and(asset(&INDEX));
    let app = warp::path!("app.js").and(asset(&APP));
    let style = warp::path!("style.css").and(asset(&STYLE));
    let sdk = warp::path!("sdk" / "client.js").and(asset(&SDK));
    index.or(app).unify().or(style).unify().or(sdk).unify()
}

fn reply(asset: &'static Asset, if_none_match: Option<&str>) -> Response {
    let etag = format!("\"{:016x}\"", asset.etag);
    let fresh = if_none_match.is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut response = Response::new(if fresh { "" } else { asset.body }.into());
    if fresh {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
    }
    let headers = response.headers_mut();
    let fixed = |v: &'static str| HeaderValue::from_static(v);
    headers.insert(header::CONTENT_TYPE, fixed(asset.content_type));
    headers.insert(header::CACHE_CONTROL, fixed("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, v);
    }
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, fixed("nosniff"));
    headers.insert(header::REFERRER_POLICY, fixed("no-referrer"));
    if asset.page {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            fixed(CONTENT_SECURITY_POLICY),
        );
        headers.insert(header::X_FRAME_OPTIONS, fixed("DENY"));
        headers.insert(
            "permissions-policy",
            fixed("camera=(self), microphone=(self), display-capture=(self)"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    // Routing (paths, methods, 404s) is tested over real HTTP in tests/tests/long/browser.rs.
    use super::*;

    #[test]
    fn each_file_has_its_type_and_only_the_page_gets_a_csp() {
        for (asset, content_type, needle, page) in [
            (&INDEX, "text/html; charset=utf-8", "<!doctype html>", true),
            (
                &APP,
                "text/javascript; charset=utf-8",
                "from '/sdk/client.js'",
                false,
            ),
            (&STYLE, "text/css; charset=utf-8", "body", false),
            (
                &SDK,
                "text/javascript; charset=utf-8",
                "export class RtcdClient",
                false,
            ),
        ] {
            let r = reply(asset, None);
            assert_eq!(r.status(), StatusCode::OK);
            let h = r.headers();
            assert_eq!(h[header::CONTENT_TYPE], content_type);
            assert_eq!(h[header::CACHE_CONTROL], "no-cache");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
            assert_eq!(h.contains_key(header::CONTENT_SECURITY_POLICY), page);
            assert!(asset.body.contains(needle), "{content_type}: {needle}");
        }
        assert!(CONTENT_SECURITY_POLICY.starts_with("default-src 'none'"));
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    }

    #[test]
    fn revalidation_with_the_etag_is_a_304_and_a_stale_tag_gets_the_file() {
        let tag = reply(&SDK, None).headers()[header::ETAG]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(reply(&SDK, Some(&tag)).status(), StatusCode::NOT_MODIFIED);
        let listed = format!("\"x\", {tag}");
        assert_eq!(
            reply(&SDK, Some(&listed)).status(),
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(
            reply(&SDK, Some("\"0000000000000000\"")).status(),
            StatusCode::OK
        );
        let others: Vec<_> = [&INDEX, &APP, &STYLE]
            .iter()
            .map(|a| reply(a, None).headers()[header::ETAG].clone())
            .collect();
        assert!(
            others.iter().all(|t| t != tag.as_str()),
            "each file has its own tag"
        );
    }
}
