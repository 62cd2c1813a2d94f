//! Per-device message counters, the source of `system.devices`.

use std::collections::HashMap;

use parking_lot::Mutex;
use serde::Serialize;

use super::error::PayloadError;

/// One device's totals since the server started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeviceCounters {
    pub device: String,
    /// Messages accepted.
    pub messages: u64,
    /// Readings in accepted messages.
    pub readings: u64,
    /// Messages rejected.
    pub rejected: u64,
    /// Why the last rejected message was refused: `kind: reason`.
    pub last_reason: Option<String>,
}

/// A small thread-safe registry of [`DeviceCounters`].
///
/// One short lock per message, not per reading. Devices are authenticated,
/// so the number of entries is bounded by the device store.
#[derive(Debug, Default)]
pub struct IngestCounters {
    devices: Mutex<HashMap<String, DeviceCounters>>,
}

impl IngestCounters {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts an accepted message of `readings` readings.
    pub fn record_ok(&self, device: &str, readings: usize) {
        self.with(device, |c| {
            c.messages += 1;
            c.readings += readings as u64;
        });
    }

    /// Counts a rejected message. Returns whether its kind differs from
    /// the device's previous rejection, so a caller can log a device stuck
    /// on one mistake at debug level after the first warning.
    pub fn record_rejected(&self, device: &str, err: &PayloadError) -> bool {
        let reason = format!("{}: {err}", err.kind());
        let kind = err.kind();
        self.with(device, |c| {
            c.rejected += 1;
            let new = c
                .last_reason
                .as_deref()
                .is_none_or(|last| last.split(':').next() != Some(kind));
            c.last_reason = Some(reason);
            new
        })
    }

    /// All devices' counters, sorted by device.
    pub fn snapshot(&self) -> Vec<DeviceCounters> {
        let mut all: Vec<_> = self.devices.lock().values().cloned().collect();
        all.sort_by(|a, b| a.device.cmp(&b.device));
        all
    }

    fn with<T>(&self, device: &str, f: impl FnOnce(&mut DeviceCounters) -> T) -> T {
        let mut devices = self.devices.lock();
        // Look up by &str first: the common case allocates nothing.
        if let Some(c) = devices.get_mut(device) {
            return f(c);
        }
        let c = devices
            .entry(device.to_owned())
            .or_insert_with(|| DeviceCounters {
                device: device.to_owned(),
                ..DeviceCounters::default()
            });
        f(c)
    }
}
