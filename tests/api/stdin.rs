//! `drainer --stdin`: the node protocol, through the real binary with piped stdin.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

fn init() -> String {
    msg("init", 1, r#""node_id": "n1", "node_ids": ["n1"]"#)
}

fn request(msg_id: u64, latency_ms: u64) -> String {
    msg(
        "tcp_request",
        msg_id,
        &format!(r#""data": "d{msg_id}", "latency_ms": {latency_ms}"#),
    )
}

fn shutdown(msg_id: u64, drain_timeout_ms: u64) -> String {
    msg(
        "tcp_shutdown",
        msg_id,
        &format!(r#""drain_timeout_ms": {drain_timeout_ms}"#),
    )
}

fn status(msg_id: u64) -> String {
    msg("tcp_drain_status", msg_id, "")
}

/// (type, in_reply_to) of a reply.
fn kind(v: &Value) -> (String, u64) {
    (
        v["body"]["type"].as_str().unwrap_or_default().to_string(),
        v["body"]["in_reply_to"].as_u64().unwrap_or(u64::MAX),
    )
}

/// The published sample, byte for byte.
#[test]
fn the_published_sample_byte_for_byte() {
    let mut n = node(&[]);
    n.send(&[
        init(),
        request(2, 500),
        request(3, 500),
        shutdown(4, 5000),
        request(5, 100),
    ]);
    let expected_now = [
        r#"{"src": "n1", "dest": "c1", "body": {"type": "init_ok", "in_reply_to": 1, "msg_id": 0}}"#,
        r#"{"src": "n1", "dest": "c1", "body": {"type": "tcp_shutdown_ok", "in_reply_to": 4, "status": "draining", "in_flight": 2, "msg_id": 1}}"#,
        r#"{"src": "n1", "dest": "c1", "body": {"type": "tcp_request_error", "in_reply_to": 5, "error": "server_shutting_down", "msg_id": 2}}"#,
        r#"{"src": "n1", "dest": "c1", "body": {"type": "tcp_request_ok", "in_reply_to": 2, "result": "processed", "duration_ms": 500, "msg_id": 3}}"#,
        r#"{"src": "n1", "dest": "c1", "body": {"type": "tcp_request_ok", "in_reply_to": 3, "result": "processed", "duration_ms": 500, "msg_id": 4}}"#,
    ];
    for line in expected_now {
        assert_eq!(n.recv().0, line);
    }
    n.send(&[status(6)]);
    assert_eq!(
        n.recv().0,
        r#"{"src": "n1", "dest": "c1", "body": {"type": "tcp_drain_status_ok", "in_reply_to": 6, "status": "drained", "remaining": 0, "took_ms": 500, "msg_id": 5}}"#
    );
    n.close_stdin();
    assert_eq!(n.server.wait_exit(PATIENCE).0, 0);
}

#[test]
fn requests_run_concurrently_while_stdin_keeps_being_read() {
    let mut n = node(&[]);
    let sent = n.send(&(2..12).map(|i| request(i, 400)).collect::<Vec<_>>());
    n.send(&[status(20)]);
    let v = n.recv_json();
    assert_eq!(kind(&v), ("tcp_drain_status_ok".into(), 20));
    assert_eq!(v["body"]["status"], "active");
    assert_eq!(v["body"]["remaining"], 10);
    assert_eq!(v["body"]["took_ms"], 0);
    for i in 2..12 {
        let (line, at) = n.recv();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(kind(&v), ("tcp_request_ok".into(), i));
        assert_eq!(v["body"]["duration_ms"], 400);
        let after = at - sent;
        assert!(
            after >= Duration::from_millis(390) && after < Duration::from_millis(1200),
            "answered {after:?} after sending: they run at once, not one after another"
        );
    }
}

#[test]
fn replies_come_in_deadline_order_ties_in_arrival_order() {
    let mut n = node(&[]);
    n.send(&[
        request(2, 300),
        request(3, 100),
        request(4, 200),
        request(5, 100),
    ]);
    let order: Vec<u64> = (0..4).map(|_| kind(&n.recv_json()).1).collect();
    assert_eq!(order, vec![3, 5, 4, 2]);
}

#[test]
fn zero_latency_is_answered_before_the_next_line_and_never_counted() {
    let mut n = node(&[]);
    n.send(&[request(2, 0), msg("tcp_request", 3, ""), status(4)]);
    let a = n.recv_json();
    assert_eq!(kind(&a), ("tcp_request_ok".into(), 2));
    assert_eq!(a["body"]["duration_ms"], 0);
    assert_eq!(kind(&n.recv_json()), ("tcp_request_ok".into(), 3));
    let s = n.recv_json();
    assert_eq!(kind(&s), ("tcp_drain_status_ok".into(), 4));
    assert_eq!(
        (s["body"]["status"].clone(), s["body"]["remaining"].clone()),
        ("active".into(), 0.into())
    );
    n.close_stdin();
    assert_eq!(n.server.wait_exit(PATIENCE).0, 0);
    assert!(
        !n.server.log().contains("admitted request"),
        "a zero-latency request never asks to be admitted"
    );
}

/// A request due before a line arrived is answered before that line, even
/// when the process was paused past the deadline (its timer fires late).
#[test]
fn a_late_timer_does_not_let_a_later_line_overtake_an_earlier_deadline() {
    let mut n = node(&[]);
    n.send(&[request(2, 40)]);
    n.server.wait_admitted(1);
    n.server.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(150));
    n.send(&[request(3, 0), status(4)]);
    n.server.signal(libc::SIGCONT);
    assert_eq!(kind(&n.recv_json()), ("tcp_request_ok".into(), 2));
    assert_eq!(kind(&n.recv_json()), ("tcp_request_ok".into(), 3));
    let s = n.recv_json();
    assert_eq!(
        s["body"]["remaining"], 0,
        "the due request is no longer in flight"
    );
}

#[test]
fn init_renames_the_node_for_replies_still_to_come() {
    let mut n = node(&[]);
    n.send(&[
        msg("tcp_request", 2, r#""latency_ms": 200"#).replace(r#""dest": "n1""#, r#""dest": "n9""#)
    ]);
    n.server.wait_admitted(1);
    n.send(&[init()]);
    assert_eq!(n.recv_json()["src"], "n1");
    let v = n.recv_json();
    assert_eq!(kind(&v), ("tcp_request_ok".into(), 2));
    assert_eq!(v["src"], "n1", "node_id is the node's id from then on");
}

#[test]
fn status_while_draining_then_drained_with_the_frozen_nominal_time() {
    let mut n = node(&[]);
    n.send(&[request(2, 600), shutdown(3, 5000)]);
    let ok = n.recv_json();
    assert_eq!(ok["body"]["in_flight"], 1);
    std::thread::sleep(Duration::from_millis(150));
    n.send(&[status(4)]);
    let s = n.recv_json();
    assert_eq!(s["body"]["status"], "draining");
    assert_eq!(s["body"]["remaining"], 1);
    let took = s["body"]["took_ms"].as_u64().unwrap();
    assert!(
        (140..600).contains(&took),
        "took_ms {took} is ms since the shutdown"
    );
    assert_eq!(kind(&n.recv_json()), ("tcp_request_ok".into(), 2));
    n.send(&[status(5)]);
    let s = n.recv_json();
    assert_eq!(s["body"]["status"], "drained");
    assert_eq!(s["body"]["remaining"], 0);
    let took = s["body"]["took_ms"].as_u64().unwrap();
    assert!(
        (595..=600).contains(&took),
        "nominal deadline minus shutdown: {took}"
    );
    // Drained does not end the process: it keeps answering.
    n.send(&[request(6, 10), status(7)]);
    assert_eq!(n.recv_json()["body"]["error"], "server_shutting_down");
    assert_eq!(n.recv_json()["body"]["took_ms"], took, "frozen");
    n.close_stdin();
    assert_eq!(n.server.wait_exit(PATIENCE).0, 0);
}

/// The drain's deadline is the one `tcp_shutdown` asked for, even when it is
/// longer than `DRAIN_TIMEOUT_MS`: the end of input waits for the work.
#[test]
fn a_protocol_drain_longer_than_the_configured_one_still_answers_everything() {
    let mut n = node(&[("DRAIN_TIMEOUT_MS", "100")]);
    n.send(&[request(2, 3000), shutdown(3, 10_000)]);
    assert_eq!(kind(&n.recv_json()), ("tcp_shutdown_ok".into(), 3));
    n.close_stdin();
    let v = n.recv_json();
    assert_eq!(kind(&v), ("tcp_request_ok".into(), 2), "{v}");
    assert_eq!(n.server.wait_exit(PATIENCE).0, 0);
}

/// Stdin mode has no shutdown budget: only the drain deadline bounds the work.
#[test]
fn the_shutdown_budget_does_not_apply_in_stdin_mode() {
    let mut n = node(&[("SHUTDOWN_TIMEOUT_MS", "1000")]);
    n.send(&[request(2, 1500)]);
    n.server.wait_admitted(1);
    n.close_stdin();
    let v = n.recv_json();
    assert_eq!(kind(&v), ("tcp_request_ok".into(), 2), "{v}");
    assert_eq!(n.server.wait_exit(PATIENCE).0, 0);
}

#[test]
fn the_deadline_cancels_stragglers_and_status_says_timed_out() {
    let mut n = node(&[]);
    let sent = n.send(&[request(2, 5000), shutdown(3, 200)]);
    let ok = n.recv_json();
    assert_eq!(kind(&ok), ("tcp_shutdown_ok".into(), 3));
    assert_eq!(
        (
            ok["body"]["status"].clone(),
            ok["body"]["in_flight"].clone()
        ),
        ("draining".into(), 1.into())
    );
    let (line, at) = n.recv();
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(kind(&v), ("tcp_request_error".into(), 2));
    assert_eq!(v["body"]["error"], "drain_timeout");
    assert!(at - sent >= Duration::from_millis(190) && at - sent < Duration::from_secs(2));
    n.send(&[status(4)]);
    let s = n.recv_json();
    assert_eq!(
        (
            s["body"]["status"].clone(),
            s["body"]["remaining"].clone(),
            s["body"]["took_ms"].clone()
        ),
        ("timed_out".into(), 1.into(), 200.into())
    );
    n.close_stdin();
    assert_eq!(n.server.wait_exit(PATIENCE).0, 0, "end of input exits 0");
}

#[test]
fn drain_timeout_zero_cancels_at_once_after_the_shutdown_reply() {
    let mut n = node(&[]);
    n.send(&[
        request(2, 5000),
        request(3, 5000),
        shutdown(4, 0),
        status(5),
        msg("echo", 6, ""),
    ]);
    let ok = n.recv_json();
    assert_eq!(kind(&ok), ("tcp_shutdown_ok".into(), 4));
    assert_eq!(ok["body"]["in_flight"], 2);
    for id in [2, 3] {
        let v = n.recv_json();
        assert_eq!(kind(&v), ("tcp_request_error".into(), id));
        assert_eq!(v["body"]["error"], "drain_timeout");
    }
    // At once: before the next line of the same batch is handled.
    let s = n.recv_json();
    assert_eq!(kind(&s), ("tcp_drain_status_ok".into(), 5));
    assert_eq!(
        (
            s["body"]["status"].clone(),
            s["body"]["remaining"].clone(),
            s["body"]["took_ms"].clone()
        ),
        ("timed_out".into(), 2.into(), 0.into())
    );
    assert_eq!(kind(&n.recv_json()), ("error".into(), 6));
}

#[test]
fn an_idle_node_with_drain_timeout_zero_is_drained_not_timed_out() {
    let mut n = node(&[]);
    n.send(&[shutdown(2, 0), status(3)]);
    assert_eq!(n.recv_json()["body"]["in_flight"], 0);
    let s = n.recv_json();
    assert_eq!(
        (
            s["body"]["status"].clone(),
            s["body"]["remaining"].clone(),
            s["body"]["took_ms"].clone()
        ),
        ("drained".into(), 0.into(), 0.into())
    );
}

#[test]
fn a_second_shutdown_changes_neither_the_deadline_nor_the_clock() {
    let mut n = node(&[]);
    let sent = n.send(&[request(2, 5000), shutdown(3, 300)]);
    assert_eq!(kind(&n.recv_json()), ("tcp_shutdown_ok".into(), 3));
    n.send(&[shutdown(4, 60_000)]);
    let again = n.recv_json();
    assert_eq!(kind(&again), ("tcp_shutdown_ok".into(), 4));
    assert_eq!(
        (
            again["body"]["status"].clone(),
            again["body"]["in_flight"].clone()
        ),
        ("draining".into(), 1.into())
    );
    let (line, at) = n.recv();
    assert!(line.contains(r#""error": "drain_timeout""#), "{line}");
    assert!(
        at - sent < Duration::from_secs(2),
        "still the first deadline: {:?}",
        at - sent
    );
    n.send(&[status(5)]);
    assert_eq!(n.recv_json()["body"]["took_ms"], 300);
}

#[test]
fn a_missing_drain_timeout_uses_the_configured_one() {
    let mut n = node(&[("DRAIN_TIMEOUT_MS", "250")]);
    n.send(&[request(2, 5000), msg("tcp_shutdown", 3, "")]);
    assert_eq!(kind(&n.recv_json()), ("tcp_shutdown_ok".into(), 3));
    assert_eq!(n.recv_json()["body"]["error"], "drain_timeout");
    n.send(&[status(4)]);
    let s = n.recv_json();
    assert_eq!(
        (s["body"]["status"].clone(), s["body"]["took_ms"].clone()),
        ("timed_out".into(), 250.into())
    );
}

#[test]
fn end_of_input_lets_requests_finish_then_exits_0() {
    let mut n = node(&[]);
    n.send(&[request(2, 300)]);
    let closed = Instant::now();
    n.close_stdin();
    assert_eq!(kind(&n.recv_json()), ("tcp_request_ok".into(), 2));
    let (code, exited) = n.server.wait_exit(PATIENCE);
    assert_eq!(code, 0);
    assert!(exited - closed < Duration::from_secs(2));
}

#[test]
fn an_idle_node_exits_at_once_on_end_of_input() {
    let mut n = node(&[]);
    let closed = Instant::now();
    n.close_stdin();
    let (code, exited) = n.server.wait_exit(PATIENCE);
    assert_eq!(code, 0);
    assert!(
        exited - closed < Duration::from_millis(800),
        "{:?}",
        exited - closed
    );
}

#[test]
fn end_of_input_during_a_drain_is_bounded_by_its_deadline_and_exits_0() {
    let mut n = node(&[]);
    n.send(&[request(2, 10_000), shutdown(3, 300)]);
    n.recv_json();
    n.close_stdin();
    assert_eq!(n.recv_json()["body"]["error"], "drain_timeout");
    assert_eq!(n.server.wait_exit(PATIENCE).0, 0);
}

#[test]
fn end_of_input_is_bounded_by_the_configured_drain_timeout() {
    let mut n = node(&[("DRAIN_TIMEOUT_MS", "200")]);
    n.send(&[request(2, 10_000)]);
    n.server.wait_admitted(1);
    let closed = Instant::now();
    n.close_stdin();
    assert_eq!(n.recv_json()["body"]["error"], "drain_timeout");
    let (code, exited) = n.server.wait_exit(PATIENCE);
    assert_eq!(code, 0, "end of input always exits 0");
    assert!(exited - closed < Duration::from_secs(2));
}

#[test]
fn sigint_during_a_protocol_drain_cuts_it_and_exits_1() {
    let mut n = node(&[]);
    n.send(&[request(2, 10_000), shutdown(3, 60_000)]);
    assert_eq!(kind(&n.recv_json()), ("tcp_shutdown_ok".into(), 3));
    n.server.signal(libc::SIGINT);
    assert_eq!(n.recv_json()["body"]["error"], "shutdown_forced");
    assert_eq!(n.server.wait_exit(PATIENCE).0, 1);
}

#[test]
fn a_signal_after_a_timed_out_drain_exits_1() {
    let mut n = node(&[]);
    n.send(&[request(2, 10_000), shutdown(3, 100)]);
    n.recv_json();
    assert_eq!(n.recv_json()["body"]["error"], "drain_timeout");
    n.server.signal(libc::SIGTERM);
    assert_eq!(n.server.wait_exit(PATIENCE).0, 1, "requests were cut short");
}

#[test]
fn sigterm_drains_and_exits_0_while_stdin_is_still_open() {
    let mut n = node(&[]);
    n.send(&[request(2, 300)]);
    n.server.wait_admitted(1);
    n.server.signal(libc::SIGTERM);
    assert_eq!(kind(&n.recv_json()), ("tcp_request_ok".into(), 2));
    let (code, _) = n.server.wait_exit(PATIENCE);
    assert_eq!(code, 0, "stdin was never closed");
}

#[test]
fn a_second_sigint_cuts_short_and_exits_1() {
    let mut n = node(&[]);
    n.send(&[request(2, 10_000)]);
    n.server.wait_admitted(1);
    n.server.signal(libc::SIGINT);
    n.server.wait_for_log("draining server");
    let second = Instant::now();
    n.server.signal(libc::SIGINT);
    let v = n.recv_json();
    assert_eq!(kind(&v), ("tcp_request_error".into(), 2));
    assert_eq!(v["body"]["error"], "shutdown_forced");
    let (code, exited) = n.server.wait_exit(PATIENCE);
    assert_eq!(code, 1);
    assert!(exited - second < Duration::from_millis(800));
}

#[test]
fn sigquit_cuts_short_and_exits_1() {
    let mut n = node(&[]);
    n.send(&[request(2, 10_000)]);
    n.server.wait_admitted(1);
    n.server.signal(libc::SIGQUIT);
    assert_eq!(n.recv_json()["body"]["error"], "shutdown_forced");
    assert_eq!(n.server.wait_exit(PATIENCE).0, 1);
}

#[test]
fn malformed_lines_are_logged_use_no_msg_id_and_messages_before_init_use_dest() {
    let mut n = node(&[]);
    n.send(&[
        "not json".into(),
        String::new(),
        r#"{"dest": "n1", "body": {"type": "tcp_request", "msg_id": 1}}"#.into(),
        r#"{"src": "c1", "dest": "n1", "body": {"msg_id": 1}}"#.into(),
        r#"{"src": "c1", "dest": "n9", "body": {"type": "tcp_request", "msg_id": 7}}"#.into(),
    ]);
    assert_eq!(
        n.recv().0,
        r#"{"src": "n9", "dest": "c1", "body": {"type": "tcp_request_ok", "in_reply_to": 7, "result": "processed", "duration_ms": 0, "msg_id": 0}}"#
    );
    n.server.wait_for_log("malformed line");
}

#[test]
fn unknown_types_and_bad_fields_get_error_replies() {
    let mut n = node(&[]);
    n.send(&[
        init(),
        msg("echo", 2, ""),
        msg("tcp_request", 3, r#""latency_ms": -5"#),
        msg("tcp_request", 4, r#""latency_ms": 600001"#),
        msg("tcp_request", 5, r#""latency_ms": 1.5"#),
        msg("tcp_shutdown", 6, r#""drain_timeout_ms": "soon""#),
    ]);
    n.recv();
    assert_eq!(
        n.recv().0,
        r#"{"src": "n1", "dest": "c1", "body": {"type": "error", "code": 10, "text": "message type 'echo' is not supported", "in_reply_to": 2, "msg_id": 1}}"#
    );
    for id in [3, 4, 5] {
        let v = n.recv_json();
        assert_eq!(kind(&v), ("error".into(), id));
        assert_eq!(v["body"]["code"], 12);
        assert!(v["body"]["text"].as_str().unwrap().contains("latency_ms"));
    }
    let v = n.recv_json();
    assert_eq!(
        (v["body"]["code"].clone(), v["body"]["in_reply_to"].clone()),
        (12.into(), 6.into())
    );
    assert!(v["body"]["text"]
        .as_str()
        .unwrap()
        .contains("drain_timeout_ms"));
    // The bad shutdown was not taken: requests are still processed.
    n.send(&[request(7, 10)]);
    assert_eq!(kind(&n.recv_json()), ("tcp_request_ok".into(), 7));
    assert!(n.silent_for(Duration::from_millis(100)));
}

#[test]
fn a_burst_of_2000_requests_of_20_ms_is_answered_within_1_5_s() {
    let mut n = node(&[]);
    let lines: Vec<String> = (1..=2000).map(|i| request(i, 20)).collect();
    let sent = n.send(&lines);
    let mut seen = Vec::with_capacity(2000);
    let mut last = sent;
    for _ in 0..2000 {
        let (line, at) = n.recv();
        let v: Value = serde_json::from_str(&line).unwrap();
        seen.push(v["body"]["msg_id"].as_u64().unwrap());
        assert_eq!(v["body"]["type"], "tcp_request_ok");
        last = at;
    }
    assert!(
        last - sent < Duration::from_millis(1500),
        "all answered in {:?}",
        last - sent
    );
    assert_eq!(
        seen,
        (0..2000).collect::<Vec<u64>>(),
        "msg_ids count up from 0"
    );
}
