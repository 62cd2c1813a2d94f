//! Arrow Flight and Flight SQL on the real `wattson serve`, with the
//! clients ML code uses: pyarrow.flight, ADBC (with pandas and polars) and
//! `wattson sql --server`.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::python::python;
use crate::serve::{serve_on_free_ports, setup, spawn_listening, stop, wattson};

const ADMIN_PASSWORD: &str = "a long admin password";

/// Starts the server with Flight on a free port; returns it and the port.
fn start(data: &Path, extra: &[&str]) -> (Child, u16) {
    let mut cmd = serve_on_free_ports(data, &["--flight-listen", "127.0.0.1:0"]);
    cmd.args(extra);
    let (child, ports) = spawn_listening(&mut cmd, &[("flight listening", "listen")]);
    (child, ports[0])
}

/// Adds a person with `role` and password `name`-password-123.
fn add_user(data: &Path, name: &str, role: &str) {
    crate::serve::add_user(data, name, role, &format!("{name}-password-123"));
}

/// Runs a Python script with `PORT` and the admin's credentials in the
/// environment; returns its standard output.
fn py(script: &str, port: u16, env: &[(&str, &str)]) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .env("PORT", port.to_string())
        .env("ADMIN_PASSWORD", ADMIN_PASSWORD)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A data directory with an admin, device `m1` and the seed month imported.
fn seeded(dir: &Path) -> std::path::PathBuf {
    let (data, _) = crate::cli::import_seed(dir);
    setup(&data);
    data
}

#[test]
fn pyarrow_flight_lists_plans_and_pulls_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let data = seeded(dir.path());
    let (server, port) = start(&data, &[]);
    let out = py(
        r#"
import json, os
import pyarrow as pa, pyarrow.flight as fl
client = fl.FlightClient(f"grpc://127.0.0.1:{os.environ['PORT']}")
header = client.authenticate_basic_token("admin", os.environ["ADMIN_PASSWORD"])
assert header[0] == b"authorization" and header[1].startswith(b"Bearer wsn_"), header
opts = fl.FlightCallOptions(headers=[header])
flights = list(client.list_flights(options=opts))
tables = {f.descriptor.path[0].decode(): f.schema for f in flights}
assert "power_consumption" in tables, tables
assert tables["power_consumption"].names[:3] == ["time", "device", "pa_v"], tables
cmd = json.dumps({"table": "power_consumption", "devices": ["viconsl"],
                  "start": "2022-07-01", "end": "2022-08-01T00:00:00Z",
                  "columns": ["pa_v", "ac01_p"]}).encode()
info = client.get_flight_info(fl.FlightDescriptor.for_command(cmd), options=opts)
assert len(info.endpoints) == 1, info.endpoints
assert info.schema.names == ["time", "device", "pa_v", "ac01_p"], info.schema
parts = [client.do_get(e.ticket, options=opts).read_all() for e in info.endpoints]
table = pa.concat_tables(parts)
assert isinstance(table, pa.Table)
assert table.num_rows == 3, table
assert table.column("ac01_p").to_pylist() == [2207.8, 2181.2, 0.0], table
# The whole table through a path descriptor; nothing in another month.
info = client.get_flight_info(fl.FlightDescriptor.for_path("power_consumption"), options=opts)
assert len(info.endpoints) == 1
cmd = json.dumps({"table": "power_consumption", "start": "2023-01-01"}).encode()
assert client.get_flight_info(fl.FlightDescriptor.for_command(cmd), options=opts).endpoints == []
# Bad commands are explained.
for bad, want in [({"tabel": "x"}, "table"), ({"table": "nope"}, "no table"),
                  ({"table": "power_consumption", "columns": ["zz"]}, "no column")]:
    try:
        client.get_flight_info(fl.FlightDescriptor.for_command(json.dumps(bad).encode()), options=opts)
        raise SystemExit(f"accepted {bad}")
    except pa.ArrowException as e:
        assert want in str(e), (bad, str(e))
print("ok", table.num_rows)
"#,
        port,
        &[],
    );
    assert!(out.contains("ok 3"), "{out}");
    stop(server);
}

