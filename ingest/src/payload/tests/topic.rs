//! Topic patterns and the publish ACL.

use std::sync::Arc;

use crate::payload::{TopicMap, TopicMatch, TopicPattern, device_may_publish, error_topic};

fn pat(pattern: &str, table: Option<&str>, channel: Option<&str>) -> TopicPattern {
    TopicPattern {
        pattern: pattern.into(),
        table: table.map(Into::into),
        channel: channel.map(Into::into),
    }
}

fn hit(device: &str, table: Option<&str>, channel: Option<&str>) -> Option<TopicMatch> {
    Some(TopicMatch {
        device: device.into(),
        table: table.map(Into::into),
        channel: channel.map(Arc::from),
    })
}

#[test]
fn default_pattern() {
    let map = TopicMap::default();
    assert_eq!(
        map.resolve("meters/viconsl/power_consumption"),
        hit("viconsl", Some("power_consumption"), None)
    );
    for miss in [
        "meters/viconsl",
        "meters/viconsl/",
        "meters/viconsl/power_consumption/x",
        "meters//power_consumption",
        "meters/+/power_consumption",
        "meters/#",
        "meters/vic/Power",
        "meters/../power_consumption",
        "meters/viconsl/errors",
        "Meters/viconsl/t",
        "/meters/viconsl/t",
        "",
    ] {
        assert_eq!(map.resolve(miss), None, "{miss}");
    }
    assert_eq!(error_topic("viconsl"), "meters/viconsl/errors");
}

#[test]
fn fixed_topic_devices() {
    let map = TopicMap::new(&[
        pat("tasmota/{device}/SENSOR", Some("power_consumption"), None),
        pat(
            "shellies/{device}/emeter/0/power",
            Some("power_consumption"),
            Some("power_w"),
        ),
        pat(
            "meters/{device}/tele/SENSOR",
            Some("power_consumption"),
            None,
        ),
        pat("telegraf/{device}", None, None),
        pat("meters/{device}/{table}", None, None),
    ])
    .unwrap();
    assert_eq!(
        map.resolve("tasmota/plug-1/SENSOR"),
        hit("plug-1", Some("power_consumption"), None)
    );
    assert_eq!(
        map.resolve("shellies/shellyem-A1/emeter/0/power"),
        hit("shellyem-A1", Some("power_consumption"), Some("power_w"))
    );
    assert_eq!(map.resolve("shellies/x/emeter/1/power"), None);
    assert_eq!(map.resolve("telegraf/host1"), hit("host1", None, None));
    // `meters/d/tele/SENSOR` has four levels; the default pattern has three.
    assert_eq!(
        map.resolve("meters/d/tele/SENSOR"),
        hit("d", Some("power_consumption"), None)
    );
    assert_eq!(
        map.resolve("meters/d/energy"),
        hit("d", Some("energy"), None)
    );
    assert_eq!(map.patterns().len(), 5);
}

#[test]
fn first_valid_match_wins() {
    let map = TopicMap::new(&[
        pat("meters/{device}/{table}", None, None),
        pat("meters/{device}/SENSOR", Some("power_consumption"), None),
    ])
    .unwrap();
    // `SENSOR` is not a table name, so the first pattern does not match.
    assert_eq!(
        map.resolve("meters/d/SENSOR"),
        hit("d", Some("power_consumption"), None)
    );
    let map = TopicMap::new(&[
        pat("meters/{device}/{table}", None, None),
        pat("meters/{device}/energy", Some("other"), None),
    ])
    .unwrap();
    assert_eq!(
        map.resolve("meters/d/energy"),
        hit("d", Some("energy"), None)
    );
}

#[test]
fn bad_patterns_are_refused() {
    for (p, table, channel, why) in [
        ("meters/+/{table}", None, None, "wildcards"),
        ("meters/{device}/#", None, None, "wildcards"),
        ("meters/{device}x/{table}", None, None, "placeholders"),
        ("meters/{dev}/{table}", None, None, "placeholders"),
        ("meters//{device}", None, None, "empty topic level"),
        ("meters/{device}/", None, None, "empty topic level"),
        ("meters/x/{table}", None, None, "`{device}` exactly once"),
        (
            "{device}/{device}/{table}",
            None,
            None,
            "`{device}` exactly once",
        ),
        ("{device}/{table}/{table}", None, None, "more than once"),
        ("{device}/{table}", Some("t"), None, "choose one"),
        ("{device}/x", Some("Bad"), None, "table name"),
        ("{device}/x", Some("t"), Some("ts"), "reserved"),
        (
            "{device}/x",
            Some("t"),
            Some("table"),
            "cannot be a channel",
        ),
    ] {
        let e = TopicMap::new(&[pat(p, table, channel)])
            .unwrap_err()
            .to_string();
        assert!(e.contains(why), "{p}: {e}");
    }
    assert!(TopicMap::new(&[]).is_err());
}

#[test]
fn config_shape() {
    #[derive(serde::Deserialize)]
    struct Ingest {
        topics: Vec<TopicPattern>,
    }
    let json = r#"{"topics":[{"pattern":"meters/{device}/{table}"},
        {"pattern":"shellies/{device}/emeter/0/power","table":"power_consumption","channel":"power_w"}]}"#;
    let cfg: Ingest = serde_json::from_str(json).unwrap();
    assert_eq!(cfg.topics[0], TopicPattern::new("meters/{device}/{table}"));
    assert_eq!(cfg.topics[1].channel.as_deref(), Some("power_w"));
    assert!(TopicMap::new(&cfg.topics).is_ok());
    let typo = r#"{"topics":[{"pattern":"x/{device}","tabel":"t"}]}"#;
    assert!(serde_json::from_str::<Ingest>(typo).is_err());
}

#[test]
fn publish_acl() {
    assert!(device_may_publish("dev1", "meters/dev1/power_consumption"));
    assert!(device_may_publish("dev1", "meters/dev1/tele/SENSOR"));
    for topic in [
        "meters/dev1x/power_consumption",
        "meters/dev/power_consumption",
        "meters/dev1",
        "meters/dev1/",
        "meters/dev1//t",
        "meters/dev1/t/",
        "meters/dev1/+",
        "meters/dev1/#",
        "meters/dev1/a+b",
        "meters/dev1/..",
        "meters/dev1/../dev2/t",
        "meters/dev1/./t",
        "meters/dev1/errors",
        "meters/dev1/t\0",
        "meters/DEV1/t",
        "meters//dev1/t",
        "/meters/dev1/t",
        "xmeters/dev1/t",
        "meters/dev2/t",
        "tasmota/dev1/SENSOR",
        "",
    ] {
        assert!(!device_may_publish("dev1", topic), "{topic}");
    }
    // A device id that is not a valid name may publish nowhere.
    for id in ["", "+", "#", "a/b", "..", "dev1/t"] {
        assert!(!device_may_publish(id, &format!("meters/{id}/t")), "{id}");
    }
}

#[test]
fn authorize_binds_the_device() {
    let map = TopicMap::new(&[
        pat("meters/{table}/{device}", None, None),
        pat("meters/{device}/{table}", None, None),
    ])
    .unwrap();
    // Allowed by the ACL, but the first pattern puts another device there.
    assert_eq!(map.authorize("dev1", "meters/dev1/dev2"), None);
    assert_eq!(map.authorize("dev1", "meters/dev1/energy"), None);
    let map = TopicMap::default();
    assert_eq!(
        map.authorize("dev1", "meters/dev1/energy"),
        hit("dev1", Some("energy"), None)
    );
    assert_eq!(map.authorize("dev1", "meters/dev2/energy"), None);
}
