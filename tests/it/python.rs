//! Python test clients, installed by the tests themselves from PyPI into a
//! virtual environment under the target directory, once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Pinned so a test run never changes under us.
const PACKAGES: &[&str] = &[
    "paho-mqtt==2.1.0",
    "pyarrow==26.0.1",
    "adbc-driver-manager==1.13.0",
    "adbc-driver-flightsql==1.13.0",
    "pandas==3.1.1",
    "polars==2.1.0",
];

/// The venv's python, creating and filling the venv on first use. Panics
/// with the installer's output if that fails (no network to PyPI, say).
pub(crate) fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("py-venv");
        let python = venv.join("bin/python");
        let stamp = venv.join(format!("installed-{}", PACKAGES.join("+")));
        if stamp.exists() {
            return python;
        }
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
        run(Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(PACKAGES));
        std::fs::write(&stamp, b"").unwrap();
        python
    })
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
