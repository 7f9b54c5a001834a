//! How one connection ended, and the JSON summary of a class of them.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::{json, Value};

/// How one connection ended.
pub struct Outcome {
    /// Ended the way the protocol says a drain should end it.
    pub clean: bool,
    /// "clean", or why not ("reset", "timeout", "status_503", ...). A clean
    /// outcome may carry a note instead (e.g. "204_then_reset").
    pub kind: String,
    /// When the goodbye arrived: Close frame, reconnect event, 204.
    pub goodbye: Option<Instant>,
    /// When the connection ended; None if still open when we gave up.
    pub ended: Option<Instant>,
    /// The server ended the TCP connection with a reset.
    pub reset: bool,
}

impl Outcome {
    /// A connection that just ended.
    pub fn ended(clean: bool, kind: impl Into<String>, goodbye: Option<Instant>) -> Self {
        Self {
            clean,
            kind: kind.into(),
            goodbye,
            ended: Some(Instant::now()),
            reset: false,
        }
    }

    /// A connection still open when we stopped waiting.
    pub fn still_open(kind: impl Into<String>, goodbye: Option<Instant>) -> Self {
        Self {
            clean: false,
            kind: kind.into(),
            goodbye,
            ended: None,
            reset: false,
        }
    }

    pub fn with_reset(mut self, reset: bool) -> Self {
        self.reset = reset;
        self
    }
}

/// Milliseconds from `from` to `to`, to 0.1 ms (0 if `to` is earlier).
pub fn ms(from: Instant, to: Instant) -> f64 {
    let micros = to.saturating_duration_since(from).as_micros() as f64;
    (micros / 100.0).round() / 10.0
}

pub fn count(items: impl IntoIterator<Item = String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for item in items {
        *counts.entry(item).or_insert(0) += 1;
    }
    counts
}

/// The summary of one class: `requested`, `opened`, `open_failed`,
/// `open_errors`, `clean`, `other`, `reasons` (of the other ones), `notes`
/// (on clean ones), `still_open`, and relative to `first_goodbye` (the
/// first goodbye of any class): `goodbye_ms_max` (the class's last goodbye)
/// and `last_end_ms` (its last connection's end).
pub fn class_json(
    requested: usize,
    open_errors: &[String],
    outcomes: &[Outcome],
    first_goodbye: Option<Instant>,
) -> Value {
    let clean: Vec<&Outcome> = outcomes.iter().filter(|o| o.clean).collect();
    let after_first = |t: Option<Instant>| first_goodbye.zip(t).map(|(first, t)| ms(first, t));
    let last_goodbye = outcomes.iter().filter_map(|o| o.goodbye).max();
    let last_end = outcomes.iter().filter_map(|o| o.ended).max();
    json!({
        "requested": requested,
        "opened": outcomes.len(),
        "open_failed": open_errors.len(),
        "open_errors": count(open_errors.iter().cloned()),
        "clean": clean.len(),
        "other": outcomes.len() - clean.len(),
        "reasons": count(outcomes.iter().filter(|o| !o.clean).map(|o| o.kind.clone())),
        "notes": count(clean.iter().filter(|o| o.kind != "clean").map(|o| o.kind.clone())),
        "still_open": outcomes.iter().filter(|o| o.ended.is_none()).count(),
        "goodbye_ms_max": after_first(last_goodbye),
        "last_end_ms": after_first(last_end),
    })
}
