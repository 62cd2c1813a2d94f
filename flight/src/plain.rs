//! The plain Flight path for ML pulls: `ListFlights` lists the store's
//! tables, `GetFlightInfo` with a JSON command returns one endpoint per
//! (device, month) partition, `DoGet` streams one partition straight from
//! the store's scan, without SQL.
//!
//! Command (the descriptor's `cmd`, UTF-8 JSON):
//! `{"table": "power_consumption", "devices": ["viconsl"], "start":
//! "2022-07-01T00:00:00Z", "end": "2022-08-01", "columns": ["pa_v"]}`; only
//! `table` is required. `start` is inclusive, `end` exclusive; both take RFC
//! 3339, `YYYY-MM-DD` (UTC midnight) or integer epoch milliseconds.
//! `columns` picks channels; `time` and `device` always come first.
//! A path descriptor `["power_consumption"]` means the whole table.
//!
//! Tickets are JSON too (`{"table", "device", "month", "start", "end",
//! "columns"}`), so they never start like the protobuf tickets of Flight
//! SQL, whose first byte is a field tag.

use std::sync::Arc;

use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::{FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, Ticket};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use futures::{Stream, TryStreamExt};
use serde::{Deserialize, Serialize};
use tonic::Status;
use wattson_storage::model::{DEVICE_COLUMN, TIME_COLUMN};
use wattson_storage::{Month, ScanRequest, Store, table_schema};

use crate::encode::flight_data;
use crate::error::{Error, Result};

/// Largest number of devices or columns one command may name.
const MAX_LIST: usize = 10_000;

/// A time bound as clients write it.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum TimeArg {
    Millis(i64),
    Text(String),
}

impl TimeArg {
    fn to_ns(&self, what: &str) -> Result<i64> {
        match self {
            TimeArg::Millis(ms) => ms.checked_mul(1_000_000).ok_or_else(|| {
                Error::InvalidArgument(format!("`{what}` is out of range: {ms} ms"))
            }),
            TimeArg::Text(s) => parse_time(s).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "`{what}` is not a time: {s:?}; use RFC 3339 (2022-07-01T00:00:00Z), a date (2022-07-01) or epoch milliseconds"
                ))
            }),
        }
    }
}

fn parse_time(s: &str) -> Option<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return t.timestamp_nanos_opt();
    }
    let date = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_nanos_opt()
}

/// What `GetFlightInfo` asks for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Command {
    table: String,
    #[serde(default)]
    devices: Option<Vec<String>>,
    #[serde(default)]
    start: Option<TimeArg>,
    #[serde(default)]
    end: Option<TimeArg>,
    #[serde(default)]
    columns: Option<Vec<String>>,
}

/// What one endpoint's `DoGet` reads: one partition, clipped to the range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartitionTicket {
    table: String,
    device: String,
    month: String,
    start: i64,
    end: i64,
    columns: Option<Vec<String>>,
}

/// Whether a descriptor is ours rather than a Flight SQL command.
pub(crate) fn is_plain_descriptor(d: &FlightDescriptor) -> bool {
    d.r#type == DescriptorType::Path as i32 || d.cmd.first() == Some(&b'{')
}

/// Whether a ticket is ours rather than a Flight SQL ticket.
pub(crate) fn is_plain_ticket(t: &Ticket) -> bool {
    t.ticket.first() == Some(&b'{')
}

fn parse_command(d: &FlightDescriptor) -> Result<Command> {
    if d.r#type == DescriptorType::Path as i32 {
        return match d.path.as_slice() {
            [table] => Ok(Command {
                table: table.clone(),
                devices: None,
                start: None,
                end: None,
                columns: None,
            }),
            _ => Err(Error::InvalidArgument(
                "a path descriptor names one table: [\"power_consumption\"]".into(),
            )),
        };
    }
    let cmd: Command = serde_json::from_slice(&d.cmd).map_err(|e| {
        Error::InvalidArgument(format!(
            "bad command ({e}); expected JSON {{\"table\", \"devices\", \"start\", \"end\", \"columns\"}} with only `table` required"
        ))
    })?;
    let too_long = |v: &Option<Vec<String>>| v.as_ref().is_some_and(|v| v.len() > MAX_LIST);
    if too_long(&cmd.devices) || too_long(&cmd.columns) {
        return Err(Error::InvalidArgument(format!(
            "at most {MAX_LIST} devices or columns per command"
        )));
    }
    Ok(cmd)
}

