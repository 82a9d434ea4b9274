use std::time::Duration;

use crate::node::Event;
use crate::node::tests_support::Pair;

use super::Event as PingEvent;

#[test]
fn periodic_pings_measure_rtt() {
    let mut pair = Pair::new(Duration::from_millis(20));
    pair.handshake();
    pair.run_for(Duration::from_secs(1));
    let a_rtt = pair.a.peer(&pair.b.peer_id()).and_then(|p| p.rtt);
    assert_eq!(a_rtt, Some(Duration::from_millis(40)));
    let pongs = pair
        .a_events
        .iter()
        .filter(|e| matches!(e, Event::Ping(PingEvent::Pong { .. })))
        .count();
    assert_eq!(
        pongs, 1,
        "one periodic ping in the first second: {:?}",
        pair.a_events
    );
}

#[test]
fn unanswered_ping_times_out() {
    let mut pair = Pair::new(Duration::from_millis(5));
    pair.handshake();
    pair.drop_b_to_a = true;
    let nonce = pair.a.ping(pair.now, pair.b.peer_id()).unwrap();
    pair.run_for(Duration::from_secs(11));
    assert!(
        pair.a_events.iter().any(|e| *e
            == Event::Ping(PingEvent::Timeout {
                peer: pair.b.peer_id(),
                nonce
            })),
        "{:?}",
        pair.a_events
    );
}

#[test]
fn in_flight_limit_enforced() {
    let mut pair = Pair::new(Duration::from_millis(5));
    pair.handshake();
    let b = pair.b.peer_id();
    // The periodic ping may already be in flight; either way the ninth is refused.
    let mut sent = 0;
    while pair.a.ping(pair.now, b).is_ok() {
        sent += 1;
        assert!(sent <= 8);
    }
    assert_eq!(
        pair.a.ping(pair.now, b),
        Err(super::PingError::TooManyOutstanding(8))
    );
}

#[test]
fn without_periodic_pings_a_ping_on_demand_still_works() {
    use crate::node::tests_support::{test_config, test_node};
    let mut config = test_config();
    config.ping.interval = None;
    let mut pair = Pair::with_nodes(
        test_node(1, config.clone()),
        test_node(2, config),
        Duration::from_millis(20),
    );
    pair.handshake();
    pair.run_for(Duration::from_secs(30));
    let b = pair.b.peer_id();
    assert!(
        !pair.a_events.iter().any(|e| matches!(e, Event::Ping(_))),
        "no periodic pings"
    );
    pair.a.ping(pair.now, b).unwrap();
    pair.drain();
    pair.run_for(Duration::from_secs(1));
    assert_eq!(
        pair.a.peer(&b).and_then(|p| p.rtt),
        Some(Duration::from_millis(40))
    );
    let stranger = test_node(9, test_config()).peer_id();
    assert_eq!(
        pair.a.ping(pair.now, stranger),
        Err(super::PingError::NotConnected(stranger))
    );
}
