//! Topic patterns: which device and table an MQTT topic writes to, and
//! which topics a device may publish on.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use wattson_storage::model::{validate_channel_name, validate_device_name, validate_table_name};

use crate::error::{Error, Result};

/// The topic every device may use without configuration.
pub const DEFAULT_PATTERN: &str = "meters/{device}/{table}";
/// Devices publish under `meters/{id}/` and nowhere else.
const DEVICE_ROOT: &str = "meters";
/// The level under a device's prefix where the server reports rejections.
const ERRORS_LEVEL: &str = "errors";

/// One `[[ingest.topics]]` entry of `wattson.toml`:
///
/// ```toml
/// [[ingest.topics]]
/// pattern = "meters/{device}/{table}"
///
/// [[ingest.topics]]            # Tasmota, FullTopic set to meters/%topic%/%prefix%/
/// pattern = "meters/{device}/tele/SENSOR"
/// table = "power_consumption"
///
/// [[ingest.topics]]            # Shelly, MQTT prefix set to meters/<id>
/// pattern = "meters/{device}/emeter/0/power"
/// table = "power_consumption"
/// channel = "power_w"
/// ```
///
/// `{device}` and `{table}` each stand for exactly one whole topic level;
/// other levels match literally. MQTT wildcards (`+`, `#`) and empty levels
/// are refused, so a pattern can never capture a `/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicPattern {
    /// Topic levels separated by `/`; must contain `{device}` once.
    pub pattern: String,
    /// Fixed table, for patterns without `{table}`. With neither, only line
    /// protocol can be decoded (its measurement names the table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// Channel for a bare value payload (`"231.4"`), as Shelly-style
    /// devices send one topic per quantity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

impl TopicPattern {
    /// A pattern with no fixed table or channel.
    pub fn new(pattern: impl Into<String>) -> Self {
        TopicPattern {
            pattern: pattern.into(),
            table: None,
            channel: None,
        }
    }
}

/// Where a topic's messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMatch {
    pub device: String,
    /// `None` when the pattern gives no table: only line protocol, whose
    /// measurement names it, can be decoded then.
    pub table: Option<String>,
    /// The channel a bare value payload is stored under.
    pub channel: Option<Arc<str>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    Device,
    Table,
}

#[derive(Debug, Clone)]
struct Compiled {
    levels: Vec<Level>,
    table: Option<String>,
    channel: Option<Arc<str>>,
}

/// Ordered topic patterns; the first that matches with valid names wins.
#[derive(Debug, Clone)]
pub struct TopicMap {
    patterns: Vec<Compiled>,
    /// As configured, for display and for writing the config back.
    source: Vec<TopicPattern>,
}

impl Default for TopicMap {
    /// Just [`DEFAULT_PATTERN`].
    fn default() -> Self {
        let p = TopicPattern::new(DEFAULT_PATTERN);
        TopicMap {
            patterns: vec![Compiled {
                levels: vec![
                    Level::Literal(DEVICE_ROOT.into()),
                    Level::Device,
                    Level::Table,
                ],
                table: None,
                channel: None,
            }],
            source: vec![p],
        }
    }
}

impl TopicMap {
    /// Checks and compiles patterns, in order of precedence. Configured
    /// patterns replace the default; list [`DEFAULT_PATTERN`] to keep it.
    pub fn new(patterns: &[TopicPattern]) -> Result<TopicMap> {
        if patterns.is_empty() {
            return Err(Error::InvalidInput(
                "ingest.topics: at least one topic pattern is needed".into(),
            ));
        }
        let compiled = patterns.iter().map(compile).collect::<Result<_>>()?;
        Ok(TopicMap {
            patterns: compiled,
            source: patterns.to_vec(),
        })
    }

    /// The patterns as configured.
    pub fn patterns(&self) -> &[TopicPattern] {
        &self.source
    }

    /// Maps a topic to its device and table. Patterns are tried in order; a
    /// pattern whose captured device or table is not a valid name does not
    /// match, and the next is tried. A device's error topic
    /// (`meters/{device}/errors`) never resolves: the server writes it.
    pub fn resolve(&self, topic: &str) -> Option<TopicMatch> {
        self.patterns
            .iter()
            .find_map(|p| p.matches(topic))
            .filter(|m| !is_error_topic(&m.device, topic))
    }

