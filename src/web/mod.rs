//! The web UI: the character creator, the player character sheet and the DM roster, and their
//! assets. The pages are plain HTML, CSS and ES modules embedded in the binary (no build step);
//! they talk to `/api` like any client. Each page is its `<main>` in `assets/<page>.html`, set in
//! the one shell `assets/page.html` (head, top bar) when first served, with the shared
//! fragments (`assets/portrait-placeholder.html`) filled in.
//!
//! This module only makes the responses; `api::ui` routes them (`/`, `/characters/{id}`,
//! `/campaigns/{id}`, `/static/*`) and answers a missing file in the API's error shape. The
//! pages need no credentials: they carry no data, and they sign in with a token kept in the
//! browser (see `assets/auth.js`).

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use std::sync::LazyLock;

/// One embedded file: its URL name, content type and bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $ty:expr) => {
        Asset {
            name: $name,
            content_type: $ty,
            body: include_bytes!(concat!("assets/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Everything under `/static/`.
const ASSETS: &[Asset] = &[
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("api.js", JS),
    asset!("auth.js", JS),
    asset!("schema.js", JS),
    asset!("jobs.js", JS),
    asset!("creator.js", JS),
    asset!("sheet.js", JS),
    asset!("roster.js", JS),
    asset!("favicon.svg", "image/svg+xml"),
];

/// The UI's pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// `/`: create and edit a character, generate its portrait.
    Creator,
    /// `/characters/{id}`: the player's character sheet.
    Sheet,
    /// `/campaigns/{id}`: the DM's roster.
    Roster,
}

const SHELL: &str = include_str!("assets/page.html");
/// The empty portrait frame the creator and the sheet both show.
const PORTRAIT_PLACEHOLDER: &str = include_str!("assets/portrait-placeholder.html");

impl Page {
    const ALL: [Page; 3] = [Page::Creator, Page::Sheet, Page::Roster];

    /// (title, module script, `<main>` content).
    fn parts(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Page::Creator => (
                "Character creator",
                "creator.js",
                include_str!("assets/creator.html"),
            ),
            Page::Sheet => (
                "Character sheet",
                "sheet.js",
                include_str!("assets/sheet.html"),
            ),
            Page::Roster => (
                "Campaign roster",
                "roster.js",
                include_str!("assets/roster.html"),
            ),
        }
    }

    /// The whole document: the page's parts set in the shell.
    fn render(self) -> String {
        let (title, script, main) = self.parts();
        let current = if self == Page::Creator {
            r#" aria-current="page""#
        } else {
            ""
        };
        SHELL
            .replace("{title}", title)
            .replace("{script}", script)
            .replace("{current}", current)
            .replace("{main}", main)
            .replace("{portrait-placeholder}", PORTRAIT_PLACEHOLDER.trim_end())
    }

    /// The rendered document, made once.
    fn html(self) -> &'static str {
        static RENDERED: LazyLock<Vec<String>> =
            LazyLock::new(|| Page::ALL.iter().map(|p| p.render()).collect());
        &RENDERED[self as usize]
    }
}

/// Content Security Policy of every page: only our own scripts, styles, images and API.
const CSP: &str = "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; \
                   script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
                   frame-ancestors 'none'; form-action 'self'";

/// Headers shared by pages and assets. `no-cache` because the files change with the binary;
/// `no-referrer` so a `?token=` sign-in link never leaks through a Referer header.
fn common_headers(resp: &mut Response, content_type: &'static str) {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

/// A page, with the headers every page carries.
pub fn page(page: Page) -> Response {
    let mut resp = page.html().into_response();
    common_headers(&mut resp, "text/html; charset=utf-8");
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    resp
}

fn find_asset(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == path)
}

/// An embedded file under `/static/`, or `None` when there is no such file.
pub fn static_file(path: &str) -> Option<Response> {
    find_asset(path).map(|a| {
        let mut resp = a.body.into_response();
        common_headers(&mut resp, a.content_type);
        resp
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_a_page_imports_is_embedded() {
        // A page or module that imports a file we forgot to embed would 404 in the browser.
        let mut sources: Vec<&str> = Page::ALL.iter().map(|p| p.html()).collect();
        for a in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            sources.push(std::str::from_utf8(a.body).expect("assets are UTF-8"));
        }
        let re = regex::Regex::new(r#"(?:from\s+|src=|href=)["'](?:\./|/static/)([\w.-]+)["']"#)
            .expect("valid regex");
        let mut seen = 0;
        for src in sources {
            for cap in re.captures_iter(src) {
                seen += 1;
                assert!(find_asset(&cap[1]).is_some(), "{} is not embedded", &cap[1]);
            }
        }
        assert!(
            seen > 5,
            "found only {seen} references; is the regex still right?"
        );
    }

    #[test]
    fn every_page_is_a_whole_document_with_its_own_script() {
        for p in Page::ALL {
            let (title, script, _) = p.parts();
            let html = p.html();
            assert!(html.starts_with("<!doctype html>"), "{p:?}");
            assert!(
                html.contains(&format!("<title>{title} · limner</title>")),
                "{p:?}"
            );
            assert!(html.contains(&format!("src=\"/static/{script}\"")), "{p:?}");
            assert_eq!(html.matches("<main ").count(), 1, "{p:?}");
            assert!(
                !html.contains("{main}") && !html.contains("{title}"),
                "{p:?}"
            );
            assert!(html.trim_end().ends_with("</html>"), "{p:?}");
        }
        assert!(Page::Creator
            .html()
            .contains(r#"<a href="/" aria-current="page">"#));
        assert!(!Page::Sheet.html().contains("aria-current"));
        assert!(Page::Sheet.html().contains(r#"id="placeholder""#));
    }

    #[test]
    fn unknown_static_files_are_not_found() {
        assert!(find_asset("style.css").is_some());
        assert!(find_asset("../Cargo.toml").is_none());
        assert!(find_asset("").is_none());
    }
}
