//! The three pages (live, history, fleet) and the JSON and streams they
//! load: catalog, live feed and its first 15 minutes, downsampled
//! history, daily kWh, downloads and the fleet table.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use arrow::array::{Array, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde_json::{Value as Json_, json};
use tokio::sync::broadcast::error::RecvError;
use wattson_storage::ChannelType;
use wattson_storage::model::{MAX_TIME_NS, MIN_TIME_NS};

use crate::downsample::M4;
use crate::sql::{self, Format};
use crate::web::{AppState, Authed};
use crate::{Error, Result, assets};

/// What the live view shows at first.
const LIVE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Columns of the first 15 minutes' curves (5 s each).
const LIVE_BINS: i64 = 180;
/// Most chart columns a history request may ask for.
const MAX_WIDTH: usize = 4000;
/// How often a live stream checks that its session still exists.
const SESSION_RECHECK: Duration = Duration::from_secs(5);

pub(crate) async fn live_page(Authed(s): Authed) -> Response {
    assets::app_html("live", &s.user, &s.csrf).into_response()
}

pub(crate) async fn history_page(Authed(s): Authed) -> Response {
    assets::app_html("history", &s.user, &s.csrf).into_response()
}

pub(crate) async fn fleet_page(Authed(s): Authed) -> Response {
    assets::app_html("fleet", &s.user, &s.csrf).into_response()
}

