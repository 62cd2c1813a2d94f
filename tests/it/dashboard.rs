//! The dashboard over HTTP, with a raw HTTP/1.1 client (every route
//! without a session, cookie flags, CSRF, throttling, logout, the SQL API
//! and metrics), and in a real browser (Debian's chromium driven by
//! playwright-core from npm): login, live update after an MQTT publish,
//! a month of history, CSV download, logout.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};

use crate::serve::{serve_on_free_ports, setup, spawn_listening, stop, wattson};

const ADMIN_PASSWORD: &str = "a long admin password";
const VIEWER_PASSWORD: &str = "a long viewer password";

/// A running `wattson serve` and its ports.
struct Server {
    child: Child,
    mqtt: u16,
    http: u16,
    metrics: u16,
}

fn start(data: &Path) -> Server {
    start_with(data, &[])
}

fn start_with(data: &Path, extra: &[&str]) -> Server {
    let mut cmd = serve_on_free_ports(
        data,
        &[
            "--dashboard-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    cmd.args(extra);
    let (child, ports) = spawn_listening(
        &mut cmd,
        &[
            ("meters listening", "listen"),
            ("dashboard listening", "dashboard_listen"),
            ("metrics listening", "metrics_listen"),
        ],
    );
    Server {
        child,
        mqtt: ports[0],
        http: ports[1],
        metrics: ports[2],
    }
}

fn add_viewer(data: &Path) {
    crate::serve::add_user(data, "vera", "viewer", VIEWER_PASSWORD);
}

#[derive(Debug)]
pub(crate) struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The session id a login set, if any.
    fn session(&self) -> Option<String> {
        let c = self.header("set-cookie")?;
        let v = c.strip_prefix("wattson_session=")?.split(';').next()?;
        (!v.is_empty()).then(|| v.to_owned())
    }
}

/// One request over a fresh connection (`Connection: close`).
pub(crate) fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    http_on(s, port, method, path, headers, body)
}

fn http_on(
    mut s: impl Read + Write,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut rest = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        let mut body = Vec::new();
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size_text = String::from_utf8_lossy(&rest[..eol]).into_owned();
            let size = usize::from_str_radix(size_text.trim(), 16).unwrap();
            if size == 0 {
                break;
            }
            body.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            rest.drain(..eol + 2 + size + 2);
        }
        rest = body;
    }
    Response {
        status,
        headers,
        body: rest,
    }
}

fn login(port: u16, user: &str, password: &str, extra: &[(&str, &str)]) -> Response {
    let body = format!("user={}&password={}", user, password.replace(' ', "+"));
    let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
    headers.extend_from_slice(extra);
    http(port, "POST", "/login", &headers, body.as_bytes())
}

/// The CSRF token of a session, as the page gets it.
fn csrf(port: u16, cookie: &str) -> String {
    let r = http(port, "GET", "/api/session", &[("Cookie", cookie)], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["csrf"].as_str().unwrap().to_owned()
}

#[test]
fn dashboard_refuses_every_route_without_a_session() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    setup(&data);
    let server = start(&data);
    let port = server.http;
    let q = "?table=power&device=m1&from=0&to=1";
    let pages = ["/", "/history", "/fleet", "/no-such-page"];
    let api_get = [
        "/api/session".to_owned(),
        "/api/catalog".to_owned(),
        "/api/live".to_owned(),
        "/api/live/init".to_owned(),
        format!("/api/history{q}"),
        format!("/api/kwh{q}"),
        format!("/api/export{q}"),
        "/api/fleet".to_owned(),
        "/metrics".to_owned(),
        "/api/nothing".to_owned(),
    ];
    let api_post = ["/api/query", "/api/token", "/logout", "/api/session"];
    let bogus = "wattson_session=00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    for cookie in [None, Some(bogus)] {
        let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("Cookie", *c)).collect();
        for page in pages {
            let r = http(port, "GET", page, &headers, b"");
            assert_eq!(r.status, 303, "GET {page} with {cookie:?}");
            assert_eq!(r.header("location"), Some("/login"), "GET {page}");
        }
        for path in &api_get {
            let r = http(port, "GET", path, &headers, b"");
            assert_eq!(r.status, 401, "GET {path} with {cookie:?}: {}", r.text());
            assert!(r.text().contains("\"error\""), "GET {path}: {}", r.text());
        }
        for path in api_post {
            let r = http(port, "POST", path, &headers, b"select 1");
            assert!(
                r.status == 401 || (path == "/logout" && r.status == 303),
                "POST {path} with {cookie:?}: {} {}",
                r.status,
                r.text()
            );
        }
        // A bearer token that is not one.
        let r = http(
            port,
            "POST",
            "/api/query",
            &[("Authorization", "Bearer wsn_nope")],
            b"select 1",
        );
        assert_eq!(r.status, 401);
    }
    // Public: the login page and the static files, with the security headers.
    let r = http(port, "GET", "/login", &[], b"");
    assert_eq!(r.status, 200);
    let csp = r.header("content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert!(
        !r.text().contains("<script>"),
        "no inline script on the login page"
    );
    for file in ["app.js", "chart.js", "style.css"] {
        let r = http(port, "GET", &format!("/static/{file}"), &[], b"");
        assert_eq!(r.status, 200, "{file}");
    }
    stop(server.child);
}

