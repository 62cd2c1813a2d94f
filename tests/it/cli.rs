//! The real `wattson` binary: import, export, errors and help.

use std::path::Path;
use std::process::{Command, Output};

use crate::serve::ok;

pub(crate) const SEED_CSV: &str = "\
dt,pa_v,pb_v,pc_v,wd_a,wd_p,rf_a,rf_p,ac01_a,ac01_p,rh01_a,rh01_p,mo_a,mo_p,ac02_a,ac02_p,rh02_a,rh02_p
2022-07-19 15:24:21,0.0,214.9,0.0,0.38,83.6,0.00,0.0,5.81,2207.8,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0
2022-07-19 15:24:23,0.0,0.0,0.0,0.38,83.6,0.00,0.0,5.74,2181.2,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0
2022-07-19 15:24:24,0.0,213.8,0.0,0.38,83.6,0.00,0.0,0.00,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0
";

fn command(data_dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wattson"));
    cmd.arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("WATTSON_LOG", "warn");
    cmd
}

fn wattson(data_dir: &Path, args: &[&str]) -> Output {
    command(data_dir, args).output().unwrap()
}

/// Imports the seed CSV as `power_consumption` of `viconsl` into
/// `dir/data`; returns the data directory and what import printed.
pub(crate) fn import_seed(dir: &Path) -> (std::path::PathBuf, String) {
    let data = dir.join("data");
    let csv = dir.join("seed.csv");
    std::fs::write(&csv, SEED_CSV).unwrap();
    let out = ok(&wattson(
        &data,
        &[
            "import",
            csv.to_str().unwrap(),
            "--table",
            "power_consumption",
            "--device",
            "viconsl",
        ],
    ));
    (data, out)
}

#[test]
fn seed_csv_imports_and_exports_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (data, out) = import_seed(dir.path());
    assert!(out.contains("imported 3 readings"), "{out}");

    let exported = ok(&wattson(
        &data,
        &[
            "export",
            "--table",
            "power_consumption",
            "--format",
            "csv",
            "-",
        ],
    ));
    let lines: Vec<&str> = exported.lines().collect();
    assert_eq!(
        lines[0],
        "time,device,pa_v,pb_v,pc_v,wd_a,wd_p,rf_a,rf_p,ac01_a,ac01_p,rh01_a,rh01_p,mo_a,mo_p,ac02_a,ac02_p,rh02_a,rh02_p"
    );
    assert_eq!(
        lines[1],
        "2022-07-19T15:24:21Z,viconsl,0.0,214.9,0.0,0.38,83.6,0.0,0.0,5.81,2207.8,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0"
    );
    assert_eq!(lines.len(), 4);

    // Parquet out, then into a second table, then the same rows come back.
    let parquet = dir.path().join("out.parquet");
    ok(&wattson(
        &data,
        &[
            "export",
            "--table",
            "power_consumption",
            "--device",
            "viconsl",
            "--start",
            "2022-07-19T15:24:22Z",
            "--format",
            "parquet",
            parquet.to_str().unwrap(),
        ],
    ));
    let out = ok(&wattson(
        &data,
        &["import", parquet.to_str().unwrap(), "--table", "copy"],
    ));
    assert!(out.contains("imported 2 readings"), "{out}");
    let copy = ok(&wattson(
        &data,
        &["export", "--table", "copy", "--format", "csv", "-"],
    ));
    assert_eq!(copy.lines().skip(1).collect::<Vec<_>>(), lines[2..]);
}

