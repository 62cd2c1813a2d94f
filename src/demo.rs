//! `wattson demo`: the server plus a few simulated meters, so that live
//! data flows within seconds of the first command a newcomer runs.
//!
//! It creates (in a fresh temporary data directory unless one is given) an
//! admin account with a random password and one device account per meter,
//! prints those credentials once, starts `serve` with them, and runs
//! `simulate` against it until Ctrl-C. Nothing here is special to the demo:
//! the same accounts, server and simulator are what `wattson user add`,
//! `wattson serve` and `wattson simulate` use.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use wattson_ingest::auth::{EntryKind, Role, UserStore};

use crate::serve::{self, Listening};
use crate::simulate::{self, Faults, Mode, SimConfig};

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Data directory to use; a temporary one (deleted at the end) if `None`.
    pub dir: Option<PathBuf>,
    pub devices: usize,
    pub mode: Mode,
    pub seed: u64,
    pub meters_listen: SocketAddr,
    pub subscribers_listen: SocketAddr,
    pub flight_listen: SocketAddr,
    pub dashboard_listen: SocketAddr,
}

/// The demo admin's name.
pub const DEMO_ADMIN: &str = "admin";

/// The id of the `i`-th (1-based) demo meter.
fn demo_device(i: usize) -> String {
    format!("demo-{i:04}")
}

/// The accounts the demo made.
struct Accounts {
    /// The admin's password, if the demo created the admin.
    password: Option<String>,
    /// (id, secret) per meter.
    meters: Vec<(String, String)>,
}

/// Creates the admin (unless one exists) and the demo meters (with fresh
/// secrets) in `data`.
fn accounts(data: &Path, devices: usize) -> Result<Accounts> {
    let users = UserStore::open(data)
        .with_context(|| format!("opening the user store in {}", data.display()))?;
    let has_admin = users
        .list()
        .iter()
        .any(|e| e.kind == EntryKind::User && e.role == Role::Admin);
    let password = if has_admin {
        None
    } else {
        let password = format!("{:032x}", rand::random::<u128>());
        users.add_user(DEMO_ADMIN, Role::Admin, &password)?;
        Some(password)
    };
    let existing: Vec<String> = users.list().into_iter().map(|e| e.name).collect();
    let mut creds = Vec::with_capacity(devices);
    for i in 1..=devices {
        let id = demo_device(i);
        // A rerun in the same directory gets new secrets: the old ones were
        // printed once and are gone.
        if existing.contains(&id) {
            users.remove(&id)?;
        }
        let secret = users.add_device(&id)?;
        creds.push((id, secret));
    }
    Ok(Accounts {
        password,
        meters: creds,
    })
}

/// Runs the demo until SIGINT or SIGTERM.
pub fn run(cfg: &DemoConfig) -> Result<()> {
    if cfg.devices == 0 {
        bail!("--devices must be at least 1");
    }
    let tmp;
    let data = match &cfg.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("wattson-demo-")
                .tempdir()
                .context("creating a temporary data directory")?;
            tmp.path().to_path_buf()
        }
    };
    let temporary = cfg.dir.is_none();
    let Accounts {
        password,
        meters: creds,
    } = accounts(&data, cfg.devices)?;
    let cred_file = data.join("demo-meters.txt");
    // Rewritten whole: the secrets of a previous run are void.
    let _ = std::fs::remove_file(&cred_file);
    for (id, secret) in &creds {
        simulate::append_credentials(&cred_file, id, secret)?;
    }

    let mut config = serve::Config::default();
    config.mqtt.listen = cfg.meters_listen;
    config.subscribers.listen = cfg.subscribers_listen;
    config.flight.listen = cfg.flight_listen;
    config.dashboard.listen = cfg.dashboard_listen;
    // The demo may run beside a server that holds the default metrics port.
    config.dashboard.metrics_listen = String::new();
    let stop = Arc::new(AtomicBool::new(false));
    let sim = Arc::new(parking_lot::Mutex::new(None));
    let on_ready = {
        let (stop, sim, data) = (stop.clone(), sim.clone(), data.clone());
        let (mode, seed, devices) = (cfg.mode, cfg.seed, cfg.devices);
        let cred_file = cred_file.clone();
        Box::new(move |at: Listening| {
            print_banner(
                &data,
                temporary,
                password.as_deref(),
                &creds,
                &cred_file,
                at,
            );
            let sim_cfg = SimConfig {
                broker: at.meters.to_string(),
                credentials: creds,
                devices,
                rate_hz: 1.0,
                seed,
                mode,
                faults: Faults::default(),
                table: crate::simdata::SEED_TABLE.to_owned(),
                duration: None,
                drain: Duration::from_secs(1),
                acked_log: None,
            };
            let handle = std::thread::spawn(move || simulate::run(&sim_cfg, stop));
            *sim.lock() = Some(handle);
        })
    };
    let served = serve::run_with(&data, config, on_ready);
    stop.store(true, Ordering::SeqCst);
    if let Some(handle) = sim.lock().take() {
        match handle.join() {
            Ok(Ok(report)) => eprintln!(
                "demo meters stopped: {} readings generated, {} acknowledged (stored)",
                report.readings_generated, report.readings_acked
            ),
            Ok(Err(e)) => eprintln!("the simulated meters failed: {e:#}"),
            Err(_) => eprintln!("the simulated meters panicked"),
        }
    }
    served
}

fn print_banner(
    data: &Path,
    temporary: bool,
    password: Option<&str>,
    creds: &[(String, String)],
    cred_file: &Path,
    at: Listening,
) {
    let ids: Vec<&str> = creds.iter().map(|(id, _)| id.as_str()).collect();
    let mut out = String::new();
    out.push_str("\nWattson demo: the server is running with simulated meters.\n\n");
    out.push_str(&format!("  data directory   {}\n", data.display()));
    match password {
        Some(p) => out.push_str(&format!(
            "  admin login      {DEMO_ADMIN} / {p}   (shown once)\n"
        )),
        None => out.push_str("  admin login      the existing admin of this directory\n"),
    }
    out.push_str(&format!(
        "  meters           {} publishing 1 reading/s to {} (secrets in {})\n",
        ids.join(", "),
        at.meters,
        cred_file.display()
    ));
    out.push_str(&format!(
        "  live readings    subscribe to `meters/#` on {} as the admin, e.g.\n\
         \x20                  mosquitto_sub -h {} -p {} -u {DEMO_ADMIN} -P PASSWORD -t 'meters/#' -v\n",
        at.subscribers,
        at.subscribers.ip(),
        at.subscribers.port()
    ));
    out.push_str(&format!(
        "  Arrow Flight     grpc://{} as the admin (Flight SQL, ADBC, pyarrow), e.g.\n\
         \x20                  wattson sql --server {} --user {DEMO_ADMIN} 'SELECT * FROM system.devices'\n",
        at.flight, at.flight
    ));
    let scheme = if at.dashboard_tls { "https" } else { "http" };
    out.push_str(&format!(
        "  dashboard        {scheme}://{}/  (log in as the admin)\n",
        at.dashboard
    ));
    if temporary {
        out.push_str(
            "  stored readings  this temporary directory is deleted when the demo stops;\n\
             \x20                  run `wattson demo --dir DIR` to keep the data and export it\n",
        );
    } else {
        out.push_str(&format!(
            "  stored readings  after stopping: wattson --data-dir {} export \\\n\
             \x20                    --table power_consumption --format csv -\n",
            data.display()
        ));
    }
    out.push_str("\nCtrl-C stops the demo.\n");
    println!("{out}");
}
