use super::*;

#[test]
fn metadata_of_a_clone_changes_alone() {
    let a = Message::new("x").with_metadata("k", "1");
    let mut b = a.clone();
    b.metadata.set("k", "2");
    b.metadata.set("new", "v");
    assert_eq!(a.metadata.get("k"), "1");
    assert!(!a.metadata.contains("new"));
    let mut c = a.clone();
    assert_eq!(c.metadata.remove("k").as_deref(), Some("1"));
    assert_eq!(c.metadata.remove("k"), None);
    assert_eq!(a.metadata.len(), 1);
    assert!(c.metadata.is_empty());
    assert_eq!(c.metadata, Metadata::new());
    assert_eq!(
        a.metadata.clone().into_iter().collect::<Vec<_>>(),
        [("k".to_string(), "1".to_string())]
    );
}

#[test]
fn ack_and_nack_are_idempotent_and_exclusive() {
    let m = Message::new("x");
    assert_eq!(m.ack_state(), AckState::Pending);
    assert!(m.ack());
    assert!(m.ack(), "ack twice is still acked");
    assert!(!m.nack(), "nack after ack is refused");
    assert_eq!(m.ack_state(), AckState::Acked);

    let n = Message::new("y");
    assert!(n.nack());
    assert!(n.nack());
    assert!(!n.ack(), "ack after nack is refused");
    assert_eq!(n.ack_state(), AckState::Nacked);
}

#[test]
fn clone_shares_delivery_copy_does_not() {
    let m = Message::new("x").with_metadata("k", "v");
    let c = m.clone();
    assert!(c.ack());
    assert_eq!(m.ack_state(), AckState::Acked);
    let copy = m.copy();
    assert_eq!(copy, m, "copy has equal content");
    assert_eq!(copy.ack_state(), AckState::Pending);
    assert!(!copy.same_delivery(&m));
}

#[test]
fn equality_compares_uuid_metadata_payload() {
    let a = Message::with_uuid("1", "p").with_metadata("a", "b");
    let b = Message::with_uuid("1", "p").with_metadata("a", "b");
    assert_eq!(a, b);
    assert_ne!(a, Message::with_uuid("2", "p").with_metadata("a", "b"));
    assert_ne!(a, Message::with_uuid("1", "q").with_metadata("a", "b"));
    assert_ne!(a, Message::with_uuid("1", "p"));
}

#[test]
fn metadata_get_returns_empty_when_missing() {
    let mut md = Metadata::new();
    assert_eq!(md.get("nope"), "");
    md.set("k", "v");
    assert_eq!(md.get("k"), "v");
    assert_eq!(md.remove("k").as_deref(), Some("v"));
    assert!(md.is_empty());
}

#[tokio::test]
async fn context_is_cancelled_on_ack_and_waiters_wake() {
    let m = Message::new("x");
    let waiter = {
        let m = m.clone();
        tokio::spawn(async move { m.settled().await })
    };
    assert!(!m.context().is_cancelled());
    m.ack();
    assert!(m.context().is_cancelled());
    assert_eq!(waiter.await.unwrap(), AckState::Acked);
    assert!(m.acked().await);

    let n = Message::new("y");
    n.nack();
    assert!(n.context().is_cancelled());
    assert!(n.nacked().await);
}

#[tokio::test]
async fn the_token_is_cancelled_whether_asked_for_before_or_after_the_settlement() {
    let before = Message::new("x");
    let token = before.context().cancellation().clone();
    assert!(!token.is_cancelled());
    before.ack();
    assert!(
        token.is_cancelled(),
        "a token made before the ack is cancelled by it"
    );

    let after = Message::new("y");
    after.nack();
    assert!(after.context().cancellation().is_cancelled());
    // A child made after the settlement starts cancelled too.
    let child = after.context().with_timeout(Duration::from_secs(60));
    assert!(child.is_cancelled());
    child.cancellation().cancelled().await;
}

#[test]
fn cancelling_the_context_leaves_the_delivery_pending() {
    let m = Message::new("x");
    m.context().cancellation().cancel();
    assert!(m.context().is_cancelled());
    assert_eq!(m.ack_state(), AckState::Pending);
    assert!(m.ack(), "still settles");
}

#[test]
fn a_token_made_while_another_thread_settles_ends_cancelled() {
    for _ in 0..2_000 {
        let m = Message::new("x");
        let settler = {
            let m = m.clone();
            std::thread::spawn(move || m.ack())
        };
        let token = m.context().cancellation().clone();
        settler.join().unwrap();
        assert!(token.is_cancelled());
    }
}

#[tokio::test(start_paused = true)]
async fn with_timeout_keeps_the_sooner_deadline_and_leaves_parent_alone() {
    let m = Message::new("x");
    let child = m.context().with_timeout(Duration::from_secs(1));
    assert!(m.context().deadline().is_none());
    let grandchild = child.with_timeout(Duration::from_secs(10));
    assert_eq!(grandchild.deadline(), child.deadline());
    child.cancellation().cancel();
    assert!(!m.context().is_cancelled());
}
