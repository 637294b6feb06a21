//! Agent ids, the bounding of agent-supplied text, and the ceiling on a
//! session's sequence numbers.

use super::*;

#[test]
fn agent_ids_are_checked() {
    assert!(valid_agent_id("eu-west-1.probe_01:a").is_ok());
    assert!(valid_agent_id("").is_err());
    assert!(valid_agent_id(&"a".repeat(129)).is_err());
    let e = valid_agent_id("bad id").unwrap_err();
    assert!(e.message().starts_with("hello.agent_id"), "{}", e.message());
}

#[test]
fn long_text_is_cut_at_a_character_boundary() {
    let mut s = "é".repeat(2000);
    bound_text(&mut s, MAX_DETAIL_CHARS);
    assert_eq!(s.chars().count(), MAX_DETAIL_CHARS);
    let mut short = "refused".to_string();
    bound_text(&mut short, MAX_DETAIL_CHARS);
    assert_eq!(short, "refused");
}

#[test]
fn the_sequence_ceiling_grows_with_time_from_what_hello_said() {
    let limit = SeqLimit {
        base: 500,
        since: Instant::now(),
    };
    assert_eq!(limit.ceiling(), 500 + MAX_SEQ_PER_SECOND);
    let old = SeqLimit {
        base: u64::MAX - 3,
        since: Instant::now(),
    };
    assert_eq!(old.ceiling(), u64::MAX, "saturates, never wraps");
}
