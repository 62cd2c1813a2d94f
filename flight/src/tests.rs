//! The server on a real socket with arrow-flight's Rust clients, and an
//! injected clock for token expiry.

use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandStatementQuery, ProstMessageExt};
use arrow_flight::{FlightDescriptor, HandshakeRequest};
use futures::StreamExt;
use prost::Message;
use tonic::Code;
use tonic::transport::Channel;
use wattson_ingest::auth::{ManualClock, Role, TokenStore, UserStore, Verifier};
use wattson_query::{QueryEngine, QueryOptions};
use wattson_storage::{Reading, Store, StoreOptions, Value};

use crate::{Deps, FlightOptions, FlightServer};

const TTL: Duration = Duration::from_secs(3600);

struct Fixture {
    _dir: tempfile::TempDir,
    server: FlightServer,
    clock: Arc<ManualClock>,
    store: Arc<Store>,
}

async fn fixture(max_prepared: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let users = Arc::new(UserStore::open(dir.path()).unwrap());
    users
        .add_user("ana", Role::Analyst, "ana-password-123")
        .unwrap();
    users
        .add_user("bob", Role::Analyst, "bob-password-123")
        .unwrap();
    let store = Arc::new(Store::open(dir.path().join("data"), StoreOptions::default()).unwrap());
    let readings = (0..10_000)
        .map(|i| Reading {
            table: "power".into(),
            device: "m1".into(),
            time: 1_656_633_600_000_000_000 + i * 1_000_000_000,
            values: vec![(Arc::from("w"), Value::F64(i as f64))],
        })
        .collect();
    store.append(readings).unwrap();
    let engine = QueryEngine::new(store.clone(), None, &QueryOptions::default()).unwrap();
    let clock = Arc::new(ManualClock::new());
    let tokens = Arc::new(TokenStore::with_clock(users.clone(), TTL, clock.clone()));
    let opts = FlightOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        max_prepared_per_user: max_prepared,
        ..FlightOptions::default()
    };
    let server = FlightServer::start(
        &opts,
        Deps {
            store: store.clone(),
            engine: Arc::new(engine),
            verifier: Verifier::new(users).unwrap(),
            tokens,
        },
    )
    .await
    .unwrap();
    Fixture {
        _dir: dir,
        server,
        clock,
        store,
    }
}

