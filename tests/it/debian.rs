//! Test clients from Debian packages, installed by the tests themselves when
//! missing (CI runs as root on Debian), once per test run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// `mosquitto_pub` from Debian's mosquitto-clients, installing the package
/// with apt-get when it is missing. `None` (after a loud message) only when
/// it can be neither found nor installed: not root and no passwordless
/// sudo, or no package source reachable.
pub(crate) fn mosquitto_pub() -> Option<&'static Path> {
    static TOOL: OnceLock<Option<PathBuf>> = OnceLock::new();
    found_or_installed(&TOOL, "mosquitto_pub", "mosquitto-clients")
}

/// Debian's `chromium` for the dashboard's browser test, installed like
/// [`mosquitto_pub`].
pub(crate) fn chromium() -> Option<&'static Path> {
    static TOOL: OnceLock<Option<PathBuf>> = OnceLock::new();
    found_or_installed(&TOOL, "chromium", "chromium")
}

/// `npm` (with node) for installing the browser test's driver from the npm
/// registry, installed like [`mosquitto_pub`] from Debian's npm package.
pub(crate) fn npm() -> Option<&'static Path> {
    static TOOL: OnceLock<Option<PathBuf>> = OnceLock::new();
    found_or_installed(&TOOL, "npm", "npm")
}

/// `binary` on the PATH, installing `package` once when it is missing.
fn found_or_installed(
    cell: &'static OnceLock<Option<PathBuf>>,
    binary: &str,
    package: &str,
) -> Option<&'static Path> {
    cell.get_or_init(|| {
        if let Some(p) = find(binary) {
            return Some(p);
        }
        let log = install(package);
        let found = find(binary);
        if found.is_none() {
            eprintln!(
                "\n********\nSKIPPED: {binary} is not installed and `apt-get install {package}` failed; \
                 install Debian's {package} to run this test.\n{log}\n********\n"
            );
        }
        found
    })
    .as_deref()
}

fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Runs apt-get (through `sudo -n` when not root); on failure refreshes
/// the package lists and tries once more. Returns what apt printed.
fn install(package: &str) -> String {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let apt = |args: &[&str]| {
        let mut cmd = if root {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.args(["-n", "apt-get"]);
            c
        };
        // Another apt run (a second test run, the other worktrees) holds
        // the dpkg lock for a while; wait for it instead of failing.
        cmd.args(["-o", "DPkg::Lock::Timeout=300"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive");
        match cmd.output() {
            Ok(o) => (
                o.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
            ),
            Err(e) => (false, format!("{cmd:?}: {e}")),
        }
    };
    let install_args = ["install", "-y", "--no-install-recommends", package];
    eprintln!("installing Debian package {package} for the interop tests");
    let (ok, log) = apt(&install_args);
    if ok {
        return log;
    }
    let (_, update_log) = apt(&["update"]);
    let (_, retry_log) = apt(&install_args);
    format!("{log}\n{update_log}\n{retry_log}")
}
