//! No input panics: proptest fuzzing of every entry point, and a replayed
//! corpus of tricky inputs under `ingest/tests/corpus/payload/`.
//!
//! Corpus files are named `ok-<what>.<ext>` (must decode) or
//! `err-<kind>-<what>.<ext>` (must fail with that kind). All are decoded on
//! the topic `meters/viconsl/power_consumption` at [`NOW`].

use std::sync::Arc;

use proptest::prelude::*;

use super::{NOW, meters};
use crate::payload::{
    DecodeOptions, Decoder, TopicMap, TopicMatch, TopicPattern, device_may_publish,
};

fn matches() -> [TopicMatch; 3] {
    [
        meters("power_consumption"),
        TopicMatch {
            table: None,
            ..meters("x")
        },
        TopicMatch {
            channel: Some(Arc::from("power_w")),
            ..meters("power_consumption")
        },
    ]
}

/// Decodes on every kind of topic; decoding must not panic, and whatever
/// it accepts must satisfy the promises.
fn check(payload: &[u8]) {
    let d = Decoder::new(DecodeOptions {
        max_readings_per_message: 50,
        ..DecodeOptions::default()
    });
    for m in matches() {
        match d.decode(&m, payload, NOW) {
            Ok(readings) => {
                assert!(!readings.is_empty() && readings.len() <= 50);
                for r in readings {
                    assert!(!r.values.is_empty());
                    assert_eq!(&*r.device, "viconsl");
                }
            }
            Err(e) => {
                let _ = e.to_device_message();
                assert!(e.to_string().len() < 1024, "{e}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(payload in proptest::collection::vec(any::<u8>(), 0..256)) {
        check(&payload);
    }

    #[test]
    fn json_like(payload in r#"[\[{ ]{0,2}("[a-z_\\u0-9"]{0,6}"?[ :]{0,2}(-?[0-9.eE+]{0,6}|"[^"]{0,6}"|true|nul|\{|\[|\]|\})[,}\] ]{0,2}){0,6}"#) {
        check(payload.as_bytes());
    }

    #[test]
    fn line_protocol_like(payload in r#"([a-z_\\, =#"0-9.iutfTF\-]{0,24}[\n\r]{0,2}){0,4}"#) {
        check(payload.as_bytes());
    }

    #[test]
    fn rfc3339_like(ts in r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{0,12})?([Zz]|[+-][0-9]{2}:[0-9]{2})?") {
        check(format!(r#"{{"ts":"{ts}","a":1}}"#).as_bytes());
    }

    #[test]
    fn topics(topic in r"[a-z0-9/+#.{}$\-_]{0,24}", device in r"[a-z0-9/+#.\-]{0,6}") {
        let map = TopicMap::new(&[
            TopicPattern::new("meters/{device}/{table}"),
            TopicPattern { table: Some("t".into()), ..TopicPattern::new("x/{device}") },
        ]).unwrap();
        if let Some(m) = map.resolve(&topic) {
            prop_assert!(!m.device.contains(['/', '+', '#']));
        }
        if device_may_publish(&device, &topic) {
            let prefix = format!("meters/{device}/");
            prop_assert!(topic.starts_with(&prefix));
            prop_assert!(!topic.contains(['+', '#']) && !topic.contains("//"));
        }
        let _ = map.authorize(&device, &topic);
        let _ = TopicMap::new(&[TopicPattern::new(topic.clone())]);
    }
}

#[test]
fn corpus() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus/payload");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let payload = std::fs::read(&path).unwrap();
        check(&payload);
        let got = Decoder::default().decode(&meters("power_consumption"), &payload, NOW);
        if name.starts_with("ok-") {
            assert!(got.is_ok(), "{name}: {got:?}");
        } else {
            let kind = name.strip_prefix("err-").and_then(|r| r.split('-').next());
            let kind =
                kind.unwrap_or_else(|| panic!("{name}: name must start with ok- or err-<kind>-"));
            assert_eq!(got.map_err(|e| e.kind()).err(), Some(kind), "{name}");
        }
        n += 1;
    }
    assert!(n >= 8, "corpus has {n} files");
}
