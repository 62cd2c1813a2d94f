use super::*;

#[test]
fn faults_parse() {
    assert_eq!("".parse::<Faults>().unwrap(), Faults::default());
    let f: Faults = "disconnect, late".parse().unwrap();
    assert!(f.disconnect && f.late && !f.skew && !f.malformed);
    let all: Faults = "all".parse().unwrap();
    assert!(all.disconnect && all.skew && all.duplicate && all.late && all.burst && all.malformed);
    let err = "disconect".parse::<Faults>().unwrap_err();
    assert!(err.contains("disconect"), "{err}");
}

#[test]
fn credentials_round_trip_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meters.txt");
    append_credentials(&path, "meter-0001", "s1").unwrap();
    append_credentials(&path, "meter-0002", "s2").unwrap();
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.insert_str(0, "# demo meters\n\n");
    std::fs::write(&path, text).unwrap();
    assert_eq!(
        read_credentials(&path).unwrap(),
        [
            ("meter-0001".to_owned(), "s1".to_owned()),
            ("meter-0002".to_owned(), "s2".to_owned())
        ]
    );
    std::fs::write(&path, "only-an-id\n").unwrap();
    let err = read_credentials(&path).unwrap_err().to_string();
    assert!(err.contains("line 1"), "{err}");
}

#[test]
fn waveform_mode_measures_what_the_model_drew() {
    // The measured values follow the load model within the measurement's
    // accuracy: 0.5 % on volts, and on power where a circuit draws more
    // than 50 W (below that, noise and quantisation dominate).
    let mut wave = waveform::WaveMeter::new("meter-0001", 5);
    let mut sim = crate::simdata::MeterSim::new("meter-0001", 5);
    for s in 0..30 {
        let t = MODEL_START_NS + s * 1_000_000_000;
        let got = wave.values(t);
        let want: Vec<f64> = sim
            .reading("t", t)
            .values
            .iter()
            .map(|(_, v)| match v {
                wattson_storage::Value::F64(x) => *x,
                _ => f64::NAN,
            })
            .collect();
        assert_eq!(got.len(), 17);
        for k in 0..3 {
            let err = (f64::from(got[k]) - want[k]).abs() / want[k];
            assert!(
                err < 0.005,
                "second {s} voltage {k}: {} vs {}",
                got[k],
                want[k]
            );
        }
        for c in 0..7 {
            let (p, w) = (f64::from(got[4 + 2 * c]), want[4 + 2 * c]);
            if w > 50.0 {
                assert!(
                    (p - w).abs() / w < 0.005,
                    "second {s} circuit {c}: {p} W vs {w} W"
                );
            } else {
                assert!(p.abs() < 5.0 + w, "second {s} circuit {c}: {p} W vs {w} W");
            }
        }
    }
}

#[test]
fn same_seed_same_values() {
    let run = |seed| {
        let mut w = waveform::WaveMeter::new("m", seed);
        (0..3)
            .map(|s| w.values(MODEL_START_NS + s * 1_000_000_000))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}