#[test]
fn dashboard_sessions_cookies_csrf_logout_api_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    setup(&data);
    add_viewer(&data);
    import_month(dir.path(), &data);
    let server = start(&data);
    let port = server.http;

    // A wrong password: no cookie.
    let r = login(port, "admin", "wrong password here", &[]);
    assert_eq!(r.status, 401);
    assert!(r.session().is_none());
    assert!(
        r.text().contains("invalid name or password"),
        "{}",
        r.text()
    );

    // A right one: a fresh 256-bit id with the flags, replacing any id the
    // browser already had.
    let planted =
        "wattson_session=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let r = login(port, "admin", ADMIN_PASSWORD, &[("Cookie", planted)]);
    assert_eq!(r.status, 303);
    let set = r.header("set-cookie").unwrap().to_owned();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(set.contains(flag), "{flag} missing: {set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: no Secure flag: {set}");
    let id = r.session().unwrap();
    assert_eq!(id.len(), 64);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(!planted.ends_with(&id));
    let second = login(port, "admin", ADMIN_PASSWORD, &[]).session().unwrap();
    assert_ne!(id, second, "every login gets a new id");
    let cookie = format!("wattson_session={id}");

    let page = http(port, "GET", "/", &[("Cookie", &cookie)], b"");
    assert_eq!(page.status, 200);
    assert!(page.header("content-security-policy").is_some());
    let token = csrf(port, &cookie);
    assert!(
        page.text().contains(&token),
        "the page carries its CSRF token"
    );

    // CSRF: a state-changing request needs the token, and a foreign Origin
    // is refused even with it.
    let sql = b"SELECT 1 AS one";
    let with = |extra: &[(&'static str, &str)]| {
        let mut h = vec![("Cookie", cookie.as_str())];
        h.extend_from_slice(extra);
        http(port, "POST", "/api/query", &h, sql)
    };
    assert_eq!(with(&[]).status, 403);
    assert_eq!(with(&[("X-CSRF-Token", "0123")]).status, 403);
    assert_eq!(with(&[("X-CSRF-Token", &second)]).status, 403);
    let foreign = with(&[("X-CSRF-Token", &token), ("Origin", "http://evil.example")]);
    assert_eq!(foreign.status, 403, "{}", foreign.text());
    let same = format!("http://127.0.0.1:{port}");
    let ok = with(&[("X-CSRF-Token", &token), ("Origin", &same)]);
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.text(), r#"[{"one":1}]"#);
    let csv = with(&[("X-CSRF-Token", &token), ("Accept", "text/csv")]);
    assert_eq!(csv.text(), "one\n1\n");
    let arrow = with(&[
        ("X-CSRF-Token", &token),
        ("Accept", "application/vnd.apache.arrow.stream"),
    ]);
    assert_eq!(
        arrow.header("content-type"),
        Some("application/vnd.apache.arrow.stream")
    );
    assert!(arrow.body.len() > 100);
    let logout_form = |t: &str| {
        http(
            port,
            "POST",
            "/logout",
            &[
                ("Cookie", cookie.as_str()),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            format!("csrf={t}").as_bytes(),
        )
    };
    assert_eq!(logout_form("wrong").status, 403);

    // The read-only rules hold on the API.
    let write = with(&[
        ("X-CSRF-Token", &token),
        ("Content-Type", "application/json"),
    ]);
    assert_eq!(write.status, 400, "SELECT 1 sent as JSON is not an object");
    let copy = http(
        port,
        "POST",
        "/api/query",
        &[("Cookie", &cookie), ("X-CSRF-Token", &token)],
        b"COPY (SELECT 1) TO '/tmp/wattson-dashboard-copy.csv'",
    );
    assert_eq!(copy.status, 400, "{}", copy.text());
    assert!(copy.text().contains("read-only"), "{}", copy.text());

    // Bearer tokens for curl: analysts and admins only.
    use base64_basic as b64;
    let basic = |u: &str, p: &str| format!("Basic {}", b64(&format!("{u}:{p}")));
    let t = http(
        port,
        "POST",
        "/api/token",
        &[("Authorization", &basic("admin", ADMIN_PASSWORD))],
        b"",
    );
    assert_eq!(t.status, 200, "{}", t.text());
    let v: serde_json::Value = serde_json::from_slice(&t.body).unwrap();
    let bearer = format!("Bearer {}", v["token"].as_str().unwrap());
    let r = http(
        port,
        "POST",
        "/api/query",
        &[("Authorization", &bearer)],
        b"SELECT name FROM system.ingest WHERE name = 'lost_acknowledged'",
    );
    assert_eq!(r.text(), r#"[{"name":"lost_acknowledged"}]"#);
    let viewer = http(
        port,
        "POST",
        "/api/token",
        &[("Authorization", &basic("vera", VIEWER_PASSWORD))],
        b"",
    );
    assert_eq!(viewer.status, 403, "{}", viewer.text());
    let vera = login(port, "vera", VIEWER_PASSWORD, &[]).session().unwrap();
    let vera_cookie = format!("wattson_session={vera}");
    let vera_token = csrf(port, &vera_cookie);
    let r = http(
        port,
        "POST",
        "/api/query",
        &[("Cookie", &vera_cookie), ("X-CSRF-Token", &vera_token)],
        sql,
    );
    assert_eq!(r.status, 403, "viewers see the dashboard, not SQL");
    assert_eq!(
        http(port, "GET", "/fleet", &[("Cookie", &vera_cookie)], b"").status,
        200
    );

    // Metrics: open on the metrics listener, refused on the main port.
    let m = http(server.metrics, "GET", "/metrics", &[], b"");
    assert_eq!(m.status, 200);
    for name in [
        "wattson_mqtt_readings_stored_total",
        "wattson_mqtt_puback_latency_seconds_bucket",
        "wattson_wal_fsync_seconds_bucket",
        "wattson_storage_bytes_on_disk",
        "wattson_http_queries_total",
        "wattson_http_query_duration_seconds_bucket",
    ] {
        assert!(m.text().contains(name), "{name} missing");
    }
    assert!(m.text().contains("\nwattson_store_writable 1\n"));
    assert!(m.text().contains("\nwattson_store_background_failing 0\n"));
    let r = http(port, "GET", "/metrics", &[("Cookie", &cookie)], b"");
    assert_eq!(r.status, 401);

    // Chart requests: bad ranges and channels are explained, never
    // answered with silently wrong or empty data.
    let get = |path: &str| http(port, "GET", path, &[("Cookie", &cookie)], b"");
    let now = chrono::Utc::now().timestamp_millis();
    let q = |channels: &str, from: i64, to: i64| {
        format!("table=power&device=m1&channels={channels}&from={from}&to={to}")
    };
    let kwh = get(&format!("/api/kwh?{}", q("wd_p", now - 86_400_000, now)));
    assert_eq!(kwh.status, 200, "{}", kwh.text());
    assert!(kwh.text().contains("\"wd_p\""), "{}", kwh.text());
    let forever = 9_007_199_254_740_991i64;
    for path in ["history", "kwh", "export"] {
        let r = get(&format!("/api/{path}?{}", q("wd_p", 0, forever)));
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert!(r.text().contains("years 1900 to 2199"), "{}", r.text());
    }
    let volts = get(&format!("/api/kwh?{}", q("pa_v", 0, now)));
    assert_eq!(volts.status, 400, "{}", volts.text());
    assert!(
        volts.text().contains("none of `pa_v` is one"),
        "{}",
        volts.text()
    );
    // Volts next to watts (as the history page's ticked boxes may be): the
    // power channel's bars.
    let both = get(&format!(
        "/api/kwh?{}",
        q("pa_v,wd_p", now - 86_400_000, now)
    ));
    assert_eq!(both.status, 200, "{}", both.text());
    assert!(
        both.text().contains("\"wd_p\"") && !both.text().contains("pa_v"),
        "{}",
        both.text()
    );

    // Logout ends the session on the server; the other session lives on.
    let out = logout_form(&token);
    assert_eq!(out.status, 303);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    let r = http(port, "GET", "/api/session", &[("Cookie", &cookie)], b"");
    assert_eq!(r.status, 401);
    let r = http(port, "GET", "/", &[("Cookie", &cookie)], b"");
    assert_eq!(r.header("location"), Some("/login"));
    let other = format!("wattson_session={second}");
    assert_eq!(
        http(port, "GET", "/api/session", &[("Cookie", &other)], b"").status,
        200
    );
    stop(server.child);
}

/// Standard base64, for Basic credentials.
fn base64_basic(text: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn dashboard_logins_are_throttled_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    setup(&data);
    let server = start(&data);
    let port = server.http;
    // The verifier allows a burst of 30 failures per address (refilled at
    // one a second), then refuses before hashing: 429. Failing faster than
    // the refill reaches it, however slow hashing is here.
    let throttled = std::sync::atomic::AtomicBool::new(false);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|t| {
                let throttled = &throttled;
                s.spawn(move || {
                    let mut seen = Vec::new();
                    for i in 0..60 {
                        if throttled.load(std::sync::atomic::Ordering::SeqCst) {
                            break;
                        }
                        let r = login(port, &format!("nobody{t}-{i}"), "wrong password 1234", &[]);
                        if r.status == 429 {
                            throttled.store(true, std::sync::atomic::Ordering::SeqCst);
                            assert!(r.text().contains("too many failed logins"), "{}", r.text());
                            assert!(r.session().is_none());
                        }
                        seen.push(r.status);
                    }
                    seen
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(
        statuses.iter().all(|s| [401, 429, 503].contains(s)),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&429),
        "no throttling after {} failures",
        statuses.len()
    );
    stop(server.child);
}

// ---- the browser ----

/// playwright-core from npm, installed once under the target directory.
fn playwright() -> Option<PathBuf> {
    const VERSION: &str = "1.65.1";
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("npm-dashboard");
    let module = dir.join("node_modules").join("playwright-core");
    let installed = std::fs::read_to_string(module.join("package.json"))
        .is_ok_and(|p| p.contains(&format!("\"version\": \"{VERSION}\"")));
    if !installed {
        let npm = crate::debian::npm()?;
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new(npm)
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .arg(format!("playwright-core@{VERSION}"))
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            other => {
                eprintln!(
                    "\n********\nSKIPPED: `npm install playwright-core@{VERSION}` failed: {other:?}\n********\n"
                );
                return None;
            }
        }
    }
    Some(dir.join("node_modules"))
}

/// A month of readings of m1 (one a minute, up to now) for the history view.
fn import_month(dir: &Path, data: &Path) {
    let csv = dir.join("month.csv");
    let mut text = String::from("dt,pa_v,wd_p\n");
    let now = chrono::Utc::now().timestamp() / 60 * 60;
    for i in (1..30 * 24 * 60).rev() {
        let t = chrono::DateTime::from_timestamp(now - i * 60, 0).unwrap();
        let x = i as f64;
        text.push_str(&format!(
            "{},{:.1},{:.1}\n",
            t.format("%Y-%m-%d %H:%M:%S"),
            230.0 + (x / 97.0).sin() * 4.0,
            (x / 300.0).sin().abs() * 900.0
        ));
    }
    std::fs::write(&csv, text).unwrap();
    let out = wattson(data)
        .arg("import")
        .arg(&csv)
        .args(["--table", "power", "--device", "m1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dashboard_in_a_real_browser() {
    let Some(chromium) = crate::debian::chromium() else {
        return;
    };
    let Some(node_modules) = playwright() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let secret = setup(&data);
    import_month(dir.path(), &data);
    let server = start(&data);
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&artifacts).unwrap();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut opts = MqttOptions::new("m1", "127.0.0.1", server.mqtt);
    opts.set_credentials("m1", secret.as_str());
    let (client, mut events) = rt.block_on(async { AsyncClient::new(opts, 10) });
    let mut publish = |value: f64| {
        rt.block_on(async {
            let payload = format!(r#"{{"pa_v":{value},"wd_p":42.0}}"#);
            client
                .publish("meters/m1/power", QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
            loop {
                match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
                    Ok(Ok(Event::Incoming(Incoming::PubAck(_)))) => break,
                    Ok(Ok(_)) => {}
                    other => panic!("MQTT publish failed: {other:?}"),
                }
            }
        })
    };
    // m1 is live (and has a card) before the page opens.
    publish(229.0);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard/browser.cjs");
    let mut node = Command::new("node")
        .arg(&script)
        .env("NODE_PATH", &node_modules)
        .env("BASE", format!("http://127.0.0.1:{}", server.http))
        .env("USER", "admin")
        .env("PASSWORD", ADMIN_PASSWORD)
        .env("ARTIFACTS", &artifacts)
        .env("CHROMIUM", chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = node.stdin.take().unwrap();
    let out = BufReader::new(node.stdout.take().unwrap());
    let mut log = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for line in out.lines() {
        let line = line.unwrap();
        eprintln!("browser: {line}");
        if line == "READY" {
            let started = Instant::now();
            publish(123.4);
            writeln!(stdin, "VALUE 123.4").unwrap();
            eprintln!("published in {:?}", started.elapsed());
        }
        log.push(line);
        assert!(Instant::now() < deadline, "the browser test took too long");
    }
    let status = node.wait().unwrap();
    stop(server.child);
    let log = log.join("\n");
    assert!(
        status.success() && log.ends_with("OK"),
        "browser flow failed:\n{log}"
    );
    let rows: usize = log
        .lines()
        .find_map(|l| l.strip_prefix("CSV_ROWS "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        rows >= 30 * 24 * 60 - 10,
        "a month of readings downloaded: {rows}"
    );
    let parquet = std::fs::File::open(artifacts.join("m1.parquet")).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(parquet)
        .unwrap()
        .build()
        .unwrap();
    let parquet_rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(
        parquet_rows, rows,
        "the Parquet download holds the CSV's rows"
    );
    for shot in [
        "01-login-refused",
        "02-live",
        "03-live-updated",
        "04-history-month",
        "06-logged-out",
    ] {
        assert!(
            artifacts.join(format!("{shot}.png")).is_file(),
            "{shot}.png"
        );
    }
}

/// One HTTPS request, trusting only the test CA.
fn https(
    port: u16,
    ca: &tokio_rustls::rustls::pki_types::CertificateDer<'static>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    use std::sync::Arc;
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    http_on(
        rustls::StreamOwned::new(conn, tcp),
        port,
        method,
        path,
        headers,
        body,
    )
}

/// HTTPS with the configured certificate (cookies gain `Secure`), plain
/// HTTP refused on that port, and `/metrics` on the main port only with the
/// configured token.
#[test]
fn dashboard_over_tls_and_metrics_behind_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    setup(&data);
    let pki = crate::mqtt::test_pki(dir.path());
    let config = dir.path().join("wattson.toml");
    std::fs::write(
        &config,
        format!(
            "[dashboard]\ntls_cert = {:?}\ntls_key = {:?}\nmetrics_token = \"metrics-secret-for-tests\"\n",
            pki.cert, pki.key
        ),
    )
    .unwrap();
    let server = start_with(&data, &["--config", config.to_str().unwrap()]);
    let port = server.http;

    let page = https(port, &pki.ca_der, "GET", "/login", &[], b"");
    assert_eq!(page.status, 200, "{}", page.text());
    let body = format!("user=admin&password={}", ADMIN_PASSWORD.replace(' ', "+"));
    let origin = format!("https://127.0.0.1:{port}");
    let logged_in = https(
        port,
        &pki.ca_der,
        "POST",
        "/login",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Origin", &origin),
        ],
        body.as_bytes(),
    );
    let cookie = logged_in
        .header("set-cookie")
        .unwrap_or_default()
        .to_owned();
    assert!(logged_in.session().is_some(), "{logged_in:?}");
    for flag in ["Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(cookie.contains(flag), "{flag} missing from {cookie}");
    }
    let session = format!("wattson_session={}", logged_in.session().unwrap());
    let me = https(
        port,
        &pki.ca_der,
        "GET",
        "/api/session",
        &[("Cookie", &session)],
        b"",
    );
    assert_eq!(me.status, 200, "{}", me.text());

    // Plain HTTP to the HTTPS port gets no HTTP answer.
    let mut plain = TcpStream::connect(("127.0.0.1", port)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    plain
        .write_all(b"GET /login HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/1.1 200"),
        "plain HTTP was served: {}",
        String::from_utf8_lossy(&answer)
    );

    let no_token = https(port, &pki.ca_der, "GET", "/metrics", &[], b"");
    assert_eq!(no_token.status, 401, "{}", no_token.text());
    let wrong = https(
        port,
        &pki.ca_der,
        "GET",
        "/metrics",
        &[("Authorization", "Bearer metrics-secret-for-testz")],
        b"",
    );
    assert_eq!(wrong.status, 401, "{}", wrong.text());
    let metrics = https(
        port,
        &pki.ca_der,
        "GET",
        "/metrics",
        &[("Authorization", "Bearer metrics-secret-for-tests")],
        b"",
    );
    assert_eq!(metrics.status, 200, "{}", metrics.text());
    assert!(metrics.text().contains("# TYPE"), "{}", metrics.text());
    stop(server.child);
}
