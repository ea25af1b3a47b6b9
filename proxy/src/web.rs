//! The browser client, served by the proxy itself: the demo call page at `/` (`index.html`,
//! `/app.js`, `/style.css`, see `proxy/web/`) and the SDK at `/sdk/client.js` with the modules
//! it imports (`/sdk/<module>.js`): the built JavaScript of the TypeScript package in `sdk/`,
//! committed in `sdk/dist/` so that building the proxy needs no node.
//!
//! The files are compiled into the binary (`include_str!`), so the proxy serves them from any
//! working directory and a deploy cannot ship a page that does not match its proxy. Each
//! response carries an ETag derived from the content at compile time and `Cache-Control:
//! no-cache`: browsers revalidate (a cheap 304) instead of running a stale SDK against a newer
//! proxy. The page gets a strict Content-Security-Policy (only its own scripts and styles, only
//! same-origin connections) and `Referrer-Policy: no-referrer`, because its URL may carry a
//! token (`?token=`), which must not leak to any other origin.
//!
//! Endpoints (GET): `/`, `/app.js`, `/style.css`, `/sdk/<file>.js` for each file of `SDK`. The
//! type declarations (`.d.ts`) are not served: they are for the package's users, not browsers.

use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Rejection};

/// The page's Content-Security-Policy. `connect-src 'self'` covers the same-origin `ws://` /
/// `wss://` signaling socket and the dev token fetch; `media-src` admits `MediaStream`s;
/// `img-src data:` is the inline empty favicon (without it the browser logs a 404);
/// `worker-src 'self'` admits the SDK's end-to-end encryption worker (`/sdk/e2ee/worker.js`,
/// a module worker behind `RTCRtpScriptTransform`) and nothing from elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; media-src 'self' blob: mediastream:; \
     connect-src 'self'; worker-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

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

/// One built SDK module: its path under `/sdk/` (and `sdk/dist/`) and its embedded content.
macro_rules! sdk_module {
    ($path:literal) => {
        (
            $path,
            Asset::new(
                include_str!(concat!("../../sdk/dist/", $path)),
                "text/javascript; charset=utf-8",
                false,
            ),
        )
    };
}

/// The SDK's modules: every `.js` file of `sdk/dist/`, which the unit test below checks, so a
/// new module cannot be left out.
static SDK: &[(&str, Asset)] = &[
    sdk_module!("client.js"),
    sdk_module!("connection.js"),
    sdk_module!("devices.js"),
    sdk_module!("e2ee/cryptor.js"),
    sdk_module!("e2ee/frame.js"),
    sdk_module!("e2ee/keys.js"),
    sdk_module!("e2ee/session.js"),
    sdk_module!("e2ee/worker.js"),
    sdk_module!("errors.js"),
    sdk_module!("events.js"),
    sdk_module!("health.js"),
    sdk_module!("layers.js"),
    sdk_module!("negotiation.js"),
    sdk_module!("protocol.js"),
    sdk_module!("quality.js"),
    sdk_module!("views.js"),
];

/// The SDK file at `path` under `/sdk/`, if there is one.
fn sdk_file(path: &str) -> Option<&'static Asset> {
    SDK.iter().find(|(p, _)| *p == path).map(|(_, a)| a)
}

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
    let sdk = warp::get()
        .and(warp::path("sdk"))
        .and(warp::path::tail())
        .and_then(|tail: warp::path::Tail| async move {
            sdk_file(tail.as_str()).ok_or_else(warp::reject::not_found)
        })
        .and(if_none_match)
        .map(|asset: &'static Asset, tag: Option<String>| reply(asset, tag.as_deref()));
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
                sdk_file("client.js").unwrap(),
                "text/javascript; charset=utf-8",
                "export class RtcdClient",
                false,
            ),
            (
                sdk_file("connection.js").unwrap(),
                "text/javascript; charset=utf-8",
                "export class Connection",
                false,
            ),
            (
                sdk_file("e2ee/worker.js").unwrap(),
                "text/javascript; charset=utf-8",
                "onrtctransform",
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
        // The e2ee worker is a same-origin module; no blob: or data: workers.
        assert!(CONTENT_SECURITY_POLICY.contains("worker-src 'self';"));
    }

    /// The CSP (`style-src 'self'`, `script-src 'self'`) would block inline styles and
    /// scripts, silently: the page must need none (app.js sets styles from script, which the
    /// CSP allows).
    #[test]
    fn the_page_has_no_inline_style_or_script() {
        let page = INDEX.body;
        assert!(!page.contains(" style="), "a style attribute in index.html");
        assert!(!page.contains("<style"), "a <style> block in index.html");
        for script in page.split("<script").skip(1) {
            assert!(
                script
                    .split('>')
                    .next()
                    .unwrap_or_default()
                    .contains("src="),
                "an inline <script> in index.html"
            );
        }
        assert!(
            !APP.body.contains("innerHTML"),
            "app.js builds its DOM with nodes"
        );
    }

    #[test]
    fn revalidation_with_the_etag_is_a_304_and_a_stale_tag_gets_the_file() {
        let sdk = sdk_file("client.js").unwrap();
        let tag = reply(sdk, None).headers()[header::ETAG]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(reply(sdk, Some(&tag)).status(), StatusCode::NOT_MODIFIED);
        let listed = format!("\"x\", {tag}");
        assert_eq!(reply(sdk, Some(&listed)).status(), StatusCode::NOT_MODIFIED);
        assert_eq!(
            reply(sdk, Some("\"0000000000000000\"")).status(),
            StatusCode::OK
        );
        let others: Vec<_> = [&INDEX, &APP, &STYLE]
            .into_iter()
            .chain(SDK.iter().skip(1).map(|(_, a)| a))
            .map(|a| reply(a, None).headers()[header::ETAG].clone())
            .collect();
        assert!(
            others.iter().all(|t| t != tag.as_str()),
            "each file has its own tag"
        );
    }

    /// `SDK` lists exactly the `.js` files of `sdk/dist/` (at any depth): a module added to
    /// the SDK and imported by another would otherwise be a 404 in the browser.
    #[test]
    fn the_sdk_table_lists_exactly_the_built_modules() {
        fn walk(dir: &std::path::Path, under: &str, found: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let entry = entry.unwrap();
                let name = entry.file_name().into_string().unwrap();
                let path = format!("{under}{name}");
                if entry.file_type().unwrap().is_dir() {
                    walk(&entry.path(), &format!("{path}/"), found);
                } else if name.ends_with(".js") {
                    found.push(path);
                }
            }
        }
        let dist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/dist");
        let mut on_disk = Vec::new();
        walk(&dist, "", &mut on_disk);
        on_disk.sort();
        let mut listed: Vec<String> = SDK.iter().map(|(p, _)| (*p).to_owned()).collect();
        listed.sort();
        assert_eq!(listed, on_disk, "proxy/src/web.rs SDK vs sdk/dist");
        for (path, asset) in SDK {
            let file = std::fs::read_to_string(dist.join(path)).unwrap();
            assert_eq!(asset.body, file, "{path} is embedded as built");
        }
    }
}
