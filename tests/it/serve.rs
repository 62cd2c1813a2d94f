//! The real `wattson serve` with a real MQTT client over TCP: durable
//! acknowledgement, graceful shutdown on SIGTERM, and refusal to start
//! without an admin.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};

pub(crate) fn wattson(data: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wattson"));
    cmd.arg("--data-dir")
        .arg(data)
        .env("WATTSON_LOG", "info")
        // Tests run in parallel: no fixed Flight, dashboard or metrics port.
        .env("WATTSON_FLIGHT_LISTEN", "127.0.0.1:0")
        .env("WATTSON_DASHBOARD_LISTEN", "127.0.0.1:0")
        .env("WATTSON_METRICS_LISTEN", "off");
    // A test that fails midway drops its server's `Child` without stopping
    // it; the kernel then kills the server when the test's thread ends,
    // instead of leaving it running (and holding ports and memory) after
    // the test run.
    // SAFETY: the hook runs in the forked child before exec and only makes
    // one async-signal-safe system call.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Adds a person with `role` through `wattson user add --password-stdin`.
pub(crate) fn add_user(data: &Path, name: &str, role: &str, password: &str) {
    let mut add = wattson(data)
        .args(["user", "add", name, "--role", role, "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    add.stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    assert!(add.wait().unwrap().success());
}

/// An admin and device `m1`; returns m1's secret.
pub(crate) fn setup(data: &Path) -> String {
    add_user(data, "admin", "admin", "a long admin password");
    let out = wattson(data)
        .args(["device", "add", "m1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The rows of table `power` as `wattson export` writes them (CSV, no header).
pub(crate) fn exported_rows(data: &Path) -> Vec<String> {
    export_csv(data, "power")
        .lines()
        .skip(1)
        .map(str::to_owned)
        .collect()
}

/// `wattson export` of a whole table as CSV to stdout, header included.
pub(crate) fn export_command(data: &Path, table: &str) -> Command {
    let mut cmd = wattson(data);
    cmd.args(["export", "--table", table, "--format", "csv", "-"]);
    cmd
}

/// The output of [`export_command`], which must succeed.
pub(crate) fn export_csv(data: &Path, table: &str) -> String {
    ok(&export_command(data, table).output().unwrap())
}

/// The stdout of a `wattson` run that must have succeeded.
pub(crate) fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "wattson failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Starts the server and returns it with the port meters connect to.
pub(crate) fn start(data: &Path) -> (Child, u16) {
    start_full(data, 0, &[], "listen")
}

/// Starts the server with meters on `port` (0: any free port).
pub(crate) fn start_at(data: &Path, port: u16) -> (Child, u16) {
    start_full(data, port, &[], "listen")
}

/// Starts the server with `extra` arguments and returns it with the port of
/// the log field `field` (`listen`, or `tls_listen` for MQTT over TLS).
pub(crate) fn start_with(data: &Path, extra: &[&str], field: &str) -> (Child, u16) {
    start_full(data, 0, extra, field)
}

fn start_full(data: &Path, port: u16, extra: &[&str], field: &str) -> (Child, u16) {
    let subscribers = format!("127.0.0.1:{}", free_port());
    let meters = format!("127.0.0.1:{port}");
    let mut cmd = wattson(data);
    cmd.args([
        "serve",
        "--mqtt-listen",
        &meters,
        "--subscribers-listen",
        &subscribers,
        "--flight-listen",
        "127.0.0.1:0",
    ])
    .args(extra);
    let (child, ports) = spawn_listening(&mut cmd, &[("meters listening", field)]);
    (child, ports[0])
}

/// `wattson serve` with meters and subscribers on free ports, then `extra`
/// (other listeners are on free ports through [`wattson`]'s environment).
pub(crate) fn serve_on_free_ports(data: &Path, extra: &[&str]) -> Command {
    let mut cmd = wattson(data);
    cmd.args([
        "serve",
        "--mqtt-listen",
        "127.0.0.1:0",
        "--subscribers-listen",
        "127.0.0.1:0",
    ])
    .args(extra);
    cmd
}

/// The port in the log field ` {field}=HOST:PORT` of `line`.
pub(crate) fn port_after(line: &str, field: &str) -> Option<u16> {
    let rest = line.split(&format!(" {field}=")).nth(1)?;
    let addr = rest.split_whitespace().next()?;
    addr.rsplit(':').next()?.parse().ok()
}

/// Spawns `cmd` (a `wattson serve`) and reads its log until each wanted
/// (message, field) pair has named a port; returns the ports in that order.
/// The log keeps draining afterwards so the server never blocks on a full
/// pipe.
pub(crate) fn spawn_listening(cmd: &mut Command, wanted: &[(&str, &str)]) -> (Child, Vec<u16>) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut ports: Vec<Option<u16>> = vec![None; wanted.len()];
    while ports.iter().any(Option::is_none) {
        let line = lines
            .next()
            .expect("serve exited before listening")
            .unwrap();
        for ((message, field), port) in wanted.iter().zip(&mut ports) {
            if port.is_none() && line.contains(message) {
                *port = port_after(&line, field);
            }
        }
    }
    std::thread::spawn(move || for _ in lines {});
    (child, ports.into_iter().flatten().collect())
}

/// SIGTERM, then expects exit 0.
pub(crate) fn stop(mut server: Child) {
    Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    let status = server.wait().unwrap();
    assert!(
        status.success(),
        "serve must exit 0 after SIGTERM: {status}"
    );
}

#[test]
fn readings_acknowledged_over_mqtt_survive_a_graceful_stop() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let secret = setup(&data);
    let (mut server, port) = start(&data);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let acked = rt.block_on(async {
        let mut opts = MqttOptions::new("m1", "127.0.0.1", port);
        opts.set_credentials("m1", secret.as_str());
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut ev) = AsyncClient::new(opts, 100);
        for i in 0..20 {
            let payload = format!(
                r#"{{"ts":{},"pa_v":{}.5}}"#,
                1_658_244_261_000i64 + i * 1000,
                200 + i
            );
            client
                .publish("meters/m1/power", QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
        let mut acked = 0;
        while acked < 20 {
            match tokio::time::timeout(Duration::from_secs(10), ev.poll()).await {
                Ok(Ok(Event::Incoming(Incoming::PubAck(_)))) => acked += 1,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("connection failed after {acked} PUBACKs: {e}"),
                Err(_) => panic!("timed out after {acked} PUBACKs"),
            }
        }
        acked
    });
    assert_eq!(acked, 20);

    let pid = server.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = server.wait().unwrap();
    assert!(
        status.success(),
        "serve must exit 0 after SIGTERM: {status}"
    );

    let rows = exported_rows(&data);
    assert_eq!(rows.len(), 20, "{rows:?}");
    assert_eq!(rows[0], "2022-07-19T15:24:21Z,m1,200.5");
    assert_eq!(rows[19], "2022-07-19T15:24:40Z,m1,219.5");
}

#[test]
fn serve_refuses_to_start_without_an_admin() {
    let dir = tempfile::tempdir().unwrap();
    let out = wattson(&dir.path().join("data"))
        .args(["serve", "--mqtt-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wattson user add"), "{err}");
}

#[test]
fn config_print_default_shows_every_section() {
    let dir = tempfile::tempdir().unwrap();
    let out = wattson(dir.path())
        .args(["config", "--print-default"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for section in [
        "[storage]",
        "[mqtt]",
        "[mqtt.tls]",
        "[subscribers]",
        "[ingest]",
        "[[ingest.topics]]",
    ] {
        assert!(text.contains(section), "{section} missing");
    }
}

/// SIGKILLs the server at random moments while a meter publishes QoS 1
/// readings as fast as it can; after each kill every reading that got a
/// PUBACK must be stored exactly once.
#[test]
fn sigkill_of_the_server_never_loses_an_acknowledged_reading() {
    use rand::{Rng, SeedableRng};
    const ROUNDS: u64 = 20;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let secret = setup(&data);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut acked_per_round = Vec::new();
    for round in 0..ROUNDS {
        let (mut server, port) = start(&data);
        let pid = server.id();
        let kill_after = Duration::from_millis(rng.random_range(50..400));
        let killer = std::thread::spawn(move || {
            std::thread::sleep(kill_after);
            Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .unwrap();
        });
        let secret = secret.clone();
        let (acked, sent) = rt.block_on(async move {
            let mut opts = MqttOptions::new("m1", "127.0.0.1", port);
            opts.set_credentials("m1", secret.as_str());
            opts.set_keep_alive(Duration::from_secs(30));
            let (client, mut ev) = AsyncClient::new(opts, 100);
            let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let publisher = {
                let sent = sent.clone();
                tokio::spawn(async move {
                    for i in 0..1_000_000u64 {
                        let value = round * 1_000_000 + i;
                        let payload = format!(
                            r#"{{"ts":{},"pa_v":{value}}}"#,
                            1_658_244_261_000u64 + value
                        );
                        if client
                            .publish("meters/m1/power", QoS::AtLeastOnce, false, payload)
                            .await
                            .is_err()
                        {
                            break;
                        }
                        sent.store(i + 1, std::sync::atomic::Ordering::SeqCst);
                    }
                })
            };
            // PUBACKs come in publish order, so the count is the acknowledged prefix.
            let mut acked = 0u64;
            loop {
                match tokio::time::timeout(Duration::from_secs(10), ev.poll()).await {
                    Ok(Ok(Event::Incoming(Incoming::PubAck(_)))) => acked += 1,
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) | Err(_) => break,
                }
            }
            publisher.abort();
            (acked, sent.load(std::sync::atomic::Ordering::SeqCst))
        });
        killer.join().unwrap();
        server.wait().unwrap();
        acked_per_round.push((acked, sent));

        let mut counts = std::collections::BTreeMap::<u64, usize>::new();
        for line in exported_rows(&data) {
            let value: f64 = line.rsplit(',').next().unwrap().parse().unwrap();
            *counts.entry(value as u64).or_default() += 1;
        }
        for (r, (acked, sent)) in acked_per_round.iter().enumerate() {
            let base = r as u64 * 1_000_000;
            for i in 0..*acked {
                assert_eq!(
                    counts.get(&(base + i)),
                    Some(&1),
                    "round {r}: acknowledged reading {i} is not stored exactly once"
                );
            }
            let beyond = counts.range(base + sent + 1..base + 1_000_000).count();
            assert_eq!(
                beyond, 0,
                "round {r}: readings that were never sent are stored"
            );
        }
    }
    let total: u64 = acked_per_round.iter().map(|a| a.0).sum();
    eprintln!("{ROUNDS} server kills, {total} acknowledged readings checked");
    assert!(
        total > ROUNDS,
        "the meter got almost nothing acknowledged; the test proves little"
    );
}

/// The same durable path with a client that is not ours: Eclipse paho-mqtt
/// from PyPI, as meters' gateways and scripts use it.
#[test]
fn paho_mqtt_publishes_are_acknowledged_and_stored() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let secret = setup(&data);
    let python = crate::python::python();
    let (mut server, port) = start(&data);
    let script = r#"
import sys, paho.mqtt.client as mqtt
port, secret = int(sys.argv[1]), sys.argv[2]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="m1")
c.username_pw_set("m1", secret)
c.connect("127.0.0.1", port, keepalive=30)
c.loop_start()
infos = [c.publish("meters/m1/power", '{"ts":%d,"pa_v":%d.25}' % (1658244261000 + i * 1000, i), qos=1) for i in range(10)]
for info in infos:
    info.wait_for_publish(timeout=10)
print(sum(1 for i in infos if i.is_published()))
c.loop_stop()
c.disconnect()
"#;
    let out = Command::new(python)
        .args(["-c", script, &port.to_string(), &secret])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "10",
        "every publish is acknowledged"
    );
    Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(server.wait().unwrap().success());
    let rows = exported_rows(&data);
    assert_eq!(rows.len(), 10, "{rows:?}");
    assert_eq!(rows[9], "2022-07-19T15:24:30Z,m1,9.25");
}

#[test]
fn bench_ingest_reports_durable_throughput() {
    let out = Command::new(env!("CARGO_BIN_EXE_wattson"))
        .args([
            "--log",
            "warn",
            "bench",
            "ingest",
            "--devices",
            "2",
            "--duration",
            "1",
            "--idle",
            "20",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "readings_per_s",
        "messages_per_s",
        "puback_p50_ms",
        "puback_p99_ms",
        "server_cpu_pct",
        "server_peak_rss_mb",
    ] {
        assert!(report[key].as_f64().is_some(), "{key} missing in {report}");
    }
    assert!(report["messages_acked"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["connection_errors"].as_u64(), Some(0), "{report}");
    assert_eq!(report["idle_held"].as_u64(), Some(20), "{report}");
}

/// `wattson sql` opens the data directory read-only beside the running
/// server: a reading is in its answer as soon as the PUBACK arrived.
#[test]
fn a_reading_is_queryable_as_soon_as_its_puback_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let secret = setup(&data);
    let (server, port) = start(&data);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut opts = MqttOptions::new("m1", "127.0.0.1", port);
    opts.set_credentials("m1", secret.as_str());
    let (client, mut ev) = rt.block_on(async { AsyncClient::new(opts, 10) });
    let sql = |query: &str| {
        let out = wattson(&data)
            .args(["sql", query, "--format", "csv"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    for i in 0..3i64 {
        rt.block_on(async {
            let payload = format!(
                r#"{{"ts":{},"pa_v":{i}.5}}"#,
                1_658_244_261_000i64 + i * 1000
            );
            client
                .publish("meters/m1/power", QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
            loop {
                match tokio::time::timeout(Duration::from_secs(10), ev.poll()).await {
                    Ok(Ok(Event::Incoming(Incoming::PubAck(_)))) => break,
                    Ok(Ok(_)) => {}
                    other => panic!("no PUBACK: {other:?}"),
                }
            }
        });
        let out = sql("SELECT count(*) AS n, max(pa_v) AS newest FROM power");
        assert_eq!(out, format!("n,newest\n{},{i}.5\n", i + 1));
    }
    let out = sql("SELECT dt, pa_v FROM m1_power_2022_07 ORDER BY dt");
    assert_eq!(
        out,
        "dt,pa_v\n2022-07-19T15:24:21,0.5\n2022-07-19T15:24:22,1.5\n2022-07-19T15:24:23,2.5\n"
    );
    // `export` reads the same way beside the server.
    let csv = dir.path().join("power.csv");
    ok(&wattson(&data)
        .args(["export", "--table", "power", "--format", "csv"])
        .arg(&csv)
        .output()
        .unwrap());
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(text.contains("2.5"), "{text}");
    stop(server);
}
