//! `last_cache('table')`: the newest reading of every device, from the
//! store's last-value cache, without a scan. Columns as in the table.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch,
    StringBuilder, TimestampNanosecondBuilder,
};
use datafusion::catalog::{MemTable, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::Expr;
use wattson_storage::{ChannelType, Store, Value};

pub(crate) struct LastCache {
    pub(crate) store: Arc<Store>,
}

impl fmt::Debug for LastCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LastCache").finish_non_exhaustive()
    }
}

const USAGE: &str = "usage: SELECT * FROM last_cache('power_consumption')";

impl TableFunctionImpl for LastCache {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let table = match args.exprs() {
            [Expr::Literal(ScalarValue::Utf8(Some(t)) | ScalarValue::Utf8View(Some(t)), _)] => {
                t.clone()
            }
            _ => {
                return Err(DataFusionError::Plan(format!(
                    "last_cache takes one table name in quotes; {USAGE}"
                )));
            }
        };
        let (Some(def), Some(schema)) = (self.store.table(&table), self.store.schema(&table))
        else {
            return Err(DataFusionError::Plan(format!(
                "last_cache: no table named `{table}`"
            )));
        };
        let latest = self
            .store
            .latest(&table)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let mut time = TimestampNanosecondBuilder::new().with_timezone("UTC");
        let mut device = StringBuilder::new();
        let mut channels: Vec<Box<dyn ArrayBuilder>> = def
            .channels
            .iter()
            .map(|(_, ty)| -> Box<dyn ArrayBuilder> {
                match ty {
                    ChannelType::F64 => Box::new(Float64Builder::new()),
                    ChannelType::I64 => Box::new(Int64Builder::new()),
                    ChannelType::Bool => Box::new(BooleanBuilder::new()),
                    ChannelType::Str => Box::new(StringBuilder::new()),
                }
            })
            .collect();
        for reading in &latest {
            time.append_value(reading.time);
            device.append_value(&reading.device);
            for (builder, value) in channels.iter_mut().zip(&reading.values) {
                append(builder.as_mut(), value.as_ref());
            }
        }
        let mut columns: Vec<ArrayRef> = vec![Arc::new(time.finish()), Arc::new(device.finish())];
        columns.extend(channels.iter_mut().map(|b| b.finish()));
        // The definition may have gained channels since the schema was read.
        columns.truncate(schema.fields().len());
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
    }
}

fn append(builder: &mut dyn ArrayBuilder, value: Option<&Value>) {
    let any = builder.as_any_mut();
    if let Some(b) = any.downcast_mut::<Float64Builder>() {
        b.append_option(match value {
            Some(Value::F64(v)) => Some(*v),
            _ => None,
        });
    } else if let Some(b) = any.downcast_mut::<Int64Builder>() {
        b.append_option(match value {
            Some(Value::I64(v)) => Some(*v),
            _ => None,
        });
    } else if let Some(b) = any.downcast_mut::<BooleanBuilder>() {
        b.append_option(match value {
            Some(Value::Bool(v)) => Some(*v),
            _ => None,
        });
    } else if let Some(b) = any.downcast_mut::<StringBuilder>() {
        b.append_option(match value {
            Some(Value::Str(v)) => Some(v.as_str()),
            _ => None,
        });
    }
}
