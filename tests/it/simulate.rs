//! `wattson simulate` against a real `wattson serve`, with every fault on
//! and a server outage in the middle: every reading the simulator reports as
//! acknowledged is stored exactly once, and readings generated while the
//! server was down arrive after the reconnect.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::serve::{export_command, export_csv, free_port, setup, start_at, wattson};

const DEVICES: usize = 3;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn sigterm(pid: u32) {
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
}

/// (device, time in ms) of every row of `power_consumption`, from
/// `wattson export`.
fn stored(data: &Path) -> Vec<(String, i64)> {
    let text = export_csv(data, "power_consumption");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let (t, d) = (
        header.iter().position(|h| *h == "time").unwrap(),
        header.iter().position(|h| *h == "device").unwrap(),
    );
    lines
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            let time = chrono::NaiveDateTime::parse_from_str(
                cells[t].trim_end_matches('Z'),
                "%Y-%m-%dT%H:%M:%S%.f",
            )
            .unwrap_or_else(|e| panic!("time `{}`: {e}", cells[t]))
            .and_utc()
            .timestamp_millis();
            (cells[d].to_owned(), time)
        })
        .collect()
}

#[test]
fn simulated_meters_with_faults_and_a_server_outage_lose_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    setup(&data);
    let creds = dir.path().join("meters.txt");
    for i in 1..=DEVICES {
        let out = wattson(&data)
            .args(["device", "add", &format!("sim-{i}"), "--credentials"])
            .arg(&creds)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let port = free_port();
    let (mut server, _) = start_at(&data, port);

    let acked_log = dir.path().join("acked.csv");
    let sim = wattson(&data)
        .args([
            "simulate",
            "--devices",
            &DEVICES.to_string(),
            "--rate",
            "20",
        ])
        .args(["--broker", &format!("127.0.0.1:{port}")])
        .arg("--credentials")
        .arg(&creds)
        .args(["--faults", "all", "--seed", "7", "--duration", "16"])
        .args(["--drain", "30", "--acked-log"])
        .arg(&acked_log)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();

    // Four seconds of normal running, then the server dies without warning
    // and stays down for four seconds.
    std::thread::sleep(Duration::from_secs(4));
    server.kill().unwrap();
    server.wait().unwrap();
    let down_from = now_ms();
    std::thread::sleep(Duration::from_secs(4));
    let down_until = now_ms();
    let (mut server, _) = start_at(&data, port);

    let out = sim.wait_with_output().unwrap();
    // Stop the server before any assertion, so a failure leaves no process.
    sigterm(server.id());
    assert!(server.wait().unwrap().success());
    assert!(out.status.success(), "simulate failed");
    assert!(started.elapsed() < Duration::from_secs(60));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    // The report is consistent with the log, and the faults happened.
    let log = std::fs::read_to_string(&acked_log).unwrap();
    let acked: Vec<(String, i64)> = log
        .lines()
        .skip(1)
        .map(|l| {
            let mut c = l.split(',');
            (
                c.next().unwrap().to_owned(),
                c.next().unwrap().parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(report["readings_acked"], acked.len() as u64, "{report}");
    assert_eq!(report["readings_unacked"], 0, "{report}");
    assert!(
        report["connection_losses"].as_u64().unwrap() >= DEVICES as u64,
        "{report}"
    );
    // Everyone came back after the outage.
    assert!(
        report["connects"].as_u64().unwrap() >= 2 * DEVICES as u64,
        "{report}"
    );
    assert!(
        report["readings_generated"].as_u64().unwrap() >= (DEVICES * 20 * 14) as u64,
        "{report}"
    );
    // At 20 readings a second the rarer faults happen too (each has a
    // chance below 1e-4 of not happening in 960 readings).
    for fault in ["duplicates_sent", "late_sent", "malformed_sent"] {
        assert!(report[fault].as_u64().unwrap() > 0, "{fault}: {report}");
    }

    // Stored exactly once: no (device, time) twice, and every acknowledged
    // reading there.
    let rows = stored(&data);
    let mut seen: HashMap<(String, i64), u32> = HashMap::new();
    for r in &rows {
        *seen.entry(r.clone()).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    let unique: HashSet<(String, i64)> = acked.iter().cloned().collect();
    let missing: Vec<_> = unique.iter().filter(|k| !seen.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not stored: {missing:?}"
    );

    // Readings stamped while the server was down went out after the
    // reconnect and are stored, for every meter. (Timestamps may be skewed
    // by up to 5 s by the skew fault, so look at the middle of the outage
    // with that margin removed only where it fits.)
    for i in 1..=DEVICES {
        let dev = format!("sim-{i}");
        let during = unique
            .iter()
            .filter(|(d, t)| *d == dev && (down_from - 6_000..down_until + 6_000).contains(t))
            .count();
        assert!(during > 0, "{dev}: nothing from the outage acknowledged");
    }
    let outage: Vec<_> = unique
        .iter()
        .filter(|(_, t)| (down_from + 500..down_until - 500).contains(t))
        .collect();
    assert!(
        outage.len() >= 10,
        "only {} readings from the outage were acknowledged",
        outage.len()
    );
}

#[test]
fn demo_prints_credentials_and_stores_live_readings_within_seconds() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    let subscribers = format!("127.0.0.1:{}", free_port());
    let mut demo = wattson(&data)
        .args(["demo", "--dir"])
        .arg(&data)
        .args(["--mqtt-listen", "127.0.0.1:0", "--subscribers-listen"])
        .arg(&subscribers)
        .args(["--flight-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    let mut out = BufReader::new(demo.stdout.take().unwrap());
    while !banner.contains("Ctrl-C stops the demo") {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "demo exited: {banner}"
        );
        banner.push_str(&line);
    }
    assert!(banner.contains("admin login      admin / "), "{banner}");
    assert!(
        banner.contains("demo-0001, demo-0002, demo-0003"),
        "{banner}"
    );
    // The meters connect after the banner and publish at 1 Hz. Read-only
    // exports beside the running demo show when each has stored three
    // readings (the table does not exist before the first).
    let meters = ["demo-0001", "demo-0002", "demo-0003"];
    let started = Instant::now();
    let mut counts = Vec::new();
    while started.elapsed() < Duration::from_secs(60) {
        let out = export_command(&data, "power_consumption").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        counts = meters
            .iter()
            .map(|m| {
                text.lines()
                    .filter(|l| l.contains(&format!(",{m},")))
                    .count()
            })
            .collect();
        if out.status.success() && counts.iter().all(|n| *n >= 3) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Command::new("kill")
        .args(["-INT", &demo.id().to_string()])
        .status()
        .unwrap();
    assert!(demo.wait().unwrap().success());
    assert!(
        counts.iter().all(|n| *n >= 3),
        "readings of {meters:?} after {:?}: {counts:?}",
        started.elapsed()
    );
    let rows = stored(&data);
    for m in meters {
        let n = rows.iter().filter(|(d, _)| d == m).count();
        assert!(n >= 3, "{m}: {n} readings stored");
    }
    // The credentials file lets `wattson simulate` reuse the meters.
    let creds = std::fs::read_to_string(data.join("demo-meters.txt")).unwrap();
    assert_eq!(creds.lines().count(), 3);
}