#[test]
fn adbc_pandas_and_polars_read_the_seed_month() {
    let dir = tempfile::tempdir().unwrap();
    let data = seeded(dir.path());
    add_user(&data, "ana", "analyst");
    let (server, port) = start(&data, &[]);
    let out = py(
        r#"
import os
import adbc_driver_flightsql.dbapi
import pandas as pd
import polars as pl

# The seed's ML code, unchanged in shape.
conn = adbc_driver_flightsql.dbapi.connect(f"grpc://127.0.0.1:{os.environ['PORT']}",
    db_kwargs={"username": "ana", "password": "ana-password-123"})
df = pd.read_sql_table("viconsl_power_consumption_2022_07", conn)
print("columns", ",".join(df.columns))
assert len(df) == 3, df
assert df["pb_v"].tolist() == [214.9, 0.0, 213.8], df

with conn.cursor() as cur:
    cur.execute("SELECT device, count(*) AS n FROM power_consumption GROUP BY device")
    t = cur.fetch_arrow_table()
    assert t.to_pylist() == [{"device": "viconsl", "n": 3}], t
    # A prepared statement with a parameter.
    cur.execute("SELECT count(*) AS n FROM power_consumption WHERE ac01_p > $1", parameters=(1000.0,))
    assert cur.fetchone() == (2,), "parameter bound"
    cur.execute("SELECT count(*) AS n FROM power_consumption WHERE ac01_p > $1", parameters=(2200.0,))
    assert cur.fetchone() == (1,), "parameter rebound"
    # Read-only: refused with a clear message, the connection stays usable.
    try:
        cur.execute("COPY (SELECT 1) TO '/tmp/x.csv'")
        cur.fetchall()
        raise SystemExit("COPY accepted")
    except adbc_driver_flightsql.dbapi.Error as e:
        assert "read-only" in str(e), str(e)

# Incremental execution (PollFlightInfo): complete at the first poll, with
# the result's schema, and nothing more at the next; the partition reads.
with conn.cursor() as cur:
    cur.adbc_statement.set_options(**{"adbc.statement.exec.incremental": "true"})
    sql = "SELECT count(*) AS n FROM viconsl_power_consumption_2022_07"
    parts, schema = cur.adbc_execute_partitions(sql)
    assert len(parts) == 1 and schema.names == ["n"], (parts, schema)
    assert cur.adbc_statement.get_option_float("adbc.statement.exec.progress") == 1.0
    more, _ = cur.adbc_execute_partitions(sql)
    assert more == [], more
    cur.adbc_read_partition(parts[0])
    assert cur.fetchall() == [(3,)], "partition read"

schema = conn.adbc_get_table_schema("viconsl_power_consumption_2022_07")
assert schema.names[0] == "dt", schema
objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
names = [t["table_name"] for c in objects for s in c["catalog_db_schemas"] for t in s["db_schema_tables"]]
assert "power_consumption" in names and "viconsl_power_consumption_2022_07" in names, names
assert "TABLE" in conn.adbc_get_table_types() and "VIEW" in conn.adbc_get_table_types()
info = conn.adbc_get_info()
assert info["vendor_name"] == "Wattson", info

pdf = pl.read_database("SELECT dt, ac01_p FROM viconsl_power_consumption_2022_07 ORDER BY dt", conn)
assert pdf.shape == (3, 2), pdf
assert pdf["ac01_p"].to_list() == [2207.8, 2181.2, 0.0], pdf
conn.close()
print("ok")
"#,
        port,
        &[],
    );
    let seed_header = crate::cli::SEED_CSV.lines().next().unwrap();
    assert!(
        out.contains(&format!("columns {seed_header}")),
        "pandas columns differ from the seed's {seed_header}:\n{out}"
    );
    assert!(out.contains("ok"), "{out}");
    stop(server);
}

