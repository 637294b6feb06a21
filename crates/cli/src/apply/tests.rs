//! The plan as a pure function: parsing and checking files, diffs, creates,
//! updates, deletions only with --prune, and when deleting needs confirmation.

use super::*;

const FILE: &str = r#"
[[monitor]]
name = "web"
host = "Web.Example.COM."
port = 443
regions = ["eu", "us"]
interval = "30s"

[[monitor]]
name = "db"
host = "db.example.com"
port = 5432
regions = ["eu"]
consensus = "unanimous"
paused = true
"#;

fn current(name: &str, host: &str, port: u32, regions: &[&str], interval_ms: u64) -> v1::Monitor {
    v1::Monitor {
        id: format!("mon_{name}"),
        name: name.into(),
        host: host.into(),
        port,
        regions: regions.iter().map(|r| r.to_string()).collect(),
        interval_ms,
        timeout_ms: 3000,
        consensus: v1::ConsensusPolicy::Quorum as i32,
        family: v1::IpFamily::Any as i32,
        address_policy: v1::AddressPolicy::Any as i32,
        close_mode: v1::CloseMode::Fin as i32,
        ..Default::default()
    }
}

#[test]
fn the_file_is_checked_whole_and_normalised() {
    let d = parse(FILE).unwrap();
    assert_eq!(d.len(), 2);
    assert_eq!(d[0].host, "web.example.com");
    assert_eq!(d[0].interval_ms, Some(30_000));
    assert_eq!(d[0].timeout_ms, None);
    assert_eq!(d[1].consensus, Some(v1::ConsensusPolicy::Unanimous as i32));

    let bad = [
        (
            "[[monitor]]\nname = \"a\"\nhost = \"x.com\"\nport = 1\nregions = [\"eu\"]\ncolour = \"red\"\n",
            "colour",
        ),
        (
            "[[monitor]]\nname = \"a\"\nhost = \"x.com\"\nport = 70000\nregions = [\"eu\"]\n",
            "port",
        ),
        (
            "[[monitor]]\nname = \"a\"\nhost = \"x y\"\nport = 1\nregions = [\"eu\"]\n",
            "host",
        ),
        (
            "[[monitor]]\nname = \"a\"\nhost = \"x.com\"\nport = 1\nregions = []\n",
            "regions",
        ),
        (
            "[[monitor]]\nname = \"a\"\nhost = \"x.com\"\nport = 1\nregions = [\"eu\"]\ninterval = \"often\"\n",
            "interval",
        ),
        (
            "[[monitor]]\nname = \"a\"\nhost = \"x.com\"\nport = 1\nregions = [\"eu\"]\nconsensus = \"most\"\n",
            "consensus",
        ),
        (
            "[[monitor]]\nname = \"a\"\nhost = \"x.com\"\nport = 1\nregions = [\"eu\"]\n[[monitor]]\nname = \"a\"\nhost = \"y.com\"\nport = 1\nregions = [\"eu\"]\n",
            "twice",
        ),
        ("[[monitors]]\nname = \"a\"\n", "monitors"),
    ];
    for (text, needle) in bad {
        let e = parse(text).unwrap_err();
        assert_eq!(e.kind, crate::error::Failure::Usage);
        assert!(e.message.contains(needle), "{needle}: {e}");
    }
}

#[test]
fn plan_creates_updates_deletes_and_leaves_the_rest() {
    let d = parse(FILE).unwrap();
    let now = vec![
        current("web", "web.example.com", 443, &["eu", "us"], 60_000),
        current("old", "old.example.com", 22, &["eu"], 60_000),
    ];
    let changes = plan(&d, &now, true).unwrap();
    assert!(matches!(&changes[0], Change::Delete(m) if m.name == "old"));
    match &changes[1] {
        Change::Update { diffs, .. } => assert_eq!(
            diffs,
            &vec![Diff {
                field: "interval",
                from: "1m".into(),
                to: "30s".into()
            }]
        ),
        other => panic!("{other:?}"),
    }
    assert!(matches!(&changes[2], Change::Create(x) if x.name == "db"));
    let text = render(&changes);
    assert!(
        text.contains("plan: 1 to create, 1 to update, 1 to delete, 0 unchanged"),
        "{text}"
    );
    // Without --prune the same monitor is kept, and said so.
    let changes = plan(&d, &now, false).unwrap();
    assert!(matches!(&changes[0], Change::Keep(m) if m.name == "old"));
    let text = render(&changes);
    assert!(
        text.contains(
            "plan: 1 to create, 1 to update, 0 to delete, 0 unchanged, 1 not in the file (kept)"
        ),
        "{text}"
    );
    assert!(text.contains("keep \"old\""), "{text}");
}

