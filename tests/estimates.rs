//! Time estimates: every stage run leaves one line in the store's timing log, and a dry run
//! (or `status`) estimates what would run as the median rate of the last matching runs
//! times the images and epochs it would handle. Checked against a hand computation from
//! recorded timings (no wall clock is compared: the machines are shared).

mod common;

use common::demo_project;
use pipe::engine::estimate::{estimate, TimingRecord};
use pipe::manifest::StageKind;

fn rec(kind: StageKind, network: &str, images: u64, epochs: u64, seconds: f64) -> TimingRecord {
    TimingRecord {
        kind,
        network: Some(network.into()),
        device: Some("cpu".into()),
        backend: Some("native".into()),
        images,
        epochs,
        seconds,
    }
}

#[test]
fn an_estimate_is_the_median_rate_of_the_last_five_matching_runs() {
    let what = (
        StageKind::LrDrop,
        Some("net".to_string()),
        Some("cpu".to_string()),
        Some("native".to_string()),
    );
    // Nothing to go by.
    assert_eq!(estimate(&[], &what, 100, 2), None);
    let mut past = vec![
        rec(StageKind::Train, "net", 1000, 10, 900.0), // oldest: beyond the last five
        rec(StageKind::Train, "net", 1000, 10, 10.0),  // 1 ms per image-epoch
        rec(StageKind::Train, "other", 1000, 10, 5.0), // another network: ignored
        rec(StageKind::LrDrop, "net", 500, 2, 3.0),    // 3 ms: lr-drop counts as training
        rec(StageKind::Train, "net", 100, 1, 0.2),     // 2 ms
        rec(StageKind::Resume, "net", 100, 4, 2.0),    // 5 ms
        rec(StageKind::Train, "net", 200, 5, 4.0),     // 4 ms
    ];
    // Rates of the last five matching: 1, 3, 2, 5, 4 ms; median 3 ms x 100 x 2.
    let e = estimate(&past, &what, 100, 2).unwrap();
    assert!((e - 0.6).abs() < 1e-12, "{e}");
    // The oldest falls out once a sixth matching run is recorded after it.
    past.push(rec(StageKind::Train, "net", 100, 1, 0.9)); // 9 ms
    let e = estimate(&past, &what, 100, 2).unwrap();
    assert!((e - 0.8).abs() < 1e-12, "median of 3, 2, 5, 4, 9 ms: {e}");
    // Another device matches nothing.
    let gpu = (
        what.0,
        what.1.clone(),
        Some("cuda".to_string()),
        what.3.clone(),
    );
    assert_eq!(estimate(&past, &gpu, 100, 2), None);
    // Data stages match by kind alone.
    let hdf5 = (StageKind::Hdf5, None, None, None);
    let data = [TimingRecord {
        kind: StageKind::Hdf5,
        network: None,
        device: None,
        backend: None,
        images: 400,
        epochs: 1,
        seconds: 2.0,
    }];
    assert_eq!(estimate(&data, &hdf5, 1000, 1), Some(5.0));
}

#[test]
fn the_demo_records_its_runs_and_estimates_from_them() {
    let p = demo_project();
    // Before any run: nothing to estimate from, and it says so.
    let out = p.ok(&["run", "demo", "--dry-run"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no estimate yet"));
    p.run_json("demo", &[]);
    let log = p.cache().join("timings.jsonl");
    let recorded: Vec<TimingRecord> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // One line per stage run, with what it handled: the demo generates 10 classes of 120
    // train and 20 val images, cuts 20 per class to test, trains 6 epochs on the 1,000
    // left, drops the lr for 2, evaluates the 200 test images.
    let units: Vec<(StageKind, u64, u64)> = recorded
        .iter()
        .map(|r| (r.kind, r.images, r.epochs))
        .collect();
    assert_eq!(
        units,
        [
            (StageKind::Ingest, 1400, 1),
            (StageKind::Split, 1400, 1),
            (StageKind::Hdf5, 1400, 1),
            (StageKind::Train, 1000, 6),
            (StageKind::LrDrop, 1000, 2),
            (StageKind::Evaluate, 200, 1),
        ]
    );
    assert_eq!(recorded[3].network.as_deref(), Some("demo_net"));

    // Replace the log with runs of known speed: train at a median 0.5 ms per image-epoch,
    // evaluate at 0.5 ms per image.
    let lines: Vec<String> = [
        rec(StageKind::Train, "demo_net", 1000, 6, 2.4),
        rec(StageKind::Train, "demo_net", 1000, 6, 3.0),
        rec(StageKind::LrDrop, "demo_net", 1000, 2, 3.0),
        rec(StageKind::Evaluate, "demo_net", 200, 1, 0.1),
    ]
    .iter()
    .map(|r| serde_json::to_string(r).unwrap())
    .collect();
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let dry = p.run_json("demo", &["--dry-run", "--set=train.epochs=12"]);
    let est = |stage: &str| -> f64 {
        dry["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == stage)
            .and_then(|s| s["estimate"].as_f64())
            .unwrap_or_else(|| panic!("no estimate for {stage}: {dry}"))
    };
    // Rates 0.4, 0.5, 1.5 ms: median 0.5 ms x 1,000 images x 12 epochs = 6 s; the drop's
    // 2 epochs 1 s; evaluating 200 images 0.1 s.
    assert!((est("train") - 6.0).abs() < 1e-9, "{dry}");
    assert!((est("drop") - 1.0).abs() < 1e-9, "{dry}");
    assert!((est("evaluate") - 0.1).abs() < 1e-9, "{dry}");
    // `status` shows the same estimates and their total.
    let out = p.ok(&["status", "demo", "--set", "train.epochs=12"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("[est. 6.0s]"), "{text}");
    assert!(
        text.contains("estimated time to bring it up to date: 7.1s"),
        "{text}"
    );
}