#[test]
fn every_call_needs_a_valid_token_of_a_role_that_may() {
    let dir = tempfile::tempdir().unwrap();
    let data = seeded(dir.path());
    add_user(&data, "ana", "analyst");
    add_user(&data, "gone", "analyst");
    add_user(&data, "vic", "viewer");
    let m1_secret = {
        let out = wattson(&data)
            .args(["device", "add", "m2"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let (server, port) = start(&data, &[]);
    let script = r#"
import os, sys, time
import pyarrow as pa, pyarrow.flight as fl
client = fl.FlightClient(f"grpc://127.0.0.1:{os.environ['PORT']}")
def expect(kind, f, what):
    try:
        f()
    except kind as e:
        print("refused", what, type(e).__name__, str(e).splitlines()[0])
        return
    except fl.FlightError as e:
        raise SystemExit(f"{what}: wrong error {type(e).__name__}: {e}")
    raise SystemExit(f"{what}: accepted")
def opts(value):
    return fl.FlightCallOptions(headers=[(b"authorization", value)])
desc = fl.FlightDescriptor.for_path("power_consumption")
Unauth, Denied = fl.FlightUnauthenticatedError, fl.FlightUnauthorizedError
expect(Unauth, lambda: list(client.list_flights()), "no token")
expect(Unauth, lambda: client.get_flight_info(desc), "no token")
expect(Unauth, lambda: client.get_flight_info(desc, options=opts(b"Bearer nonsense")), "malformed")
expect(Unauth, lambda: client.get_flight_info(desc, options=opts(b"Basic YTpi")), "malformed")
expect(Unauth, lambda: client.get_flight_info(desc, options=opts(b"Bearer wsn_" + b"0" * 64)), "unknown")
expect(Unauth, lambda: client.authenticate_basic_token("ana", "wrong password!"), "wrong password")
expect(Unauth, lambda: client.authenticate_basic_token("nobody", "whatever-123456"), "unknown user")
expect(Denied, lambda: client.authenticate_basic_token("m2", os.environ["M2_SECRET"]), "device")
expect(Denied, lambda: client.authenticate_basic_token("vic", "vic-password-123"), "viewer")
# A removed user's token dies at once.
gone = fl.FlightCallOptions(headers=[client.authenticate_basic_token("gone", "gone-password-123")])
client.get_flight_info(desc, options=gone)
print("removing", flush=True)
sys.stdin.readline()
expect(Unauth, lambda: client.get_flight_info(desc, options=gone), "removed user")
# An analyst reads but may not import.
ana = fl.FlightCallOptions(headers=[client.authenticate_basic_token("ana", "ana-password-123")])
assert client.get_flight_info(desc, options=ana).endpoints
batch = pa.record_batch([pa.array([0], pa.timestamp("ms")), pa.array(["x"]), pa.array([1.0])], names=["time", "device", "v"])
def put(o):
    w, _ = client.do_put(fl.FlightDescriptor.for_path("imported"), batch.schema, options=o)
    w.write_batch(batch)
    w.close()
expect(Denied, lambda: put(ana), "analyst put")
print("ok")
"#;
    let mut child = Command::new(python())
        .arg("-c")
        .arg(script)
        .env("PORT", port.to_string())
        .env("M2_SECRET", &m1_secret)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "script ended early:\n{seen}"
        );
        seen.push_str(&line);
        if line.starts_with("removing") {
            break;
        }
    }
    let out = wattson(&data)
        .args(["user", "remove", "gone"])
        .output()
        .unwrap();
    assert!(out.status.success());
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let mut rest = String::new();
    stdout.read_to_string_lossy(&mut rest);
    seen.push_str(&rest);
    assert!(
        out.status.success() && seen.contains("ok"),
        "{seen}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for what in [
        "no token",
        "malformed",
        "unknown",
        "device",
        "viewer",
        "removed user",
        "analyst put",
    ] {
        assert!(seen.contains(&format!("refused {what}")), "{what}:\n{seen}");
    }
    stop(server);
}

trait ReadLossy {
    fn read_to_string_lossy(&mut self, out: &mut String);
}

impl<R: std::io::Read> ReadLossy for R {
    fn read_to_string_lossy(&mut self, out: &mut String) {
        let mut bytes = Vec::new();
        self.read_to_end(&mut bytes).unwrap();
        out.push_str(&String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn unsafe_sql_is_refused_and_heavy_queries_stop_while_the_server_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let data = seeded(dir.path());
    let config = dir.path().join("wattson.toml");
    std::fs::write(&config, "[query]\nmemory_limit_mib = 8\ntimeout_s = 20\n").unwrap();
    let (server, port) = start(&data, &["--config", config.to_str().unwrap()]);
    let leak = dir.path().join("leak.csv");
    let out = py(
        r#"
import os
import adbc_driver_flightsql.dbapi as db
conn = db.connect(f"grpc://127.0.0.1:{os.environ['PORT']}",
    db_kwargs={"username": "admin", "password": os.environ["ADMIN_PASSWORD"]})
cur = conn.cursor()
for sql, want in [
    (f"COPY (SELECT * FROM power_consumption) TO '{os.environ['LEAK']}'", "not allowed"),
    ("CREATE EXTERNAL TABLE pw (line VARCHAR) STORED AS CSV LOCATION '/etc/passwd'", "not allowed"),
    ("INSERT INTO power_consumption VALUES (1)", "not allowed"),
    ("SET datafusion.execution.batch_size = 1", "not allowed"),
    ("SELECT * FROM pw", "not found"),
    # A sorted cross join far beyond the 8 MiB limit.
    ("SELECT a.value, b.value FROM generate_series(1, 3000000) a, generate_series(1, 3000) b ORDER BY a.value + b.value DESC", ""),
]:
    try:
        cur.execute(sql)
        cur.fetch_arrow_table()
        raise SystemExit(f"ran: {sql}")
    except db.Error as e:
        print("refused:", sql[:30], "|", str(e).splitlines()[0][:200])
        assert want in str(e), (sql, str(e))
cur.execute("SELECT count(*) FROM power_consumption")
assert cur.fetchone() == (3,)
print("ok")
"#,
        port,
        &[("LEAK", leak.to_str().unwrap())],
    );
    assert!(out.contains("ok"), "{out}");
    let join = out
        .lines()
        .find(|l| l.starts_with("refused: SELECT a.value"))
        .unwrap();
    assert!(join.contains("memory"), "{out}");
    assert!(!leak.exists());
    stop(server);
}

#[test]
fn do_put_imports_durably_and_sql_over_flight_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = seeded(dir.path());
    let (server, port) = start(&data, &[]);
    let out = py(
        r#"
import os, json
import pyarrow as pa, pyarrow.flight as fl
client = fl.FlightClient(f"grpc://127.0.0.1:{os.environ['PORT']}")
o = fl.FlightCallOptions(headers=[client.authenticate_basic_token("admin", os.environ["ADMIN_PASSWORD"])])
n = 20000
batch = pa.record_batch([
    pa.array([1_656_633_600_000 + i * 1000 for i in range(n)], pa.timestamp("ms", tz="UTC")),
    pa.array(["old-1" if i % 2 else "old-2" for i in range(n)]),
    pa.array([float(i) for i in range(n)]),
    pa.array([i for i in range(n)], pa.int64()),
    pa.array([None if i % 3 else "ok" for i in range(n)]),
], names=["time", "device", "power_w", "energy_wh", "status"])
w, r = client.do_put(fl.FlightDescriptor.for_path("history"), batch.schema, options=o)
w.write_batch(batch.slice(0, 15000))
w.write_batch(batch.slice(15000))
w.done_writing()
meta = r.read()
w.close()
assert json.loads(meta.to_pybytes()) == {"rows": n}, meta
# A bad schema is explained.
bad = pa.record_batch([pa.array([1.0])], names=["power_w"])
try:
    w, _ = client.do_put(fl.FlightDescriptor.for_path("history"), bad.schema, options=o)
    w.write_batch(bad)
    w.close()
    raise SystemExit("bad schema accepted")
except pa.ArrowException as e:
    assert "`time`" in str(e), str(e)

def put(table, *batches):
    w, _ = client.do_put(fl.FlightDescriptor.for_path(table), batches[0].schema, options=o)
    try:
        for b in batches:
            w.write_batch(b)
        w.done_writing()
        w.close()
    except pa.ArrowException as e:
        return str(e)
    raise SystemExit(f"put into {table} accepted")

def rows(table):
    cmd = json.dumps({"table": table}).encode()
    info = client.get_flight_info(fl.FlightDescriptor.for_command(cmd), options=o)
    return sum(client.do_get(e.ticket, options=o).read_all().num_rows for e in info.endpoints)

# A batch with one bad row stores none of its rows (it spans three append
# chunks); the batches before it stay stored, and the error says so.
def batch(n, start, bad_row=None):
    return pa.record_batch([
        pa.array([1_656_633_600_000 + (start + i) * 1000 for i in range(n)], pa.timestamp("ms")),
        pa.array([None if i == bad_row else "m1" for i in range(n)]),
        pa.array([1.0] * n),
    ], names=["time", "device", "p"])
err = put("partial", batch(100, 0), batch(20000, 100, bad_row=19000))
assert "row 19000" in err and "null `device`" in err, err
assert "100 rows of this put were stored before it" in err, err
assert rows("partial") == 100, rows("partial")
# A channel of another type than the table's refuses its batch whole.
other = pa.record_batch([
    pa.array([1_656_633_600_000 + i * 1000 for i in range(20000)], pa.timestamp("ms")),
    pa.array(["m1"] * 20000), pa.array(["x"] * 20000),
], names=["time", "device", "p"])
err = put("partial", other)
assert "holds f64" in err and "rows of this put" not in err, err
assert rows("partial") == 100, rows("partial")
# A time that does not fit in nanoseconds is named as such, not as a null.
far = pa.record_batch([
    pa.array([10**12], pa.timestamp("s")), pa.array(["m1"]), pa.array([1.0]),
], names=["time", "device", "p"])
err = put("partial", far)
assert "does not fit in nanoseconds" in err and "rows of this put" not in err, err
print("ok")
"#,
        port,
        &[],
    );
    assert!(out.contains("ok"), "{out}");
    // Through the CLI's Flight SQL client, over the wire.
    let sql = wattson(&data)
        .args([
            "sql",
            "--server",
            &format!("127.0.0.1:{port}"),
            "--user",
            "admin",
            "--format",
            "csv",
            "SELECT device, count(*) AS n, sum(energy_wh) AS e, count(status) AS s FROM history GROUP BY device ORDER BY device",
        ])
        .env("WATTSON_PASSWORD", ADMIN_PASSWORD)
        .output()
        .unwrap();
    assert!(
        sql.status.success(),
        "{}",
        String::from_utf8_lossy(&sql.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&sql.stdout),
        "device,n,e,s\nold-1,10000,100000000,3333\nold-2,10000,99990000,3334\n"
    );
    let bad = wattson(&data)
        .args([
            "sql",
            "--server",
            &format!("127.0.0.1:{port}"),
            "--user",
            "admin",
            "COPY (SELECT 1) TO '/tmp/x'",
        ])
        .env("WATTSON_PASSWORD", ADMIN_PASSWORD)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("read-only"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    stop(server);
    // Durable: after a restart the rows are still there.
    let out = wattson(&data)
        .args([
            "sql",
            "--format",
            "csv",
            "SELECT count(*) AS n FROM history",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "n\n20000\n");
}

#[test]
fn bench_flight_pulls_a_small_month_over_doget_and_adbc() {
    let venv = python().parent().unwrap().parent().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wattson"))
        .args([
            "--log",
            "warn",
            "bench",
            "flight",
            "--rows",
            "3000",
            "--no-postgres",
            "--json",
            "--venv",
        ])
        .arg(venv)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["rows"], 3000);
    assert_eq!(report["columns"], 19);
    assert!(report["doget_mb_per_s"].as_f64().unwrap() > 0.0, "{report}");
    let mut runs: Vec<f64> = report["adbc_pandas_runs_s"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_f64().unwrap())
        .collect();
    runs.sort_by(f64::total_cmp);
    assert_eq!(runs.len(), 3, "{report}");
    assert!(runs[0] > 0.0, "{report}");
    assert_eq!(
        report["adbc_pandas_s"].as_f64(),
        Some(runs[1]),
        "the reported pull is the median: {report}"
    );
    for skipped in [
        "postgres_pandas_s",
        "postgres_float8_pandas_s",
        "speedup_vs_postgres",
    ] {
        assert!(report[skipped].is_null(), "{skipped}: {report}");
    }
}

#[test]
fn flight_over_tls_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let data = seeded(dir.path());
    let pki = crate::mqtt::test_pki(dir.path());
    let config = dir.path().join("wattson.toml");
    std::fs::write(
        &config,
        format!(
            "[flight]\ncert = {:?}\nkey = {:?}\n",
            pki.cert.display().to_string(),
            pki.key.display().to_string()
        ),
    )
    .unwrap();
    let (server, port) = start(&data, &["--config", config.to_str().unwrap()]);
    let out = py(
        r#"
import os
import pyarrow.flight as fl
ca = open(os.environ["CA"], "rb").read()
client = fl.FlightClient(f"grpc+tls://localhost:{os.environ['PORT']}", tls_root_certs=ca)
o = fl.FlightCallOptions(headers=[client.authenticate_basic_token("admin", os.environ["ADMIN_PASSWORD"])])
assert [f.descriptor.path[0] for f in client.list_flights(options=o)] == [b"power_consumption"]
plain = fl.FlightClient(f"grpc://localhost:{os.environ['PORT']}")
try:
    plain.authenticate_basic_token("admin", os.environ["ADMIN_PASSWORD"])
    raise SystemExit("plain gRPC accepted on the TLS port")
except fl.FlightError:
    pass
print("ok")
"#,
        port,
        &[("CA", pki.ca_pem.to_str().unwrap())],
    );
    assert!(out.contains("ok"), "{out}");
    // The CLI's Flight SQL client: TLS with the CA, refused without it.
    let sql = |server: &str, ca: Option<&Path>| {
        let mut cmd = wattson(&data);
        cmd.args(["sql", "--server", server, "--user", "admin"]);
        if let Some(ca) = ca {
            cmd.arg("--tls-ca").arg(ca);
        }
        cmd.args([
            "--format",
            "csv",
            "SELECT count(*) AS n FROM power_consumption",
        ])
        .env("WATTSON_PASSWORD", ADMIN_PASSWORD)
        .output()
        .unwrap()
    };
    let server_name = format!("localhost:{port}");
    let ok = sql(&server_name, Some(&pki.ca_pem));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "n\n3\n");
    let plain = sql(&server_name, None);
    assert!(
        !plain.status.success(),
        "plain gRPC accepted on the TLS port"
    );
    let missing = sql(&server_name, Some(&dir.path().join("no-such-ca.pem")));
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no-such-ca.pem"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    stop(server);
}