    /// What the broker asks for each publish by an authenticated device:
    /// the topic must pass [`device_may_publish`] and resolve to that same
    /// device (a pattern could place `{device}` anywhere).
    pub fn authorize(&self, device_id: &str, topic: &str) -> Option<TopicMatch> {
        if !device_may_publish(device_id, topic) {
            return None;
        }
        self.resolve(topic).filter(|m| m.device == device_id)
    }
}

fn compile(p: &TopicPattern) -> Result<Compiled> {
    let bad =
        |why: &str| Error::InvalidInput(format!("ingest.topics: pattern `{}`: {why}", p.pattern));
    let mut levels = Vec::new();
    for level in p.pattern.split('/') {
        levels.push(match level {
            "{device}" => Level::Device,
            "{table}" => Level::Table,
            "" => return Err(bad("empty topic level")),
            l if l.contains(['+', '#']) => {
                return Err(bad("MQTT wildcards `+` and `#` are not allowed"));
            }
            l if l.contains(['{', '}']) => {
                return Err(bad(
                    "placeholders are `{device}` and `{table}`, each a whole topic level",
                ));
            }
            l if l.contains('\0') => return Err(bad("NUL in a topic level")),
            l => Level::Literal(l.to_owned()),
        });
    }
    let count = |want: &Level| levels.iter().filter(|l| *l == want).count();
    if count(&Level::Device) != 1 {
        return Err(bad("needs `{device}` exactly once"));
    }
    match (count(&Level::Table), &p.table) {
        (0, _) => {}
        (1, None) => {}
        (1, Some(_)) => return Err(bad("has `{table}` and a fixed table; choose one")),
        _ => return Err(bad("has `{table}` more than once")),
    }
    if let Some(t) = &p.table {
        validate_table_name(t).map_err(|e| bad(&e.to_string()))?;
    }
    if let Some(c) = &p.channel {
        validate_channel_name(c).map_err(|e| bad(&e.to_string()))?;
        if c == "table" {
            return Err(bad("`table` cannot be a channel"));
        }
    }
    Ok(Compiled {
        levels,
        table: p.table.clone(),
        channel: p.channel.as_deref().map(Arc::from),
    })
}

impl Compiled {
    fn matches(&self, topic: &str) -> Option<TopicMatch> {
        let mut parts = topic.split('/');
        let mut device = None;
        let mut table = None;
        for level in &self.levels {
            let part = parts.next()?;
            match level {
                Level::Literal(l) if part == l => {}
                Level::Literal(_) => return None,
                Level::Device => device = Some(part),
                Level::Table => table = Some(part),
            }
        }
        if parts.next().is_some() {
            return None;
        }
        let device = device?;
        validate_device_name(device).ok()?;
        let table = match table {
            Some(t) => {
                validate_table_name(t).ok()?;
                Some(t.to_owned())
            }
            None => self.table.clone(),
        };
        Some(TopicMatch {
            device: device.to_owned(),
            table,
            channel: self.channel.clone(),
        })
    }
}

/// Whether `device_id` may publish on `topic`: the topic must be
/// `meters/{device_id}/` followed by one or more non-empty levels, without
/// MQTT wildcards, NUL, `.` or `..` levels, and not the device's error
/// topic. `meters/dev1x/...` is not under `meters/dev1/`.
pub fn device_may_publish(device_id: &str, topic: &str) -> bool {
    if validate_device_name(device_id).is_err() {
        return false;
    }
    let Some(rest) = topic
        .strip_prefix(DEVICE_ROOT)
        .and_then(|r| r.strip_prefix('/'))
        .and_then(|r| r.strip_prefix(device_id))
        .and_then(|r| r.strip_prefix('/'))
    else {
        return false;
    };
    !rest.is_empty()
        && rest != ERRORS_LEVEL
        && rest
            .split('/')
            .all(|l| !l.is_empty() && l != "." && l != ".." && !l.contains(['+', '#', '\0']))
}

/// Where the server publishes a device's rejections: `meters/{device}/errors`.
pub fn error_topic(device: &str) -> String {
    format!("{DEVICE_ROOT}/{device}/{ERRORS_LEVEL}")
}

fn is_error_topic(device: &str, topic: &str) -> bool {
    topic
        .strip_prefix(DEVICE_ROOT)
        .and_then(|r| r.strip_prefix('/'))
        .and_then(|r| r.strip_prefix(device))
        .and_then(|r| r.strip_prefix('/'))
        == Some(ERRORS_LEVEL)
}