/// The output columns: `time`, `device`, then the chosen channels.
fn output_columns(columns: &Option<Vec<String>>) -> Option<Vec<String>> {
    columns.as_ref().map(|cs| {
        [TIME_COLUMN, DEVICE_COLUMN]
            .into_iter()
            .map(String::from)
            .chain(
                cs.iter()
                    .filter(|c| *c != TIME_COLUMN && *c != DEVICE_COLUMN)
                    .cloned(),
            )
            .collect()
    })
}

fn projected_schema(
    store: &Store,
    table: &str,
    columns: &Option<Vec<String>>,
) -> Result<SchemaRef> {
    let def = store.table(table).ok_or_else(|| {
        let names: Vec<String> = store.tables().into_iter().map(|t| t.name).collect();
        Error::NotFound(format!(
            "no table `{table}`; the store has: {}",
            if names.is_empty() {
                "no tables yet".to_owned()
            } else {
                names.join(", ")
            }
        ))
    })?;
    let full = table_schema(&def);
    let Some(cols) = output_columns(columns) else {
        return Ok(full);
    };
    let fields = cols
        .iter()
        .map(|c| {
            full.field_with_name(c)
                .cloned()
                .map_err(|_| Error::InvalidArgument(format!("table `{table}` has no column `{c}`")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Arc::new(Schema::new(fields)))
}

/// One `FlightInfo` per table, with its schema and a path descriptor.
pub(crate) fn list_flights(store: &Store) -> Result<Vec<FlightInfo>> {
    store
        .tables()
        .iter()
        .map(|def| {
            Ok(FlightInfo::new()
                .try_with_schema(&table_schema(def))?
                .with_descriptor(FlightDescriptor::new_path(vec![def.name.clone()])))
        })
        .collect()
}

/// The schema a command's endpoints stream.
pub(crate) fn schema(store: &Store, descriptor: &FlightDescriptor) -> Result<SchemaRef> {
    let cmd = parse_command(descriptor)?;
    projected_schema(store, &cmd.table, &cmd.columns)
}

/// One endpoint per (device, month) partition that overlaps the command.
pub(crate) fn flight_info(store: &Store, descriptor: FlightDescriptor) -> Result<FlightInfo> {
    let cmd = parse_command(&descriptor)?;
    let schema = projected_schema(store, &cmd.table, &cmd.columns)?;
    let start = cmd.start.as_ref().map(|t| t.to_ns("start")).transpose()?;
    let end = cmd.end.as_ref().map(|t| t.to_ns("end")).transpose()?;
    let (start, end) = (start.unwrap_or(i64::MIN), end.unwrap_or(i64::MAX));
    if start >= end {
        return Err(Error::InvalidArgument(
            "`start` must be before `end`".into(),
        ));
    }
    let mut info = FlightInfo::new()
        .try_with_schema(&schema)?
        .with_descriptor(descriptor)
        .with_ordered(true);
    for p in store.partitions_of(&cmd.table, start, end) {
        let wanted = cmd.devices.as_ref().is_none_or(|ds| ds.contains(&p.device)) && p.rows > 0;
        if !wanted {
            continue;
        }
        let ticket = PartitionTicket {
            table: p.table.clone(),
            device: p.device.clone(),
            month: p.month.to_string(),
            start: start.max(p.month.start_ns()),
            end: end.min(p.month.end_ns()),
            columns: cmd.columns.clone(),
        };
        let bytes = serde_json::to_vec(&ticket)
            .map_err(|e| Error::Internal(format!("encoding a ticket: {e}")))?;
        info = info.with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(bytes)));
    }
    Ok(info)
}

/// A plain ticket and its month. Tickets come from clients, so any bytes
/// must give an error, never a panic.
fn parse_ticket(ticket: &Ticket) -> Result<(PartitionTicket, Month)> {
    let t: PartitionTicket = serde_json::from_slice(&ticket.ticket).map_err(|e| {
        Error::InvalidArgument(format!("bad ticket ({e}); use one from GetFlightInfo"))
    })?;
    let month = Month::parse(&t.month)
        .ok_or_else(|| Error::InvalidArgument(format!("bad month in ticket: {:?}", t.month)))?;
    Ok((t, month))
}

/// Streams one partition as Flight data, read on a blocking thread and
/// handed over a batch at a time.
pub(crate) fn do_get(
    store: Arc<Store>,
    ticket: &Ticket,
) -> Result<impl Stream<Item = Result<FlightData, Status>> + Send + 'static> {
    let (t, month) = parse_ticket(ticket)?;
    let req = ScanRequest {
        table: t.table.clone(),
        devices: Some(vec![t.device.clone()]),
        start: Some(t.start.max(month.start_ns())),
        end: Some(t.end.min(month.end_ns())),
        columns: output_columns(&t.columns),
        skip_damaged: false,
    };
    let scan = store.scan(&req)?;
    let schema = scan.schema();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<RecordBatch>>(2);
    tokio::task::spawn_blocking(move || {
        for batch in scan {
            let item = batch.map_err(Error::from);
            let failed = item.is_err();
            // The client went away: stop reading.
            if tx.blocking_send(item).is_err() || failed {
                return;
            }
        }
    });
    let batches = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map_err(|e| arrow_flight::error::FlightError::Tonic(Box::new(Status::from(e))));
    Ok(flight_data(schema, batches).map_err(Status::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_tickets_are_told_apart_from_flight_sql() {
        assert!(is_plain_descriptor(&FlightDescriptor::new_cmd(
            br#"{"table":"t"}"#.to_vec()
        )));
        assert!(is_plain_descriptor(&FlightDescriptor::new_path(vec![
            "t".into()
        ])));
        assert!(!is_plain_descriptor(&FlightDescriptor::new_cmd(vec![
            0x0a, 1, b'x'
        ])));
        assert!(is_plain_ticket(&Ticket::new(b"{}".to_vec())));
        assert!(!is_plain_ticket(&Ticket::new(vec![0x0a])));
    }

    #[test]
    fn times_take_three_forms() {
        assert_eq!(parse_time("1970-01-02"), Some(86_400_000_000_000));
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Some(1_000_000_000));
        assert_eq!(TimeArg::Millis(5).to_ns("start").unwrap(), 5_000_000);
        assert!(TimeArg::Text("yesterday".into()).to_ns("start").is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_command_or_ticket_bytes_give_an_answer_not_a_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            month in "[0-9-]{0,12}",
            table in ".{0,12}",
        ) {
            let _ = parse_command(&FlightDescriptor::new_cmd(bytes.clone()));
            let _ = parse_ticket(&Ticket::new(bytes));
            let json = serde_json::json!({
                "table": table, "device": "m1", "month": month,
                "start": i64::MIN, "end": i64::MAX, "columns": null,
            });
            let _ = parse_ticket(&Ticket::new(json.to_string().into_bytes()));
            let cmd = serde_json::json!({ "table": table, "start": month, "end": -1 });
            let _ = parse_command(&FlightDescriptor::new_cmd(cmd.to_string().into_bytes()));
            let _ = TimeArg::Text(table).to_ns("start");
            let _ = TimeArg::Millis(i64::MIN).to_ns("start");
        }
    }

    #[test]
    fn bad_commands_say_what_is_expected() {
        let err = parse_command(&FlightDescriptor::new_cmd(br#"{"tabel":"x"}"#.to_vec()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`table`"), "{err}");
    }
}