/// A SQL identifier, quoted.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A SQL string literal.
fn string(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A SQL timestamp literal for `ms` milliseconds since the epoch.
fn timestamp(ms: i64) -> String {
    let t = chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
    format!(
        "'{}'",
        t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    )
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn numeric(t: ChannelType) -> bool {
    matches!(t, ChannelType::F64 | ChannelType::I64 | ChannelType::Bool)
}

/// The channels a device card charts: power (`*_p`) when the table has
/// any, else every numeric channel.
fn curve_channels(channels: &[(String, ChannelType)]) -> Vec<String> {
    let numeric: Vec<&String> = channels
        .iter()
        .filter(|(_, t)| numeric(*t))
        .map(|(n, _)| n)
        .collect();
    let power: Vec<String> = numeric
        .iter()
        .filter(|n| n.ends_with("_p"))
        .map(|n| (*n).clone())
        .collect();
    if power.is_empty() {
        numeric.into_iter().cloned().collect()
    } else {
        power
    }
}

/// Times (ms) of a batch's column `i`, which must be a timestamp.
fn times_ms(batch: &RecordBatch, i: usize) -> Result<Int64Array> {
    let col = cast(batch.column(i), &DataType::Int64).map_err(|e| Error::Encode(e.to_string()))?;
    let ns = col
        .as_any()
        .downcast_ref::<Int64Array>()
        .ok_or_else(|| Error::Encode("time column is not a timestamp".into()))?;
    Ok(ns
        .iter()
        .map(|v| v.map(|ns| ns.div_euclid(1_000_000)))
        .collect())
}

fn floats(batch: &RecordBatch, i: usize) -> Result<Float64Array> {
    let col =
        cast(batch.column(i), &DataType::Float64).map_err(|e| Error::Encode(e.to_string()))?;
    col.as_any()
        .downcast_ref::<Float64Array>()
        .cloned()
        .ok_or_else(|| Error::Encode("not a number column".into()))
}

fn strings(batch: &RecordBatch, i: usize) -> Result<StringArray> {
    let col = cast(batch.column(i), &DataType::Utf8).map_err(|e| Error::Encode(e.to_string()))?;
    col.as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .ok_or_else(|| Error::Encode("not a text column".into()))
}

/// Batches as JSON objects, one per row.
fn rows_json(batches: &[RecordBatch]) -> Result<Json_> {
    let mut buf = Vec::new();
    {
        let mut w = arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow::json::writer::JsonArray>(&mut buf);
        for b in batches {
            w.write(b).map_err(|e| Error::Encode(e.to_string()))?;
        }
        w.finish().map_err(|e| Error::Encode(e.to_string()))?;
    }
    if buf.is_empty() {
        return Ok(json!([]));
    }
    serde_json::from_slice(&buf).map_err(|e| Error::Encode(e.to_string()))
}

async fn collect(app: &AppState, sql: &str) -> Result<Vec<RecordBatch>> {
    let started = Instant::now();
    let out = app.engine.collect(sql).await;
    app.queries.record(started.elapsed(), out.is_ok());
    Ok(out?)
}

/// `GET /api/catalog`: tables with their channels, and which devices
/// have data in which table.
pub(crate) async fn catalog(_: Authed, State(app): State<AppState>) -> Response {
    let tables: Vec<Json_> = app
        .store
        .tables()
        .into_iter()
        .map(|t| {
            let channels: Vec<Json_> = t
                .channels
                .iter()
                .map(|(n, ty)| json!({ "name": n, "numeric": numeric(*ty) }))
                .collect();
            let mut devices: Vec<String> = app
                .store
                .partitions()
                .into_iter()
                .filter(|p| p.table == t.name)
                .map(|p| p.device)
                .collect();
            devices.sort();
            devices.dedup();
            json!({ "name": t.name, "channels": channels, "curve": curve_channels(&t.channels), "devices": devices })
        })
        .collect();
    Json(json!({ "tables": tables, "stale_after_ms": app.stale_after.as_millis() as u64 }))
        .into_response()
}

/// `GET /api/live`: server-sent events, one per stored message, straight
/// from ingest. Ends when the session ends or the server stops.
pub(crate) async fn live_stream(
    Authed(s): Authed,
    State(app): State<AppState>,
) -> Sse<impl Stream<Item = std::result::Result<Event, Infallible>>> {
    let rx = app.live.subscribe();
    let mut recheck = tokio::time::interval(SESSION_RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stopped = app.stopped.clone();
    let state = (rx, recheck, stopped, app, s.id);
    let stream = futures::stream::unfold(state, |mut st| async move {
        loop {
            let (rx, recheck, stopped, app, id) = &mut st;
            tokio::select! {
                got = rx.recv() => match got {
                    Ok(event) => {
                        return Some((Ok(Event::default().data(&*event)), st));
                    }
                    Err(RecvError::Lagged(n)) => app.live.count_viewer_drop(n),
                    Err(RecvError::Closed) => return None,
                },
                _ = recheck.tick() => {
                    // The session ended (logout, timeout): so does the stream.
                    app.sessions.get(&app.users, id, Instant::now(), false)?;
                }
                _ = stopped.changed() => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// `GET /api/live/init`: the last 15 minutes of every device's curve
/// channels (5-second means), the latest values, and last-seen times.
pub(crate) async fn live_init(_: Authed, State(app): State<AppState>) -> Result<Response> {
    let now = now_ms();
    let from = now - LIVE_WINDOW.as_millis() as i64;
    let bin = LIVE_WINDOW.as_millis() as i64 / LIVE_BINS;
    let mut tables = Vec::new();
    for t in app.store.tables() {
        let curve = curve_channels(&t.channels);
        if curve.is_empty() {
            continue;
        }
        let cols: Vec<String> = curve.iter().map(|c| ident(c)).collect();
        let sql = format!(
            "SELECT time, device, {} FROM {} WHERE time >= {} AND time < {}",
            cols.join(", "),
            ident(&t.name),
            timestamp(from),
            timestamp(now + 60_000),
        );
        // device -> channel -> bin -> (sum, count)
        let mut sums: BTreeMap<String, Vec<Vec<(f64, u32)>>> = BTreeMap::new();
        for batch in collect(&app, &sql).await? {
            let times = times_ms(&batch, 0)?;
            let devices = strings(&batch, 1)?;
            let values: Vec<Float64Array> = (0..curve.len())
                .map(|i| floats(&batch, i + 2))
                .collect::<Result<_>>()?;
            for row in 0..batch.num_rows() {
                if times.is_null(row) || devices.is_null(row) {
                    continue;
                }
                let b = ((times.value(row) - from) / bin).clamp(0, LIVE_BINS - 1) as usize;
                let per = sums
                    .entry(devices.value(row).to_owned())
                    .or_insert_with(|| vec![vec![(0.0, 0); LIVE_BINS as usize]; curve.len()]);
                for (c, col) in values.iter().enumerate() {
                    if !col.is_null(row) {
                        let slot = &mut per[c][b];
                        slot.0 += col.value(row);
                        slot.1 += 1;
                    }
                }
            }
        }
        let devices: serde_json::Map<String, Json_> = sums
            .into_iter()
            .map(|(device, per)| {
                let series: serde_json::Map<String, Json_> = curve
                    .iter()
                    .zip(per)
                    .map(|(name, bins)| {
                        let points: Vec<Json_> = bins
                            .iter()
                            .enumerate()
                            .filter(|(_, (_, n))| *n > 0)
                            .map(|(i, (sum, n))| {
                                json!([from + i as i64 * bin + bin / 2, sum / f64::from(*n)])
                            })
                            .collect();
                        (name.clone(), Json_::from(points))
                    })
                    .collect();
                (device, Json_::from(series))
            })
            .collect();
        let latest = rows_json(
            &collect(
                &app,
                &format!("SELECT * FROM last_cache({})", string(&t.name)),
            )
            .await?,
        )?;
        tables.push(json!({
            "table": t.name,
            "curve": curve,
            "devices": devices,
            "latest": latest,
        }));
    }
    Ok(Json(json!({
        "now": now,
        "window_ms": LIVE_WINDOW.as_millis() as u64,
        "stale_after_ms": app.stale_after.as_millis() as u64,
        "tables": tables,
    }))
    .into_response())
}

/// A selected range of one device's channels.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Selection {
    table: String,
    device: String,
    /// Comma-separated; empty or missing: every numeric channel.
    #[serde(default)]
    channels: String,
    /// Milliseconds since the epoch, `from` inclusive, `to` exclusive.
    from: i64,
    to: i64,
    /// Chart width in pixels (history).
    width: Option<usize>,
    /// `csv` or `parquet` (export).
    format: Option<String>,
}

impl Selection {
    /// The channel names in the request, if it names any.
    fn wanted(&self) -> Vec<&str> {
        self.channels
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect()
    }

    /// The table's numeric channels that were asked for, checked against
    /// the schema (so they are safe to quote into SQL).
    fn channels(&self, app: &AppState) -> Result<Vec<String>> {
        let def = app
            .store
            .table(&self.table)
            .ok_or_else(|| Error::BadRequest(format!("no table `{}`", self.table)))?;
        let (first, last) = (
            MIN_TIME_NS.div_euclid(1_000_000),
            MAX_TIME_NS.div_euclid(1_000_000),
        );
        // `to` is exclusive, so it may be the first moment of 2200.
        for (name, ms, held) in [
            ("from", self.from, first..=last),
            ("to", self.to, first..=last + 1),
        ] {
            if !held.contains(&ms) {
                return Err(Error::BadRequest(format!(
                    "`{name}` ({ms} ms since 1970) is outside the times Wattson holds, years 1900 to 2199"
                )));
            }
        }
        if self.to <= self.from {
            return Err(Error::BadRequest("`to` must be after `from`".into()));
        }
        let wanted = self.wanted();
        if wanted.is_empty() {
            return Ok(def
                .channels
                .iter()
                .filter(|(_, t)| numeric(*t))
                .map(|(n, _)| n.clone())
                .collect());
        }
        wanted
            .into_iter()
            .map(|w| match def.channels.iter().find(|(n, _)| n == w) {
                Some((n, t)) if numeric(*t) => Ok(n.clone()),
                Some(_) => Err(Error::BadRequest(format!("channel `{w}` is not numeric"))),
                None => Err(Error::BadRequest(format!(
                    "table `{}` has no channel `{w}`",
                    self.table
                ))),
            })
            .collect()
    }

    fn filter(&self) -> String {
        format!(
            "device = {} AND time >= {} AND time < {}",
            string(&self.device),
            timestamp(self.from),
            timestamp(self.to)
        )
    }
}

/// `GET /api/history`: each channel reduced with M4 to the chart's pixel
/// width while the query streams, so a month of 1 Hz data never sits in
/// memory as rows.
pub(crate) async fn history(
    _: Authed,
    State(app): State<AppState>,
    Query(sel): Query<Selection>,
) -> Result<Response> {
    let channels = sel.channels(&app)?;
    if channels.is_empty() {
        return Err(Error::BadRequest("no numeric channel selected".into()));
    }
    let width = sel.width.unwrap_or(1000).clamp(10, MAX_WIDTH);
    let cols: Vec<String> = channels.iter().map(|c| ident(c)).collect();
    let sql = format!(
        "SELECT time, {} FROM {} WHERE {}",
        cols.join(", "),
        ident(&sel.table),
        sel.filter()
    );
    let started = Instant::now();
    let mut reducers: Vec<M4> = channels
        .iter()
        .map(|_| M4::new(sel.from, sel.to, width))
        .collect();
    let mut stream = match app.engine.stream(&sql).await {
        Ok(s) => s,
        Err(e) => {
            app.queries.record(started.elapsed(), false);
            return Err(e.into());
        }
    };
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                app.queries.record(started.elapsed(), false);
                return Err(wattson_query::Error::from(e).into());
            }
        };
        rows += batch.num_rows() as u64;
        let times = times_ms(&batch, 0)?;
        for (c, m4) in reducers.iter_mut().enumerate() {
            let values = floats(&batch, c + 1)?;
            for (t, v) in times.iter().zip(values.iter()) {
                if let (Some(t), Some(v)) = (t, v) {
                    m4.push(t, v);
                }
            }
        }
    }
    let took = started.elapsed();
    app.queries.record(took, true);
    let series: serde_json::Map<String, Json_> = channels
        .into_iter()
        .zip(reducers)
        .map(|(name, m4)| {
            let points: Vec<Json_> = m4
                .finish()
                .into_iter()
                .map(|(t, v)| json!([t, v]))
                .collect();
            (name, Json_::from(points))
        })
        .collect();
    Ok(Json(json!({
        "from": sel.from,
        "to": sel.to,
        "rows": rows,
        "query_ms": took.as_secs_f64() * 1000.0,
        "series": series,
    }))
    .into_response())
}

/// `GET /api/kwh`: energy per UTC day of each selected power channel.
pub(crate) async fn kwh(
    _: Authed,
    State(app): State<AppState>,
    Query(sel): Query<Selection>,
) -> Result<Response> {
    let asked = sel.channels(&app)?;
    let explicit = !sel.wanted().is_empty();
    let channels: Vec<String> = asked
        .iter()
        .filter(|c| c.ends_with("_p"))
        .cloned()
        .collect();
    // Asked for channels, none of them power: say so rather than answer
    // with nothing. Other channels next to power ones are left out.
    if explicit && channels.is_empty() {
        return Err(Error::BadRequest(format!(
            "kWh comes from power channels (named `*_p`, in W); none of `{}` is one",
            asked.join(",")
        )));
    }
    if channels.is_empty() {
        return Ok(Json(json!({ "days": [], "series": {} })).into_response());
    }
    let sums: Vec<String> = channels
        .iter()
        .map(|c| format!("energy_kwh({}, time) AS {}", ident(c), ident(c)))
        .collect();
    let sql = format!(
        "SELECT date_trunc('day', time) AS day, {} FROM {} WHERE {} GROUP BY 1 ORDER BY 1",
        sums.join(", "),
        ident(&sel.table),
        sel.filter()
    );
    let mut days = Vec::new();
    let mut series: Vec<Vec<Option<f64>>> = vec![Vec::new(); channels.len()];
    for batch in collect(&app, &sql).await? {
        let t = times_ms(&batch, 0)?;
        days.extend(t.iter());
        for (c, s) in series.iter_mut().enumerate() {
            s.extend(floats(&batch, c + 1)?.iter());
        }
    }
    let series: serde_json::Map<String, Json_> = channels
        .into_iter()
        .zip(series)
        .map(|(n, v)| (n, json!(v)))
        .collect();
    Ok(Json(json!({ "days": days, "series": series })).into_response())
}

/// `GET /api/export`: the selected range as CSV or Parquet, streamed.
pub(crate) async fn export(
    _: Authed,
    State(app): State<AppState>,
    Query(sel): Query<Selection>,
) -> Result<Response> {
    let channels = sel.channels(&app)?;
    let format = match sel.format.as_deref().unwrap_or("csv") {
        "csv" => Format::Csv,
        "parquet" => Format::Parquet,
        other => {
            return Err(Error::BadRequest(format!(
                "format `{other}`: use csv or parquet"
            )));
        }
    };
    let cols: Vec<String> = channels.iter().map(|c| ident(c)).collect();
    let sql = format!(
        "SELECT time, device{}{} FROM {} WHERE {} ORDER BY time",
        if cols.is_empty() { "" } else { ", " },
        cols.join(", "),
        ident(&sel.table),
        sel.filter()
    );
    let mut res = sql::run(&app, &sql, format).await?;
    let ext = if format == Format::Csv {
        "csv"
    } else {
        "parquet"
    };
    let name: String = format!("{}_{}.{ext}", sel.device, sel.table)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        res.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(res)
}

/// `GET /api/fleet`: per device and table, last seen, readings, rejected
/// readings with the last reason, bytes on disk, and readings per second
/// over the last minute.
pub(crate) async fn fleet(_: Authed, State(app): State<AppState>) -> Result<Response> {
    let devices = collect(
        &app,
        "SELECT d.device, d.\"table\", d.first_seen, d.last_seen, d.readings, d.rejected, \
         d.last_rejection, p.bytes_on_disk, p.months \
         FROM system.devices d LEFT JOIN \
         (SELECT device, \"table\", sum(bytes_on_disk) AS bytes_on_disk, count(*) AS months \
          FROM system.partitions GROUP BY device, \"table\") p \
         ON d.device = p.device AND d.\"table\" = p.\"table\" \
         ORDER BY d.device, d.\"table\"",
    )
    .await?;
    let now = now_ms();
    let mut rates = serde_json::Map::new();
    for t in app.store.tables() {
        let sql = format!(
            "SELECT device, count(*) AS n FROM {} WHERE time >= {} AND time < {} GROUP BY device",
            ident(&t.name),
            timestamp(now - 60_000),
            timestamp(now)
        );
        for batch in collect(&app, &sql).await? {
            let d = strings(&batch, 0)?;
            let n = floats(&batch, 1)?;
            for i in 0..batch.num_rows() {
                if !d.is_null(i) {
                    rates.insert(
                        format!("{}\u{1}{}", d.value(i), t.name),
                        json!(n.value(i) / 60.0),
                    );
                }
            }
        }
    }
    let mut rows = rows_json(&devices)?;
    if let Some(list) = rows.as_array_mut() {
        for row in list {
            let key = format!(
                "{}\u{1}{}",
                row["device"].as_str().unwrap_or(""),
                row["table"].as_str().unwrap_or("")
            );
            row["rate_per_s"] = rates.get(&key).cloned().unwrap_or(json!(0.0));
        }
    }
    Ok(Json(json!({ "now": now, "devices": rows })).into_response())
}
