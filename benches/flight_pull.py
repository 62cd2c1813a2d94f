"""One pull of one device-month for `wattson bench flight`.

Usage: flight_pull.py PHASE, with PHASE one of
  doget     pyarrow.flight: GetFlightInfo with a JSON command, DoGet of
            every endpoint into one pyarrow.Table;
  adbc      the seed's code over ADBC Flight SQL: pd.read_sql_table(VIEW, conn);
  postgres  the seed's original path: pd.read_sql_table(VIEW, engine) with
            SQLAlchemy and psycopg2 from PostgreSQL.
Settings come from the environment: PORT, BENCH_USER, BENCH_PASSWORD,
TABLE, DEVICE, MONTH_START, MONTH_END, VIEW, PG_URL. Prints one JSON line:
seconds, rows, columns, Arrow bytes and the process's peak RSS (each phase
runs in its own process, so the peak is that phase's).

Every phase imports its modules before its timer starts: a one-time import
is not part of pulling a month.
"""

import json
import os
import resource
import sys
import time


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def doget():
    import pyarrow as pa
    import pyarrow.flight as fl

    client = fl.FlightClient(f"grpc://127.0.0.1:{os.environ['PORT']}")
    header = client.authenticate_basic_token(
        os.environ["BENCH_USER"], os.environ["BENCH_PASSWORD"]
    )
    opts = fl.FlightCallOptions(headers=[header])
    cmd = json.dumps(
        {
            "table": os.environ["TABLE"],
            "devices": [os.environ["DEVICE"]],
            "start": os.environ["MONTH_START"],
            "end": os.environ["MONTH_END"],
        }
    ).encode()
    started = time.perf_counter()
    info = client.get_flight_info(fl.FlightDescriptor.for_command(cmd), options=opts)
    parts = [client.do_get(e.ticket, options=opts).read_all() for e in info.endpoints]
    table = pa.concat_tables(parts)
    elapsed = time.perf_counter() - started
    return elapsed, table.num_rows, table.num_columns, table.nbytes


def adbc():
    import adbc_driver_flightsql.dbapi
    import pandas as pd

    # pandas imports SQLAlchemy inside its first `read_sql_table` when it is
    # installed (it is here, for the PostgreSQL phase, as in the seed's
    # environment): 0.16 s on this machine that the PostgreSQL phase, which
    # imports it itself, does not pay inside its timer.
    import sqlalchemy  # noqa: F401

    started = time.perf_counter()
    conn = adbc_driver_flightsql.dbapi.connect(
        f"grpc://127.0.0.1:{os.environ['PORT']}",
        db_kwargs={
            "username": os.environ["BENCH_USER"],
            "password": os.environ["BENCH_PASSWORD"],
        },
    )
    df = pd.read_sql_table(os.environ["VIEW"], conn)
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed, len(df), len(df.columns), int(df.memory_usage(deep=False).sum())


def postgres():
    import pandas as pd
    import sqlalchemy

    started = time.perf_counter()
    engine = sqlalchemy.create_engine(os.environ["PG_URL"])
    df = pd.read_sql_table(os.environ["VIEW"], engine)
    elapsed = time.perf_counter() - started
    return elapsed, len(df), len(df.columns), int(df.memory_usage(deep=False).sum())


if __name__ == "__main__":
    phase = {"doget": doget, "adbc": adbc, "postgres": postgres}[sys.argv[1]]
    seconds, rows, columns, nbytes = phase()
    print(
        json.dumps(
            {
                "s": seconds,
                "rows": rows,
                "columns": columns,
                "bytes": nbytes,
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    )
