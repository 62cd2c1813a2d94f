//! The meter credentials file that `wattson device add --credentials FILE`
//! writes and `wattson simulate --credentials FILE` reads.
//!
//! Format: UTF-8 text, one meter per line, its id and its secret separated
//! by whitespace (`meter-0001 4f1c…`). Blank lines and lines starting with
//! `#` are ignored. The file holds secrets, so it is created readable only
//! by its owner (mode 0600).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// Reads `(id, secret)` pairs in file order.
pub fn read_credentials(path: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the credentials file {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some(id), Some(secret), None) => out.push((id.to_owned(), secret.to_owned())),
            _ => bail!(
                "{} line {}: expected `DEVICE_ID SECRET`",
                path.display(),
                n + 1
            ),
        }
    }
    Ok(out)
}

/// Appends one meter to the file, creating it with mode 0600.
pub fn append_credentials(path: &Path, id: &str, secret: &str) -> Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut file = opts
        .open(path)
        .with_context(|| format!("opening the credentials file {}", path.display()))?;
    writeln!(file, "{id} {secret}")
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing the credentials file {}", path.display()))
}
