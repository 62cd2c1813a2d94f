//! The page files, embedded in the binary so the dashboard works offline
//! and no script is served that this repository does not contain.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

const LOGIN_HTML: &str = include_str!("../assets/login.html");
const APP_HTML: &str = include_str!("../assets/app.html");

/// `(name, content type, body)` of every static file.
const FILES: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/app.js"),
    ),
    (
        "chart.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/chart.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../assets/style.css"),
    ),
];

/// `GET /static/{file}`: public, like the login page.
pub(crate) async fn serve(Path(file): Path<String>) -> Response {
    match FILES.iter().find(|(name, _, _)| *name == file) {
        Some((_, mime, body)) => {
            let mut res = (*body).into_response();
            let h = res.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            res
        }
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}

/// Escapes text for HTML element content and attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The login page, with an error line after a failed attempt.
pub(crate) fn login_html(error: Option<&str>) -> Html<String> {
    let line = error
        .map(|e| format!("<p class=\"error\" id=\"login-error\">{}</p>", escape(e)))
        .unwrap_or_default();
    Html(LOGIN_HTML.replace("<!--error-->", &line))
}

/// A dashboard page: `view` picks what app.js draws; the CSRF token goes in
/// a meta tag for scripts and in the logout form.
pub(crate) fn app_html(view: &str, user: &str, csrf: &str) -> Html<String> {
    Html(
        APP_HTML
            .replace("{{view}}", view)
            .replace("{{user}}", &escape(user))
            .replace("{{csrf}}", &escape(csrf)),
    )
}
