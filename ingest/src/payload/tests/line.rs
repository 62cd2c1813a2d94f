//! InfluxDB line protocol.

use wattson_storage::Value;

use super::{NOW, SEED_NS, decode, decode_err, meters};
use crate::payload::{Decoder, PayloadError, TopicMatch};

#[test]
fn fields_of_every_type() {
    let r = decode(
        "power_consumption pa_v=214.9,n=-12i,u=12u,on=t,off=FALSE,s=\"a \\\"q\\\" \\\\ \\n\" 1658244261000000000",
    )
    .unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].time, SEED_NS);
    assert_eq!(&*r[0].table, "power_consumption");
    assert_eq!(&*r[0].device, "viconsl");
    let v: Vec<_> = r[0].values.iter().map(|(n, v)| (&**n, v.clone())).collect();
    assert_eq!(
        v,
        vec![
            ("pa_v", Value::F64(214.9)),
            ("n", Value::I64(-12)),
            ("u", Value::I64(12)),
            ("on", Value::Bool(true)),
            ("off", Value::Bool(false)),
            ("s", Value::Str("a \"q\" \\ \\n".into())),
        ]
    );
}

#[test]
fn batches_comments_and_defaults() {
    let payload = "# a comment\n\n  power_consumption a=1 1658244261000000000\r\npower_consumption,device=viconsl a=2\n\n";
    let r = decode(payload).unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].time, SEED_NS);
    assert_eq!(r[1].time, NOW);
    assert_eq!(r[1].values[0].1, Value::F64(2.0));
    // Spaces and commas in string fields need no escape; `,` ends a field
    // only outside quotes.
    let r = decode("power_consumption s=\"a, b=c d\",x=1i").unwrap();
    assert_eq!(r[0].values[0].1, Value::Str("a, b=c d".into()));
    assert_eq!(r[0].values[1].1, Value::I64(1));
    assert_eq!(decode_err("# only a comment\n").kind(), "empty");
}

#[test]
fn measurement_names_the_table_when_the_topic_does_not() {
    let d = Decoder::default();
    let m = TopicMatch {
        table: None,
        ..meters("x")
    };
    let r = d.decode(&m, b"energy wh=5i\nenergy wh=6i", NOW).unwrap();
    assert_eq!(&*r[1].table, "energy");
    let e = d.decode(&m, b"energy wh=5i\npower w=1", NOW).unwrap_err();
    assert_eq!(
        e.to_string(),
        "line protocol, line 2 column 1: measurement `power` differs from `energy` earlier in this message; one message writes one table"
    );
    let e = d.decode(&m, b"Energy wh=5i", NOW).unwrap_err();
    assert_eq!(e.kind(), "line_protocol");
    let e = decode_err("energy wh=5i");
    assert_eq!(
        e.to_string(),
        "line protocol, line 1 column 1: measurement `energy` does not match the topic's table `power_consumption`"
    );
}

#[test]
fn escapes() {
    // `\ ` and `\,` in a measurement and keys; field key escapes produce
    // names the store refuses, so only the parse is checked here.
    let d = Decoder::default();
    let m = TopicMatch {
        table: None,
        ..meters("x")
    };
    let e = d.decode(&m, b"my\\ table a=1", NOW).unwrap_err();
    assert!(e.to_string().contains("table name `my table`"), "{e}");
    let e = decode_err("power_consumption a\\=b=1");
    assert!(e.to_string().contains("`a=b` cannot be a channel"), "{e}");
    let e = decode_err("power_consumption,device=vic\\,onsl a=1");
    assert!(
        e.to_string()
            .contains("tag device=`vic,onsl` does not match"),
        "{e}"
    );
    // A backslash before anything else is literal.
    let r = decode("power_consumption s=\"c:\\temp\"").unwrap();
    assert_eq!(r[0].values[0].1, Value::Str("c:\\temp".into()));
}

#[test]
fn errors_name_line_and_column() {
    let cases = [
        (
            "power_consumption",
            "line 1 column 18: expected a space, then fields",
        ),
        (
            "power_consumption ",
            "line 1 column 19: expected a space, then fields",
        ),
        (
            "power_consumption a",
            "line 1 column 20: expected field=value",
        ),
        (
            "power_consumption a=",
            "line 1 column 21: field `a`: missing value",
        ),
        (
            "power_consumption a=x",
            "line 1 column 21: field `a`: not a number (floats like 1.5, integers like 12i, booleans t/f, strings in quotes)",
        ),
        (
            "power_consumption a=inf",
            "line 1 column 21: field `a`: not a number (floats like 1.5, integers like 12i, booleans t/f, strings in quotes)",
        ),
        (
            "power_consumption a=1e999",
            "line 1 column 21: field `a`: not a number (floats like 1.5, integers like 12i, booleans t/f, strings in quotes)",
        ),
        (
            "power_consumption a=1.5i",
            "line 1 column 21: field `a`: invalid or out-of-range integer",
        ),
        (
            "power_consumption a=9223372036854775808i",
            "line 1 column 21: field `a`: invalid or out-of-range integer",
        ),
        (
            "power_consumption a=9223372036854775808u",
            "line 1 column 21: field `a`: unsigned integer does not fit in i64",
        ),
        (
            "power_consumption a=-1u",
            "line 1 column 21: field `a`: invalid unsigned integer",
        ),
        (
            "power_consumption a=\"x",
            "line 1 column 21: field `a`: unterminated string",
        ),
        (
            "power_consumption a=\"x\"y",
            "line 1 column 24: expected `,`, a space or the end of the line after a field",
        ),
        (
            "power_consumption a=1 12.5",
            "line 1 column 23: the timestamp must be integer nanoseconds",
        ),
        (
            "power_consumption a=1 1 2",
            "line 1 column 25: unexpected text after the timestamp",
        ),
        (
            "power_consumption,phase=a a=1",
            "line 1 column 19: tag `phase` is not supported: Wattson keys readings by table, device and time only; send it as a field",
        ),
        (
            "power_consumption,device=other a=1",
            "line 1 column 19: tag device=`other` does not match the topic's device `viconsl`",
        ),
        (
            "power_consumption,device= a=1",
            "line 1 column 26: empty tag value",
        ),
        (
            "power_consumption a=1\n,x a=1",
            "line 2 column 1: expected a measurement",
        ),
        (
            "power_consumption 1a=1",
            "line 1 column 19: `1a` cannot be a channel: invalid input: channel name `1a` must be 1 to 64 characters: ASCII letters, digits or `_`, not starting with a digit",
        ),
    ];
    for (payload, text) in cases {
        let e = decode_err(payload);
        assert_eq!(e.kind(), "line_protocol", "{payload}: {e}");
        assert_eq!(e.to_string(), format!("line protocol, {text}"), "{payload}");
    }
    let e = decode_err("power_consumption a=1\npower_consumption b=2,b=3");
    assert_eq!(e, PayloadError::DuplicateKey { key: "b".into() });
    let e = decode_err("power_consumption a=1\npower_consumption a=2i");
    assert_eq!(e.kind(), "type_conflict");
    let e = decode_err("power_consumption a=1 -9000000000000000000");
    assert_eq!(e.kind(), "bad_timestamp");
    let msg = decode_err("power_consumption a=x").to_device_message();
    assert!(
        msg.starts_with(r#"{"error":"line_protocol","line":1,"column":21,"reason":"#),
        "{msg}"
    );
}