async fn channel(f: &Fixture) -> Channel {
    Channel::from_shared(format!("http://{}", f.server.local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Logs ana in through the handshake; returns the `Bearer ...` header value.
async fn login(ch: Channel) -> String {
    login_as(ch, "ana").await
}

/// Logs a fixture user in (password `{user}-password-123`).
async fn login_as(ch: Channel, user: &str) -> String {
    use base64::Engine;
    let mut client = FlightServiceClient::new(ch);
    let mut req = tonic::Request::new(futures::stream::iter(vec![HandshakeRequest::default()]));
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{user}-password-123"));
    req.metadata_mut()
        .insert("authorization", format!("Basic {basic}").parse().unwrap());
    let resp = client.handshake(req).await.unwrap();
    resp.metadata()
        .get("authorization")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

fn statement(sql: &str) -> FlightDescriptor {
    FlightDescriptor::new_cmd(
        CommandStatementQuery {
            query: sql.into(),
            transaction_id: None,
        }
        .as_any()
        .encode_to_vec(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_works_until_it_expires_then_unauthenticated() {
    let f = fixture(4).await;
    let ch = channel(&f).await;
    let bearer = login(ch.clone()).await;
    assert!(bearer.starts_with("Bearer wsn_"), "{bearer}");
    let mut client = FlightServiceClient::new(ch);
    let call = |bearer: &str| {
        let mut req = tonic::Request::new(statement("SELECT count(*) FROM power"));
        req.metadata_mut()
            .insert("authorization", bearer.parse().unwrap());
        req
    };
    client.get_flight_info(call(&bearer)).await.unwrap();
    f.clock.advance(TTL - Duration::from_secs(1));
    client.get_flight_info(call(&bearer)).await.unwrap();
    f.clock.advance(Duration::from_secs(2));
    let err = client.get_flight_info(call(&bearer)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    assert!(err.message().contains("expired"), "{err}");
    f.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_stream_in_batches_and_prepared_statements_are_bounded() {
    let f = fixture(2).await;
    let mut sql = FlightSqlServiceClient::new(channel(&f).await);
    sql.handshake("ana", "ana-password-123").await.unwrap();
    let info = sql
        .execute(
            "SELECT * FROM power, (VALUES (1), (2), (3)) v(x)".into(),
            None,
        )
        .await
        .unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut stream = sql.do_get(ticket).await.unwrap();
    let (mut batches, mut rows) = (0, 0);
    while let Some(b) = stream.next().await {
        let b = b.unwrap();
        batches += 1;
        rows += b.num_rows();
    }
    assert_eq!(rows, 30_000);
    assert!(batches > 1, "one batch: the result was not streamed");

    let mut first = sql
        .prepare("SELECT count(*) FROM power WHERE w > $1".into(), None)
        .await
        .unwrap();
    assert_eq!(first.parameter_schema().unwrap().fields().len(), 1);
    for _ in 0..2 {
        sql.prepare("SELECT 1".into(), None).await.unwrap();
    }
    // Two per user: the oldest is gone.
    let err = first.execute().await.unwrap_err().to_string();
    assert!(err.contains("no such prepared statement"), "{err}");
    assert_eq!(f.store.partitions().len(), 1);
    f.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_is_complete_at_once_and_its_tickets_redeem() {
    let f = fixture(4).await;
    let ch = channel(&f).await;
    let bearer = login(ch.clone()).await;
    let mut client = FlightServiceClient::new(ch);
    let with_token = |descriptor: FlightDescriptor| {
        let mut req = tonic::Request::new(descriptor);
        req.metadata_mut()
            .insert("authorization", bearer.parse().unwrap());
        req
    };
    let plain = FlightDescriptor::new_cmd(br#"{"table":"power","devices":["m1"]}"#.to_vec());
    for descriptor in [statement("SELECT count(*) AS n FROM power"), plain] {
        let poll = client
            .poll_flight_info(with_token(descriptor.clone()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            poll.flight_descriptor, None,
            "complete: nothing to poll again"
        );
        assert_eq!(poll.progress, Some(1.0));
        let info = poll.info.unwrap();
        let expected = client
            .get_flight_info(with_token(descriptor))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.schema, expected.schema);
        assert_eq!(info.endpoint.len(), expected.endpoint.len());
        let mut req = tonic::Request::new(info.endpoint[0].ticket.clone().unwrap());
        req.metadata_mut()
            .insert("authorization", bearer.parse().unwrap());
        let frames: Vec<_> = client
            .do_get(req)
            .await
            .unwrap()
            .into_inner()
            .collect()
            .await;
        assert!(frames.len() >= 2 && frames.iter().all(|f| f.is_ok()));
    }
    let err = client
        .poll_flight_info(tonic::Request::new(statement("SELECT 1")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    f.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bound_parameter_row_runs_the_statement_once() {
    use datafusion::arrow::array::{
        Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray,
    };
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    let f = fixture(4).await;
    let mut sql = FlightSqlServiceClient::new(channel(&f).await);
    sql.handshake("ana", "ana-password-123").await.unwrap();
    let mut prepared = sql
        .prepare("SELECT count(*) AS n FROM power WHERE w > $1".into(), None)
        .await
        .unwrap();
    let params = |values: Vec<f64>| {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "$1",
            DataType::Float64,
            false,
        )]));
        RecordBatch::try_new(schema, vec![Arc::new(Float64Array::from(values))]).unwrap()
    };
    let counts = |sql: FlightSqlServiceClient<Channel>, info: arrow_flight::FlightInfo| async move {
        let mut sql = sql;
        let ticket = info.endpoint[0].ticket.clone().unwrap();
        let batches: Vec<_> = sql.do_get(ticket).await.unwrap().collect().await;
        batches
            .into_iter()
            .flat_map(|b| {
                let b = b.unwrap();
                let n = b
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .clone();
                (0..n.len()).map(move |i| n.value(i))
            })
            .collect::<Vec<i64>>()
    };
    // w runs from 0 to 9,999: one count per row, in the rows' order.
    prepared
        .set_parameters(params(vec![9_000.0, 5_000.0, 20_000.0]))
        .unwrap();
    let info = prepared.execute().await.unwrap();
    assert_eq!(counts(sql.clone(), info).await, [999, 4_999, 0]);
    prepared.set_parameters(params(vec![9_998.0])).unwrap();
    let info = prepared.execute().await.unwrap();
    assert_eq!(counts(sql.clone(), info).await, [1]);
    // A later row may bind a null where the first did not.
    let mut tagged = sql
        .prepare("SELECT $1 AS tag FROM power WHERE w = 0".into(), None)
        .await
        .unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("$1", DataType::Utf8, true)]));
    let tags: ArrayRef = Arc::new(StringArray::from(vec![Some("a"), None]));
    tagged
        .set_parameters(RecordBatch::try_new(schema, vec![tags]).unwrap())
        .unwrap();
    let info = tagged.execute().await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let got: Vec<Option<String>> = sql
        .do_get(ticket)
        .await
        .unwrap()
        .map(|b| b.unwrap())
        .collect::<Vec<_>>()
        .await
        .iter()
        .flat_map(|b| {
            let s = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
            s.iter().map(|v| v.map(str::to_owned)).collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(got, [Some("a".to_owned()), None]);
    prepared.set_parameters(params(vec![1.0; 1_001])).unwrap();
    let err = prepared.execute().await.unwrap_err().to_string();
    assert!(err.contains("more than 1000 rows of parameters"), "{err}");
    f.server.shutdown().await.unwrap();
}

/// A client of `user`, logged in through the handshake.
async fn flight_client(f: &Fixture, user: &str) -> arrow_flight::FlightClient {
    let ch = channel(f).await;
    let bearer = login_as(ch.clone(), user).await;
    let mut client = arrow_flight::FlightClient::new(ch);
    client.add_header("authorization", &bearer).unwrap();
    client
}

/// The code a DoGet stream ends with, after reading up to `limit` batches.
async fn end_of(
    stream: &mut arrow_flight::decode::FlightRecordBatchStream,
    limit: usize,
) -> Option<Code> {
    for _ in 0..limit {
        match stream.next().await {
            Some(Ok(_)) => {}
            Some(Err(arrow_flight::error::FlightError::Tonic(status))) => {
                return Some(status.code());
            }
            Some(Err(e)) => panic!("{e}"),
            None => panic!("the stream ended as if complete"),
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_callers_running_do_gets_only() {
    use arrow_flight::sql::{ActionCancelQueryRequest, ActionCancelQueryResult, Any};
    use arrow_flight::{Action, CancelFlightInfoRequest, CancelStatus};

    let f = fixture(4).await;
    let mut ana = flight_client(&f, "ana").await;
    // bob's flow-control windows are small, so that the stream he stops
    // reading at the end fills them at once.
    let bob_channel = Channel::from_shared(format!("http://{}", f.server.local_addr()))
        .unwrap()
        .initial_stream_window_size(Some(64 << 10))
        .initial_connection_window_size(Some(64 << 10))
        .connect()
        .await
        .unwrap();
    let bob_bearer = login_as(bob_channel.clone(), "bob").await;
    let mut bob = arrow_flight::FlightClient::new(bob_channel);
    bob.add_header("authorization", &bob_bearer).unwrap();
    // Ten billion rows: it streams until stopped.
    let long = statement("SELECT * FROM power, generate_series(1, 1000000) g");
    let info = ana.get_flight_info(long.clone()).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut stream = ana.do_get(ticket.clone()).await.unwrap();
    assert_eq!(end_of(&mut stream, 2).await, None);

    // Someone else's cancel answers CANCELLED (none of it runs for them)
    // but stops nothing of ana's.
    let result = bob
        .cancel_flight_info(CancelFlightInfoRequest::new(info.clone()))
        .await
        .unwrap();
    assert_eq!(result.status, CancelStatus::Cancelled as i32);
    assert_eq!(end_of(&mut stream, 20).await, None);

    let result = ana
        .cancel_flight_info(CancelFlightInfoRequest::new(info.clone()))
        .await
        .unwrap();
    assert_eq!(result.status, CancelStatus::Cancelled as i32);
    // What was already on its way arrives first, then the error: never a
    // clean end that would pass for the whole result.
    assert_eq!(end_of(&mut stream, 10_000).await, Some(Code::Cancelled));
    assert!(stream.next().await.is_none());

    // The ticket still redeems; Flight SQL's older CancelQuery stops it too.
    let mut again = ana.do_get(ticket).await.unwrap();
    assert_eq!(end_of(&mut again, 2).await, None);
    let request = ActionCancelQueryRequest {
        info: info.encode_to_vec().into(),
    };
    let mut answers = ana
        .do_action(Action::new("CancelQuery", request.as_any().encode_to_vec()))
        .await
        .unwrap();
    let answer = answers.next().await.unwrap().unwrap();
    let result: ActionCancelQueryResult = Any::decode(answer).unwrap().unpack().unwrap().unwrap();
    assert_eq!(result.result, 1, "CANCEL_RESULT_CANCELLED");
    assert_eq!(end_of(&mut again, 10_000).await, Some(Code::Cancelled));

    // CancelFlightInfo is listed, and a request without an info is refused.
    let actions: Vec<String> = ana
        .list_actions()
        .await
        .unwrap()
        .map(|a| a.unwrap().r#type)
        .collect()
        .await;
    assert!(
        actions.iter().any(|a| a == "CancelFlightInfo"),
        "{actions:?}"
    );
    let err = ana
        .do_action(Action::new("CancelFlightInfo", vec![0xff, 0x01]))
        .await
        .err()
        .unwrap();
    let arrow_flight::error::FlightError::Tonic(status) = &err else {
        panic!("{err}")
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{err}");
    assert!(
        status.message().contains("CancelFlightInfoRequest"),
        "{err}"
    );

    // Shutting down stops a running pull instead of waiting for it: a
    // client that reads on gets CANCELLED. One that stopped reading cannot
    // take the end of its stream, so it holds the shutdown until the grace
    // is over; then its connection is closed.
    let mut endless = ana
        .do_get(info.endpoint[0].ticket.clone().unwrap())
        .await
        .unwrap();
    assert_eq!(end_of(&mut endless, 2).await, None);
    let bob_info = bob.get_flight_info(long).await.unwrap();
    let bob_ticket = bob_info.endpoint[0].ticket.clone().unwrap();
    let mut stalled = bob.do_get(bob_ticket).await.unwrap();
    assert_eq!(end_of(&mut stalled, 2).await, None);
    // Time for the server to make the message that will not fit.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = std::time::Instant::now();
    let (stopped, ended) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(f.server.shutdown(), end_of(&mut endless, 100_000))
    })
    .await
    .expect("shutdown must not wait for a client that stopped reading");
    stopped.unwrap();
    assert_eq!(
        ended,
        Some(Code::Cancelled),
        "the pull went on past shutdown"
    );
    assert!(started.elapsed() >= crate::SHUTDOWN_GRACE);
    loop {
        match stalled.next().await {
            Some(Ok(_)) => {}
            Some(Err(_)) => break,
            None => panic!("a closed connection must not end as if complete"),
        }
    }
}
