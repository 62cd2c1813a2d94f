//! What every payload format shares: interned channel names and the checks
//! a reading passes before it joins a message's batch (limits, time range,
//! clock skew, duplicates, type conflicts within the message).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use wattson_storage::model::{MAX_NAME_BYTES, validate_channel_name, validate_time};
use wattson_storage::{ChannelType, Reading, Value};

use super::error::{PayloadError, clip};
use super::{DecodeOptions, TopicMatch};

/// Most names one decoder keeps. A device inventing names must not grow
/// memory without bound; past the cap the cache starts over, which costs
/// one allocation per name until the working set is cached again.
const NAME_CACHE_CAP: usize = 4096;
/// Positions remembered for the "same keys in the same order as last time"
/// fast path. Wider readings still work, through the hash set.
const HINT_CAP: usize = 256;

/// Channel names shared as `Arc<str>`, so that a reading costs a pointer
/// copy per channel instead of a string allocation.
///
/// Within one message interning is canonical: equal names are the same
/// `Arc`, because the cache is only ever cleared between messages (see
/// [`NameCache::start_message`]). The duplicate and type checks rely on it
/// to compare names by pointer.
#[derive(Debug, Default)]
pub(super) struct NameCache {
    set: HashSet<Arc<str>>,
    /// The name last seen at each key position. Meters send the same keys in
    /// the same order every time, so this usually hits with one short
    /// string compare and no hashing.
    hint: Vec<Arc<str>>,
}

impl NameCache {
    /// Called before each message: past the cap, starts the cache over
    /// (hints included, so every name handed out comes from the set).
    pub(super) fn start_message(&mut self) {
        if self.set.len() >= NAME_CACHE_CAP {
            self.set.clear();
            self.hint.clear();
        }
    }

    /// Returns the shared name for `name`, checking it on first sight.
    /// `pos` is the key's position in its reading.
    pub(super) fn intern(&mut self, pos: usize, name: &str) -> Result<Arc<str>, PayloadError> {
        if let Some(h) = self.hint.get(pos)
            && **h == *name
        {
            return Ok(h.clone());
        }
        let arc = match self.set.get(name) {
            Some(a) => a.clone(),
            None => {
                check_channel_name(name)?;
                let a: Arc<str> = Arc::from(name);
                self.set.insert(a.clone());
                a
            }
        };
        if let Some(slot) = self.hint.get_mut(pos) {
            *slot = arc.clone();
        } else if pos == self.hint.len() && pos < HINT_CAP {
            self.hint.push(arc.clone());
        }
        Ok(arc)
    }
}

/// Channel-name rules: the store's, plus the keys that come from the topic.
fn check_channel_name(name: &str) -> Result<(), PayloadError> {
    let reason = match name {
        "device" => "the device comes from the topic".to_owned(),
        "table" => "the table comes from the topic".to_owned(),
        _ if name.len() > MAX_NAME_BYTES => format!("longer than {MAX_NAME_BYTES} bytes"),
        _ => match validate_channel_name(name) {
            Ok(()) => return Ok(()),
            Err(e) => e.to_string(),
        },
    };
    Err(PayloadError::BadChannelName {
        name: clip(name),
        reason,
    })
}

/// Channels seen within one message: their type, so that `{"a":1}` and
/// `{"a":"x"}` in one batch are refused before the store sees either, and
/// the last reading each appeared in, which finds duplicate keys in the
/// same pass. Names are compared by pointer (interning is canonical per
/// message).
#[derive(Debug, Default)]
struct Tracker {
    /// Channels in order of first appearance.
    order: Vec<Slot>,
    /// Name pointer to position in `order`; built only once `order` is too
    /// long to scan, and only on a positional miss: uniform batches (the
    /// same keys in the same order) never hash.
    index: Option<HashMap<*const u8, usize>>,
    /// Number of the reading being checked, from 1.
    reading: usize,
}

#[derive(Debug)]
struct Slot {
    name: Arc<str>,
    /// `None` while the channel has only been null.
    ty: Option<ChannelType>,
    /// The last reading the channel appeared in.
    seen: usize,
}

/// Longest list scanned linearly before hashing.
const SCAN_LIMIT: usize = 32;

fn key(name: &Arc<str>) -> *const u8 {
    name.as_ptr()
}

