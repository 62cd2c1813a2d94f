//! What Flight SQL clients learn about the server before they query:
//! `GetSqlInfo` and `GetXdbcTypeInfo` answers, fixed at startup, and the
//! catalog listing behind `GetTables`.

use arrow_flight::sql::metadata::{
    GetTablesBuilder, SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo, XdbcTypeInfoData,
    XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::{
    Nullable, Searchable, SqlInfo, SqlNullOrdering, SqlSupportedCaseSensitivity, XdbcDataType,
};
use datafusion::datasource::TableType;
use datafusion::prelude::SessionContext;
use wattson_query::CATALOG;

use crate::error::{Error, Result};

/// The `GetSqlInfo` answers ADBC, JDBC and pyarrow ask for.
pub(crate) fn sql_info() -> Result<SqlInfoData> {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "Wattson");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    // The IPC format version (Schema.fbs MetadataVersion V5).
    b.append(SqlInfo::FlightSqlServerArrowVersion, "1.5");
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(SqlInfo::FlightSqlServerTransaction, 0i32);
    b.append(SqlInfo::FlightSqlServerCancel, true);
    b.append(SqlInfo::FlightSqlServerStatementTimeout, 0i32);
    b.append(SqlInfo::FlightSqlServerTransactionTimeout, 0i32);
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, false);
    b.append(SqlInfo::SqlDdlTable, false);
    b.append(
        SqlInfo::SqlIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityLowercase as i32,
    );
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(
        SqlInfo::SqlQuotedIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityCaseInsensitive as i32,
    );
    b.append(SqlInfo::SqlAllTablesAreSelectable, true);
    b.append(
        SqlInfo::SqlNullOrdering,
        SqlNullOrdering::SqlNullsSortedHigh as i32,
    );
    b.append(SqlInfo::SqlTransactionsSupported, false);
    b.build()
        .map_err(|e| Error::Startup(format!("building SQL info: {e}")))
}

fn xdbc(
    name: &str,
    data_type: XdbcDataType,
    column_size: Option<i32>,
    quoted: bool,
) -> XdbcTypeInfo {
    XdbcTypeInfo {
        type_name: name.into(),
        data_type,
        column_size,
        literal_prefix: quoted.then(|| "'".into()),
        literal_suffix: quoted.then(|| "'".into()),
        create_params: None,
        nullable: Nullable::NullabilityNullable,
        case_sensitive: quoted,
        searchable: Searchable::Full,
        unsigned_attribute: (!quoted).then_some(false),
        fixed_prec_scale: false,
        auto_increment: Some(false),
        local_type_name: Some(name.into()),
        minimum_scale: None,
        maximum_scale: None,
        sql_data_type: data_type,
        datetime_subcode: None,
        num_prec_radix: (!quoted).then_some(2),
        interval_precision: None,
    }
}

/// The SQL types Wattson's columns have, for `GetXdbcTypeInfo`.
pub(crate) fn xdbc_info() -> Result<XdbcTypeInfoData> {
    let mut b = XdbcTypeInfoDataBuilder::new();
    b.append(xdbc("BOOLEAN", XdbcDataType::XdbcBit, Some(1), false));
    b.append(xdbc("BIGINT", XdbcDataType::XdbcBigint, Some(64), false));
    b.append(xdbc("DOUBLE", XdbcDataType::XdbcDouble, Some(53), false));
    b.append(xdbc("VARCHAR", XdbcDataType::XdbcVarchar, None, true));
    b.append(xdbc("TIMESTAMP", XdbcDataType::XdbcTimestamp, None, true));
    b.build()
        .map_err(|e| Error::Startup(format!("building XDBC type info: {e}")))
}

/// Appends every table of the catalog the builder's filters let through.
pub(crate) async fn tables(ctx: &SessionContext, builder: &mut GetTablesBuilder) -> Result<()> {
    let Some(catalog) = ctx.catalog(CATALOG) else {
        return Ok(());
    };
    let mut schemas = catalog.schema_names();
    schemas.sort();
    for schema_name in schemas {
        let Some(schema) = catalog.schema(&schema_name) else {
            continue;
        };
        let mut names = schema.table_names();
        names.sort();
        for name in names {
            let Some(table) = schema
                .table(&name)
                .await
                .map_err(crate::error::from_datafusion)?
            else {
                continue;
            };
            let kind = match table.table_type() {
                TableType::Base => "TABLE",
                TableType::View => "VIEW",
                TableType::Temporary => "LOCAL TEMPORARY",
            };
            builder.append(CATALOG, &schema_name, &name, kind, &table.schema())?;
        }
    }
    Ok(())
}

/// The catalog's schema names, for `GetDbSchemas`.
pub(crate) fn schemas(ctx: &SessionContext) -> Vec<String> {
    let mut names = ctx
        .catalog(CATALOG)
        .map(|c| c.schema_names())
        .unwrap_or_default();
    names.sort();
    names
}
