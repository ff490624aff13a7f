use super::*;

/// A delivery state over a client whose event loop is never polled: its request queue
/// takes the PUBACKs (a PUBACK went out when the front moved past the message).
fn state() -> (DeliveryState, EventLoop) {
    let (client, eventloop) = AsyncClient::new(MqttOptions::new("test", "localhost", 1), 64);
    let mut st = DeliveryState::default();
    st.connected(client);
    for pkid in 1..=4u16 {
        st.received(publish(pkid));
    }
    (st, eventloop)
}

/// A QoS 1 PUBLISH with packet id `pkid` and payload `m{pkid}`.
fn publish(pkid: u16) -> Publish {
    let mut p = Publish::new("t", QoS::AtLeastOnce, format!("m{pkid}"), None);
    p.pkid = pkid;
    p
}

fn take(st: &mut DeliveryState, consumer: u64, max: usize) -> Option<Message> {
    st.take(consumer, max, &Arc::new(Notify::new())).ok()
}

fn payload(m: &Message) -> &[u8] {
    &m.payload
}

/// What a consumer does before it waits: settles its deliveries and queues the PUBACKs.
fn settle(st: &mut DeliveryState, consumer: u64) {
    st.reap(consumer, false);
    st.send_or_hold_acks(true);
}

/// Takes, acks and reaps the next message, as a busy consumer's next call does.
fn handle_next(st: &mut DeliveryState) {
    take(st, 1, 1).unwrap().ack();
    st.reap(1, false);
}

#[test]
fn a_busy_consumer_holds_pubacks_back_until_a_batch_is_due() {
    let (mut st, _el) = state();
    for pkid in 5..=(ACK_BATCH as u16 + 8) {
        st.received(publish(pkid));
    }
    st.register(1);
    handle_next(&mut st);
    assert!(
        st.send_or_hold_acks(false),
        "the first held: the session is told"
    );
    assert_eq!(st.front_seq, 0, "held back");
    for _ in 1..ACK_BATCH - 1 {
        handle_next(&mut st);
        assert!(!st.send_or_hold_acks(false), "told once");
    }
    assert_eq!(st.front_seq, 0, "still held back");
    handle_next(&mut st);
    assert!(!st.send_or_hold_acks(false));
    assert_eq!(st.front_seq, ACK_BATCH as u64, "a batch queued at once");
    handle_next(&mut st);
    assert!(st.send_or_hold_acks(false), "the next batch starts");
}

#[test]
fn held_pubacks_go_out_when_the_consumer_waits_or_the_hold_ends() {
    let (mut st, _el) = state();
    st.register(1);
    handle_next(&mut st);
    assert!(st.send_or_hold_acks(false));
    assert!(!st.send_or_hold_acks(true));
    assert_eq!(st.front_seq, 1, "queued before waiting");

    handle_next(&mut st);
    assert!(st.send_or_hold_acks(false));
    std::thread::sleep(ACK_HOLD * 2);
    handle_next(&mut st);
    assert!(!st.send_or_hold_acks(false));
    assert_eq!(st.front_seq, 3, "the first waited ACK_HOLD: both queued");
}

#[test]
fn the_session_sends_what_a_consumer_holds_back() {
    let (st, _el) = state();
    let delivery = Delivery {
        state: Mutex::new(st),
        ..Delivery::default()
    };
    delivery.lock().register(1);
    handle_next(&mut delivery.lock());
    assert!(delivery.lock().send_or_hold_acks(false));
    delivery.flush_held();
    assert_eq!(delivery.lock().front_seq, 1);
}

#[test]
fn pubacks_leave_in_the_order_received_whatever_the_order_of_acks() {
    let (mut st, _el) = state();
    st.register(1);
    let a = take(&mut st, 1, 2).unwrap();
    let b = take(&mut st, 1, 2).unwrap();
    assert!(take(&mut st, 1, 2).is_none(), "max_in_flight holds");
    b.ack();
    settle(&mut st, 1);
    assert_eq!(st.front_seq, 0, "the second waits for the first");
    a.ack();
    settle(&mut st, 1);
    assert_eq!(st.front_seq, 2);
    assert_eq!(payload(&take(&mut st, 1, 2).unwrap()), b"m3");
}

#[test]
fn a_nacked_message_comes_back_first_with_its_uuid() {
    let (mut st, _el) = state();
    st.register(1);
    let first = take(&mut st, 1, 1).unwrap();
    let uuid = first.uuid.clone();
    first.nack();
    st.reap(1, false);
    let again = take(&mut st, 1, 1).unwrap();
    assert_eq!(payload(&again), b"m1");
    assert_eq!(
        again.uuid, uuid,
        "a message without a uuid keeps the one it was given"
    );
    assert_eq!(again.ack_state(), AckState::Pending, "a fresh delivery");
    again.ack();
    st.reap(1, false);
    assert_eq!(payload(&take(&mut st, 1, 1).unwrap()), b"m2");
}

#[test]
fn a_delayed_nack_holds_back_later_messages_until_due() {
    let (mut st, _el) = state();
    st.register(1);
    let first = take(&mut st, 1, 4).unwrap();
    first.set_redelivery_delay(Duration::from_secs(60));
    first.nack();
    st.reap(1, false);
    match st.take(1, 4, &Arc::new(Notify::new())) {
        Err(Some(at)) => assert!(at > Instant::now()),
        other => panic!("expected a wait, got {other:?}"),
    }
}

#[test]
fn a_consumer_that_leaves_hands_what_it_did_not_settle_to_the_others() {
    let (mut st, _el) = state();
    st.register(1);
    st.register(2);
    let kept = take(&mut st, 1, 2).unwrap();
    let done = take(&mut st, 1, 2).unwrap();
    done.ack();
    assert!(st.reap(1, true));
    st.flush_acks();
    assert!(!st.reap(1, false), "unregistered");
    let again = take(&mut st, 2, 1).unwrap();
    assert_eq!(payload(&again), payload(&kept));
    assert_eq!(st.front_seq, 0, "the acked second waits for the first");
    again.ack();
    settle(&mut st, 2);
    assert_eq!(st.front_seq, 2, "both PUBACKed, in order");
}

#[test]
fn a_lost_connection_forgets_what_it_delivered() {
    let (mut st, _el) = state();
    st.register(1);
    let m = take(&mut st, 1, 1).unwrap();
    st.lost();
    m.ack();
    assert!(st.reap(1, false));
    assert!(
        take(&mut st, 1, 1).is_none(),
        "nothing left: the broker sends it again"
    );
    st.received(publish(9));
    assert_eq!(payload(&take(&mut st, 1, 1).unwrap()), b"m9");
}