#[test]
fn deleting_more_than_a_few_or_everything_needs_confirmation() {
    assert!(!needs_confirmation(0, 0));
    assert!(!needs_confirmation(0, 10));
    assert!(!needs_confirmation(3, 10));
    assert!(needs_confirmation(4, 10));
    assert!(
        needs_confirmation(1, 1),
        "an empty file would delete everything"
    );
    assert!(needs_confirmation(2, 2));
}

#[test]
fn a_matching_coordinator_needs_nothing() {
    let d = parse(FILE).unwrap();
    let mut db = current("db", "db.example.com", 5432, &["eu"], 60_000);
    db.consensus = v1::ConsensusPolicy::Unanimous as i32;
    db.paused = true;
    let now = vec![
        current("web", "web.example.com", 443, &["eu", "us"], 30_000),
        db,
    ];
    let changes = plan(&d, &now, true).unwrap();
    assert!(
        changes.iter().all(|c| matches!(c, Change::Unchanged(_))),
        "{changes:?}"
    );
}

#[test]
fn only_paused_differing_sends_no_update() {
    let d = parse(FILE).unwrap();
    let db = current("db", "db.example.com", 5432, &["eu"], 60_000);
    let mut diffs_found = diffs(&db, &d[1]);
    diffs_found.retain(|x| x.field == "paused");
    assert!(update_request("", &db, &d[1], &diffs_found).is_none());
}

#[test]
fn a_name_shared_on_the_coordinator_is_refused() {
    let d = parse(FILE).unwrap();
    let mut a = current("web", "web.example.com", 443, &["eu"], 30_000);
    let mut b = a.clone();
    a.id = "mon_a".into();
    b.id = "mon_b".into();
    let e = plan(&d, &[a, b], false).unwrap_err();
    assert!(e.message.contains("mon_a, mon_b"), "{e}");
}

#[test]
fn flap_keys_are_checked_compared_as_stored_and_sent_only_when_they_differ() {
    let head =
        "[[monitor]]\nname = \"db\"\nhost = \"db.example.com\"\nport = 5432\nregions = [\"eu\"]\n";
    let d = parse(&format!(
            "{head}flap_detection = \"off\"\nflap_threshold = 6\nflap_window = \"10m\"\nflap_stable_for = \"default\"\n"
        ))
        .unwrap();
    assert_eq!(d[0].flap_detection, Some(v1::FlapDetection::Off as i32));
    assert_eq!(d[0].flap_threshold, Some(6));
    assert_eq!(d[0].flap_window_ms, Some(600_000));
    assert_eq!(d[0].flap_stable_for_ms, Some(0));

    // A monitor on the defaults, stored before flap detection existed.
    let db = current("db", "db.example.com", 5432, &["eu"], 60_000);
    let found = diffs(&db, &d[0]);
    let fields: Vec<(&str, &str, &str)> = found
        .iter()
        .map(|x| (x.field, x.from.as_str(), x.to.as_str()))
        .collect();
    assert_eq!(
        fields,
        [
            ("flap_detection", "on", "off"),
            ("flap_threshold", "default", "6"),
            ("flap_window", "default", "10m"),
        ]
    );
    let req = update_request("", &db, &d[0], &found).unwrap();
    assert_eq!(req.flap_detection, Some(v1::FlapDetection::Off as i32));
    assert_eq!(req.flap_threshold, Some(6));
    assert_eq!(req.flap_window_ms, Some(600_000));
    assert_eq!(req.flap_stable_for_ms, None, "unchanged: not sent");

    // What the coordinator stored then matches: nothing more to do.
    let mut stored = db.clone();
    stored.flap_detection = v1::FlapDetection::Off as i32;
    stored.flap_threshold = 6;
    stored.flap_window_ms = 600_000;
    assert!(diffs(&stored, &d[0]).is_empty());
    // "on" matches a monitor stored without the field (on by default).
    let on = parse(&format!("{head}flap_detection = \"on\"\n")).unwrap();
    assert!(diffs(&db, &on[0]).is_empty());

    for (key, needle) in [
        ("flap_threshold = 1", "flap_threshold"),
        ("flap_threshold = 101", "flap_threshold"),
        ("flap_window = \"soon\"", "flap_window"),
        ("flap_stable_for = \"-1s\"", "flap_stable_for"),
        ("flap_detection = \"maybe\"", "flap_detection"),
    ] {
        let e = parse(&format!("{head}{key}\n")).unwrap_err();
        assert_eq!(e.kind, crate::error::Failure::Usage);
        assert!(e.message.contains(needle), "{needle}: {e}");
    }
}
