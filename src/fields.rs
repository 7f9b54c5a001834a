//! Field rules shared by both transports, so HTTP and stdin accept the same
//! values and say the same thing about bad ones.

use serde_json::Value;

/// The longest simulated processing time accepted, in ms.
pub const MAX_LATENCY_MS: u64 = 600_000;

/// `latency_ms`: absent or null is 0; otherwise an integer from 0 to 600000.
pub fn latency_ms(value: Option<Value>) -> Result<u64, &'static str> {
    const BAD: &str = "latency_ms must be an integer from 0 to 600000";
    match value {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n.as_u64().filter(|ms| *ms <= MAX_LATENCY_MS).ok_or(BAD),
        Some(_) => Err(BAD),
    }
}