impl Tracker {
    /// Checks one key of the current reading; `ty` is `None` for null.
    fn check(
        &mut self,
        pos: usize,
        name: &Arc<str>,
        ty: Option<ChannelType>,
    ) -> Result<(), PayloadError> {
        let slot = match self.order.get(pos) {
            Some(s) if Arc::ptr_eq(&s.name, name) => Some(pos),
            _ if self.order.len() <= SCAN_LIMIT => {
                self.order.iter().position(|s| Arc::ptr_eq(&s.name, name))
            }
            _ => {
                let order = &self.order;
                let index = self.index.get_or_insert_with(|| {
                    order
                        .iter()
                        .enumerate()
                        .map(|(i, s)| (key(&s.name), i))
                        .collect()
                });
                index.get(&key(name)).copied()
            }
        };
        let reading = self.reading;
        let Some(slot) = slot.and_then(|i| self.order.get_mut(i)) else {
            if let Some(index) = &mut self.index {
                index.insert(key(name), self.order.len());
            }
            self.order.push(Slot {
                name: name.clone(),
                ty,
                seen: reading,
            });
            return Ok(());
        };
        if slot.seen == reading {
            return Err(PayloadError::DuplicateKey { key: clip(name) });
        }
        slot.seen = reading;
        match (slot.ty, ty) {
            (Some(first), Some(second)) if first != second => Err(PayloadError::TypeConflict {
                key: clip(name),
                first,
                second,
            }),
            (None, Some(_)) => {
                slot.ty = ty;
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// The readings of one message under construction.
#[derive(Debug)]
pub(super) struct Batch<'m> {
    pub(super) m: &'m TopicMatch,
    pub(super) opts: &'m DecodeOptions,
    pub(super) now_ns: i64,
    pub(super) names: &'m mut NameCache,
    pub(super) readings: Vec<Reading>,
    /// The device and the last table, shared by the message's readings.
    device: Arc<str>,
    table: Option<Arc<str>>,
    channels: Tracker,
    /// Channels in the previous reading: sizes the next one's vector.
    last_width: usize,
}

impl<'m> Batch<'m> {
    pub(super) fn new(
        m: &'m TopicMatch,
        opts: &'m DecodeOptions,
        now_ns: i64,
        names: &'m mut NameCache,
    ) -> Self {
        Batch {
            m,
            opts,
            now_ns,
            names,
            readings: Vec::new(),
            device: Arc::from(m.device.as_str()),
            table: None,
            channels: Tracker::default(),
            last_width: 0,
        }
    }

    /// A vector for the next reading's values, sized like the last one.
    pub(super) fn values_vec(&self) -> Vec<(Arc<str>, Value)> {
        Vec::with_capacity(self.last_width)
    }

    /// Fails once the message already holds the most readings allowed.
    /// Called before parsing a reading so a huge batch stops early.
    pub(super) fn check_room(&self) -> Result<(), PayloadError> {
        if self.readings.len() >= self.opts.max_readings_per_message {
            return Err(PayloadError::TooManyReadings {
                limit: self.opts.max_readings_per_message,
            });
        }
        Ok(())
    }

    /// Checks a timestamp against the store's range and the clock-skew
    /// limits.
    pub(super) fn check_time(&self, ts: i64) -> Result<(), PayloadError> {
        if let Err(e) = validate_time("", ts) {
            let reason = e.to_string();
            let reason = reason.split(": ").last().unwrap_or(&reason).to_owned();
            return Err(PayloadError::BadTimestamp {
                value: ts.to_string(),
                reason,
            });
        }
        let ahead = self.opts.max_clock_skew.as_secs();
        let age = self.opts.max_age.as_secs();
        let ahead_ns = i64::try_from(self.opts.max_clock_skew.as_nanos()).unwrap_or(i64::MAX);
        let age_ns = i64::try_from(self.opts.max_age.as_nanos()).unwrap_or(i64::MAX);
        if ts > self.now_ns.saturating_add(ahead_ns) {
            return Err(PayloadError::ClockSkew {
                ts,
                now: self.now_ns,
                limit_secs: ahead,
            });
        }
        if ts < self.now_ns.saturating_sub(age_ns) {
            return Err(PayloadError::ClockSkew {
                ts,
                now: self.now_ns,
                limit_secs: age,
            });
        }
        Ok(())
    }

    /// Adds one reading after the per-reading checks. `time` is `None` when
    /// the payload gave none (the server's time is used); `nulls` are keys
    /// that were present but null, checked for duplicates only.
    pub(super) fn push(
        &mut self,
        table: &str,
        time: Option<i64>,
        values: Vec<(Arc<str>, Value)>,
        nulls: &[Arc<str>],
    ) -> Result<(), PayloadError> {
        self.check_room()?;
        let time = time.unwrap_or(self.now_ns);
        self.check_time(time)?;
        if values.is_empty() {
            return Err(PayloadError::Empty {
                reason: format!("reading {} has no channel values", self.readings.len() + 1),
            });
        }
        self.channels.reading += 1;
        for (pos, (name, v)) in values.iter().enumerate() {
            self.channels.check(pos, name, Some(v.channel_type()))?;
        }
        for (k, name) in nulls.iter().enumerate() {
            self.channels.check(values.len() + k, name, None)?;
        }
        self.last_width = values.len();
        let table = match &self.table {
            Some(t) if **t == *table => t.clone(),
            _ => {
                let t: Arc<str> = Arc::from(table);
                self.table = Some(t.clone());
                t
            }
        };
        self.readings.push(Reading {
            table,
            device: self.device.clone(),
            time,
            values,
        });
        Ok(())
    }
}