#[test]
fn bad_rows_are_reported_by_line_and_skipped_or_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let csv = dir.path().join("bad.csv");
    std::fs::write(
        &csv,
        "dt,p\n2022-07-19 15:24:21,1.5\nyesterday,2.0\n2022-07-19 15:24:23,3.5\n",
    )
    .unwrap();
    let out = ok(&wattson(
        &data,
        &[
            "import",
            csv.to_str().unwrap(),
            "--table",
            "t",
            "--device",
            "m1",
        ],
    ));
    assert!(out.contains("imported 2 readings"), "{out}");
    assert!(out.contains("skipped 1 bad rows"), "{out}");
    assert!(out.contains("line 3:"), "{out}");

    let out = wattson(
        &data,
        &[
            "import",
            csv.to_str().unwrap(),
            "--table",
            "t2",
            "--device",
            "m1",
            "--on-error",
            "reject",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3"), "{err}");
}

#[test]
fn clear_errors_for_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let csv = dir.path().join("seed.csv");
    std::fs::write(&csv, SEED_CSV).unwrap();
    // The seed's shape names no device, so --device is needed.
    let out = wattson(
        &data,
        &[
            "import",
            csv.to_str().unwrap(),
            "--table",
            "power_consumption",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--device"));
    let out = wattson(
        &data,
        &["export", "--table", "nope", "--format", "csv", "-"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown table `nope`"));
    let out = wattson(
        &data,
        &[
            "export", "--table", "nope", "--format", "csv", "--start", "soon", "-",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--start `soon`"));
}

#[test]
fn help_explains_every_command() {
    let dir = tempfile::tempdir().unwrap();
    for cmd in [
        &["--help"][..],
        &["import", "--help"],
        &["export", "--help"],
        &["bench", "storage", "--help"],
        &["sql", "--help"],
    ] {
        let out = ok(&wattson(dir.path(), cmd));
        assert!(out.contains("Usage:"), "{out}");
    }
    // A mistyped log filter is refused, not replaced by the default.
    let out = wattson(dir.path(), &["--log", "wattson_storage=loud", "config"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--log") && err.contains("wattson_storage=loud"),
        "{err}"
    );
}

fn wattson_with_stdin(data_dir: &Path, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = command(data_dir, args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn users_and_devices_are_managed_from_the_command_line() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = ok(&wattson(&data, &["user", "list"]));
    assert!(out.contains("no users or devices yet"), "{out}");

    let weak = wattson_with_stdin(
        &data,
        &[
            "user",
            "add",
            "alice",
            "--role",
            "admin",
            "--password-stdin",
        ],
        "short\n",
    );
    assert!(!weak.status.success());
    assert!(String::from_utf8_lossy(&weak.stderr).contains("password"));

    let secret_password = "correct horse battery staple";
    ok(&wattson_with_stdin(
        &data,
        &[
            "user",
            "add",
            "alice",
            "--role",
            "admin",
            "--password-stdin",
        ],
        &format!("{secret_password}\n"),
    ));
    let dev = ok(&wattson(&data, &["device", "add", "viconsl"]));
    let secret = dev.trim();
    assert_eq!(secret.len(), 64, "a 256-bit secret in hex: {secret}");
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));

    let list = ok(&wattson(&data, &["user", "list"]));
    assert!(list.contains("alice") && list.contains("admin"), "{list}");
    assert!(
        list.contains("viconsl") && list.contains("device"),
        "{list}"
    );
    assert!(
        !list.contains(secret) && !list.contains(secret_password),
        "secrets must never be listed"
    );

    let users_file = data.join("users.json");
    let mode = std::fs::metadata(&users_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&users_file).unwrap();
    assert!(
        !text.contains(secret) && !text.contains(secret_password),
        "only hashes are stored"
    );

    // The last admin stays; a meter can go.
    assert!(
        !wattson(&data, &["user", "remove", "alice"])
            .status
            .success()
    );
    ok(&wattson(&data, &["device", "remove", "viconsl"]));
    assert!(!ok(&wattson(&data, &["device", "list"])).contains("viconsl"));
    // A person cannot be given the device role.
    let out = wattson_with_stdin(
        &data,
        &["user", "add", "bob", "--role", "device", "--password-stdin"],
        "long enough password\n",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wattson device add"));
}

#[test]
fn sql_reads_the_seed_month_table_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = import_seed(dir.path());
    let query = "SELECT * FROM viconsl_power_consumption_2022_07 ORDER BY dt";
    let out = ok(&wattson(&data, &["sql", query, "--format", "csv"]));
    let mut lines = out.lines();
    assert_eq!(lines.next(), SEED_CSV.lines().next(), "the seed's header");
    let first: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(first[0], "2022-07-19T15:24:21");
    assert_eq!(first[2], "214.9");
    assert_eq!(first[9], "2207.8");
    assert_eq!(lines.count(), 2);

    let out = ok(&wattson(
        &data,
        &[
            "sql",
            "SELECT device, count(*) AS n, round(energy_kwh(wd_p, time) * 3600000, 1) AS joules \
             FROM power_consumption GROUP BY device",
            "--format",
            "json",
        ],
    ));
    assert_eq!(out.trim(), r#"{"device":"viconsl","n":3,"joules":250.8}"#);

    let out = ok(&wattson(
        &data,
        &["sql", "SELECT count(*) FROM power_consumption"],
    ));
    assert!(out.contains("| 3 "), "{out}");
    assert!(out.contains("1 row"), "{out}");

    // Clear errors, no panics.
    let out = wattson(&data, &["sql", "SELECT * FROM power_consumptoin"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did you mean `power_consumption`"), "{err}");
    let out = wattson(&data, &["sql", "DROP TABLE power_consumption"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("read-only"), "{err}");
    let out = wattson(&dir.path().join("nowhere"), &["sql", "SELECT 1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds no Wattson data"), "{err}");
}

#[test]
fn bench_query_times_every_question() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("bench");
    let args = [
        "bench",
        "query",
        "--devices",
        "2",
        "--days",
        "0.05",
        "--runs",
        "1",
        "--no-duckdb",
        "--json",
        "--dir",
        store.to_str().unwrap(),
    ];
    let out = ok(&wattson(dir.path(), &args));
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    for key in ["a_ms", "b_ms", "c_ms", "d_ms"] {
        assert!(report[key].as_f64().unwrap() > 0.0, "{key}: {report}");
    }
    assert_eq!(report["d_rows"], 4320, "0.05 days of one device at 1 Hz");
    assert!(report["load_s"].as_f64().is_some());
    // A second run reuses the store.
    let out = ok(&wattson(dir.path(), &args));
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(report["load_s"].is_null(), "{report}");
}
