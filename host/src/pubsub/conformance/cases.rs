//! The cases of the suite, one function per Watermill test, each skipped (`Outcome::Skipped`) when the backend does not promise what it checks.

use super::*;

/// 100 messages with metadata arrive intact.
pub async fn publish_subscribe<H: Harness>(h: &H) -> Outcome {
    let f = h.features();
    let (publisher, subscriber) = pubsub(h).await;
    let topic = unique_topic("publish_subscribe");
    let msgs = messages(100, "ps");
    let mut sub = subscribe_and_publish(&publisher, &subscriber, &topic, &msgs, f.persistent).await;
    let got = bulk_read(&mut sub, msgs.len(), TIMEOUT).await;
    assert_all_received(&msgs, &got, f.exactly_once);
    drop(sub);
    close_both(&publisher, &subscriber).await;
    Outcome::Passed
}

/// Many publishers at once; one subscription reads everything.
pub async fn concurrent_subscribe<H: Harness>(h: &H) -> Outcome {
    let f = h.features();
    let (publisher, subscriber) = pubsub(h).await;
    let topic = unique_topic("concurrent_subscribe");
    subscriber.subscribe_initialize(&topic).await.unwrap();
    let mut sub = subscriber.subscribe(&topic).await.unwrap();
    let msgs = messages(1000, "cs");
    let mut tasks = Vec::new();
    for chunk in msgs.chunks(50) {
        let publisher = publisher.clone();
        let topic = topic.clone();
        let chunk: Vec<Message> = chunk.iter().map(Message::copy).collect();
        tasks.push(tokio::spawn(async move {
            publisher.publish(&topic, chunk).await
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("concurrent publish");
    }
    let got = bulk_read(&mut sub, msgs.len(), TIMEOUT).await;
    assert_all_received(&msgs, &got, f.exactly_once);
    drop(sub);
    close_both(&publisher, &subscriber).await;
    Outcome::Passed
}

/// 20 topics of 20 messages each, read concurrently.
pub async fn concurrent_subscribe_multiple_topics<H: Harness>(h: &H) -> Outcome {
    let f = h.features();
    let (publisher, subscriber) = pubsub(h).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let publisher = publisher.clone();
        let subscriber = subscriber.clone();
        tasks.push(tokio::spawn(async move {
            let topic = unique_topic(&format!("multi_{i}"));
            let msgs = messages(20, &format!("multi{i}"));
            let mut sub =
                subscribe_and_publish(&publisher, &subscriber, &topic, &msgs, f.persistent).await;
            let got = bulk_read(&mut sub, msgs.len(), TIMEOUT).await;
            assert_all_received(&msgs, &got, f.exactly_once);
        }));
    }
    for t in tasks {
        t.await.expect("a topic's reader failed");
    }
    close_both(&publisher, &subscriber).await;
    Outcome::Passed
}

/// Nacking the first messages received does not lose them.
pub async fn resend_on_error<H: Harness>(h: &H) -> Outcome {
    let f = h.features();
    let (publisher, subscriber) = pubsub(h).await;
    let topic = unique_topic("resend_on_error");
    let msgs = messages(50, "resend");
    let mut sub = subscribe_and_publish(&publisher, &subscriber, &topic, &msgs, f.persistent).await;
    let mut nacked = 0;
    while nacked < 2 {
        let m = tokio::time::timeout(TIMEOUT, sub.recv())
            .await
            .expect("timeout waiting for a message to nack")
            .expect("stream ended");
        assert!(m.nack());
        nacked += 1;
    }
    let got = bulk_read(&mut sub, msgs.len(), TIMEOUT).await;
    assert_all_received(&msgs, &got, false);
    drop(sub);
    close_both(&publisher, &subscriber).await;
    Outcome::Passed
}

/// While a message is unacked, an ordered backend delivers nothing else.
pub async fn no_ack<H: Harness>(h: &H) -> Outcome {
    let f = h.features();
    if !(f.guaranteed_order || f.guaranteed_order_with_single_subscriber) {
        return Outcome::Skipped("no guaranteed order");
    }
    let (publisher, subscriber) = pubsub(h).await;
    let topic = unique_topic("no_ack");
    let msgs = messages(2, "noack");
    let mut sub = subscribe_and_publish(&publisher, &subscriber, &topic, &msgs, f.persistent).await;
    let first = tokio::time::timeout(TIMEOUT, sub.recv())
        .await
        .expect("first message")
        .expect("stream ended");
    assert_eq!(first.uuid, msgs[0].uuid);
    let early = tokio::time::timeout(Duration::from_millis(100), sub.recv()).await;
    assert!(
        early.is_err(),
        "a second message arrived before the first was acked"
    );
    assert!(first.ack());
    let second = tokio::time::timeout(TIMEOUT, sub.recv())
        .await
        .expect("second message after ack")
        .expect("stream ended");
    assert_eq!(second.uuid, msgs[1].uuid);
    second.ack();
    drop(sub);
    close_both(&publisher, &subscriber).await;
    Outcome::Passed
}

/// Subscriptions that end mid-way lose nothing: a later one reads what was left.
pub async fn continue_after_subscribe_close<H: Harness>(h: &H) -> Outcome {
    let f = h.features();
    if !f.persistent {
        return Outcome::Skipped("not persistent");
    }
    let (publisher, subscriber) = pubsub(h).await;
    let topic = unique_topic("continue_after_close");
    let msgs = messages(500, "cac");
    subscriber.subscribe_initialize(&topic).await.unwrap();
    publish_all(&publisher, &topic, &msgs).await;
    let mut seen: HashMap<String, Message> = HashMap::new();
    for _batch in 0..50 {
        if seen.len() >= msgs.len() {
            break;
        }
        // A fresh subscriber each time, unless the backend lives in one instance.
        let sub_side = if f.require_single_instance {
            subscriber.clone()
        } else {
            pubsub(h).await.1
        };
        let mut sub = sub_side.subscribe(&topic).await.unwrap();
        for m in bulk_read(&mut sub, 50, Duration::from_secs(5)).await {
            seen.insert(m.uuid.clone(), m);
        }
        drop(sub);
        if !f.require_single_instance {
            sub_side.close().await.unwrap();
        }
    }
    let got: Vec<Message> = seen.into_values().collect();
    assert_all_received(&msgs, &got, false);
    close_both(&publisher, &subscriber).await;
    Outcome::Passed
}

/// Creating and closing subscribers concurrently leaves the backend usable.
pub async fn concurrent_close<H: Harness>(h: &H) -> Outcome {
    let f = h.features();
    let topic = unique_topic("concurrent_close");
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (publisher, subscriber) = h
            .pubsub_to_close()
            .await
            .expect("harness: create pub/sub to close");
        let topic = topic.clone();
        tasks.push(tokio::spawn(async move {
            subscriber.subscribe_initialize(&topic).await.unwrap();
            let sub = subscriber.subscribe(&topic).await.unwrap();
            close_both(&publisher, &subscriber).await;
            drop(sub);
        }));
    }
    for t in tasks {
        t.await.expect("concurrent close");
    }
    let (publisher, subscriber) = pubsub(h).await;
    let msgs = messages(50, "cc");
    let mut sub = subscribe_and_publish(&publisher, &subscriber, &topic, &msgs, f.persistent).await;
    let got = bulk_read(&mut sub, msgs.len(), TIMEOUT).await;
    assert_all_received(&msgs, &got, f.exactly_once);
    drop(sub);
    close_both(&publisher, &subscriber).await;
    Outcome::Passed
}

/// Subscriptions that nack many times and go away do not lose messages.
pub async fn continue_after_errors<H: Harness>(h: &H) -> Outcome {
    let f = h.features();
    let (publisher, subscriber) = pubsub(h).await;
    let topic = unique_topic("continue_after_errors");
    let msgs = messages(50, "cae");
    let mut sub = subscribe_and_publish(&publisher, &subscriber, &topic, &msgs, f.persistent).await;
    for _ in 0..5 {
        let m = tokio::time::timeout(TIMEOUT, sub.recv())
            .await
            .expect("a message to nack")
            .expect("stream ended");
        m.nack();
    }
    let got = bulk_read(&mut sub, msgs.len(), TIMEOUT).await;
    assert_all_received(&msgs, &got, false);
    drop(sub);
    close_both(&publisher, &subscriber).await;
    Outcome::Passed
}

/// Messages arrive in publish order.
pub async fn publish_subscribe_in_order<H: Harness>(h: &H) -> Outcome {
    let f = h.features();
    if !(f.guaranteed_order || f.guaranteed_order_with_single_subscriber) {
        return Outcome::Skipped("no guaranteed order");
    }
    let (publisher, subscriber) = pubsub(h).await;
    let topic = unique_topic("in_order");
    let msgs = messages(300, "order");
    let mut sub = subscribe_and_publish(&publisher, &subscriber, &topic, &msgs, f.persistent).await;
    let got = bulk_read(&mut sub, msgs.len(), TIMEOUT).await;
    assert_all_received(&msgs, &got, f.exactly_once);
    // Without exactly-once a redelivery may come later: the order is that of first arrivals.
    let mut first = HashSet::new();
    let got_ids: Vec<&str> = got
        .iter()
        .map(|m| m.uuid.as_str())
        .filter(|id| first.insert(*id))
        .collect();
    let want_ids: Vec<&str> = msgs.iter().map(|m| m.uuid.as_str()).collect();
    assert_eq!(got_ids, want_ids, "messages out of order");
    drop(sub);
    close_both(&publisher, &subscriber).await;
    Outcome::Passed
}

/// With one message in flight, a nacked message comes back before any later one, however
/// far the backend reads ahead.
pub async fn nack_keeps_order<H: Harness>(h: &H) -> Outcome {
    let f = h.features();
    if !(f.guaranteed_order || f.guaranteed_order_with_single_subscriber) {
        return Outcome::Skipped("no guaranteed order");
    }
    let (publisher, subscriber) = pubsub(h).await;
    let topic = unique_topic("nack_order");
    let msgs = messages(20, "nack_order");
    let mut sub = subscribe_and_publish(&publisher, &subscriber, &topic, &msgs, f.persistent).await;
    for (i, expected) in msgs.iter().enumerate() {
        let nacks = if i % 3 == 0 { 2 } else { 0 };
        for attempt in 0..=nacks {
            let m = tokio::time::timeout(TIMEOUT, sub.recv())
                .await
                .unwrap_or_else(|_| panic!("timeout waiting for message {i}"))
                .expect("stream ended");
            assert_eq!(
                m.uuid, expected.uuid,
                "message {i} (attempt {attempt}) out of order"
            );
            if attempt < nacks {
                m.nack();
            } else {
                m.ack();
            }
        }
    }
    drop(sub);
    close_both(&publisher, &subscriber).await;
    Outcome::Passed
}

/// Many publishers publish and close; everything they published arrives.
pub async fn publisher_close<H: Harness>(h: &H) -> Outcome {
    let f = h.features();
    let (main_pub, subscriber) = pubsub(h).await;
    let topic = unique_topic("publisher_close");
    subscriber.subscribe_initialize(&topic).await.unwrap();
    let mut sub = subscriber.subscribe(&topic).await.unwrap();
    let msgs = messages(1000, "pc");
    let mut tasks = Vec::new();
    for chunk in msgs.chunks(100) {
        // Each batch through its own publisher when the backend has a shared server.
        let publisher = if f.require_single_instance {
            main_pub.clone()
        } else {
            pubsub(h).await.0
        };
        let chunk: Vec<Message> = chunk.iter().map(Message::copy).collect();
        let topic = topic.clone();
        let own = !f.require_single_instance;
        tasks.push(tokio::spawn(async move {
            publisher.publish(&topic, chunk).await.expect("publish");
            if own {
                publisher.close().await.expect("close publisher");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let got = bulk_read(&mut sub, msgs.len(), TIMEOUT).await;
    assert_all_received(&msgs, &got, f.exactly_once);
    drop(sub);
    close_both(&main_pub, &subscriber).await;
    Outcome::Passed
}

/// Each topic delivers exactly its own messages.
pub async fn topic<H: Harness>(h: &H) -> Outcome {
    let f = h.features();
    let (publisher, subscriber) = pubsub(h).await;
    let (t1, t2) = (unique_topic("topic_a"), unique_topic("topic_b"));
    let (m1, m2) = (messages(20, "ta"), messages(20, "tb"));
    let mut s1 = subscribe_and_publish(&publisher, &subscriber, &t1, &m1, f.persistent).await;
    let mut s2 = subscribe_and_publish(&publisher, &subscriber, &t2, &m2, f.persistent).await;
    let g1 = bulk_read(&mut s1, m1.len(), TIMEOUT).await;
    let g2 = bulk_read(&mut s2, m2.len(), TIMEOUT).await;
    assert_all_received(&m1, &g1, f.exactly_once);
    assert_all_received(&m2, &g2, f.exactly_once);
    assert!(g1.iter().all(|m| m.metadata.get("test") == "ta"));
    assert!(g2.iter().all(|m| m.metadata.get("test") == "tb"));
    let extra = tokio::time::timeout(Duration::from_millis(200), s1.recv()).await;
    assert!(
        !matches!(extra, Ok(Some(_))),
        "topic a received an extra message"
    );
    drop((s1, s2));
    close_both(&publisher, &subscriber).await;
    Outcome::Passed
}

/// Ack returns true and ends the message's context; closing ends the stream.
pub async fn message_ctx<H: Harness>(h: &H) -> Outcome {
    let f = h.features();
    let (publisher, subscriber) = pubsub(h).await;
    let topic = unique_topic("message_ctx");
    let msgs = messages(2, "ctx");
    let mut sub = subscribe_and_publish(&publisher, &subscriber, &topic, &msgs, f.persistent).await;
    let m = tokio::time::timeout(TIMEOUT, sub.recv())
        .await
        .expect("message")
        .expect("stream ended");
    assert!(!m.context().is_cancelled());
    assert!(m.ack());
    assert!(m.context().is_cancelled(), "context not done after ack");
    close_both(&publisher, &subscriber).await;
    let after_close = tokio::time::timeout(Duration::from_secs(5), async {
        // Drain anything buffered; the stream must end.
        while sub.recv().await.is_some() {}
    })
    .await;
    assert!(after_close.is_ok(), "stream did not end after close");
    Outcome::Passed
}

/// Cancelling a subscription ends its stream; a new subscription reads the rest.
pub async fn subscribe_ctx<H: Harness>(h: &H) -> Outcome {
    let f = h.features();
    let (publisher, subscriber) = pubsub(h).await;
    let topic = unique_topic("subscribe_ctx");
    subscriber.subscribe_initialize(&topic).await.unwrap();
    let mut first = subscriber.subscribe(&topic).await.unwrap();
    first.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(5), first.recv()).await;
    assert!(matches!(ended, Ok(None)), "stream did not end after cancel");
    if !f.persistent {
        close_both(&publisher, &subscriber).await;
        return Outcome::Passed;
    }
    let msgs = messages(20, "sctx");
    publish_all(&publisher, &topic, &msgs).await;
    let mut second = subscriber.subscribe(&topic).await.unwrap();
    let got = bulk_read(&mut second, msgs.len(), TIMEOUT).await;
    assert_all_received(&msgs, &got, f.exactly_once);
    drop(second);
    close_both(&publisher, &subscriber).await;
    Outcome::Passed
}

/// A subscriber that joins late reads messages published before it joined.
pub async fn new_subscriber_receives_old_messages<H: Harness>(h: &H) -> Outcome {
    let f = h.features();
    if !f.new_subscriber_receives_old_messages {
        return Outcome::Skipped("new subscribers do not receive old messages");
    }
    let (publisher, subscriber) = pubsub(h).await;
    let topic = unique_topic("nsrom");
    let msgs = messages(20, "old");
    subscriber.subscribe_initialize(&topic).await.unwrap();
    publish_all(&publisher, &topic, &msgs).await;
    let mut sub = subscriber.subscribe(&topic).await.unwrap();
    let got = bulk_read(&mut sub, msgs.len(), TIMEOUT).await;
    assert_all_received(&msgs, &got, f.exactly_once);
    drop(sub);
    close_both(&publisher, &subscriber).await;
    Outcome::Passed
}

/// A removed topic keeps none of its messages: what is read from it afterwards is only what
/// was published after the removal. Skipped where the backend does not remove topics.
pub async fn remove_topic<H: Harness>(h: &H) -> Outcome {
    let (publisher, subscriber) = pubsub(h).await;
    let topic = unique_topic("remove_topic");
    subscriber.subscribe_initialize(&topic).await.unwrap();
    publish_all(&publisher, &topic, &messages(5, "before")).await;
    if !subscriber.remove_topic(&topic).await.unwrap() {
        close_both(&publisher, &subscriber).await;
        return Outcome::Skipped("the backend does not remove topics");
    }
    assert!(
        !subscriber.remove_topic(&topic).await.unwrap(),
        "a second removal found something to remove"
    );
    subscriber.subscribe_initialize(&topic).await.unwrap();
    let after = messages(2, "after");
    publish_all(&publisher, &topic, &after).await;
    let mut sub = subscriber.subscribe(&topic).await.unwrap();
    let got = bulk_read(&mut sub, after.len(), TIMEOUT).await;
    assert_all_received(&after, &got, false);
    let more = tokio::time::timeout(Duration::from_secs(1), sub.recv()).await;
    assert!(
        !matches!(more, Ok(Some(_))),
        "a message published before the removal was read: {:?}",
        more.ok().flatten().map(|m| m.payload)
    );
    drop(sub);
    subscriber.remove_topic(&topic).await.unwrap();
    close_both(&publisher, &subscriber).await;
    Outcome::Passed
}

/// Two consumer groups each receive every message.
pub async fn consumer_groups<H: Harness>(h: &H) -> Outcome {
    let f = h.features();
    if !f.consumer_groups {
        return Outcome::Skipped("no consumer groups");
    }
    let (publisher, _) = pubsub(h).await;
    let topic = unique_topic("consumer_groups");
    let g1 = h
        .subscriber_in_group(&unique_topic("group_a"))
        .await
        .unwrap();
    let g2 = h
        .subscriber_in_group(&unique_topic("group_b"))
        .await
        .unwrap();
    g1.subscribe_initialize(&topic).await.unwrap();
    g2.subscribe_initialize(&topic).await.unwrap();
    let mut s1 = g1.subscribe(&topic).await.unwrap();
    let mut s2 = g2.subscribe(&topic).await.unwrap();
    let msgs = messages(50, "cg");
    publish_all(&publisher, &topic, &msgs).await;
    let (r1, r2) = tokio::join!(
        bulk_read(&mut s1, msgs.len(), TIMEOUT),
        bulk_read(&mut s2, msgs.len(), TIMEOUT)
    );
    assert_all_received(&msgs, &r1, f.exactly_once);
    assert_all_received(&msgs, &r2, f.exactly_once);
    drop((s1, s2));
    g1.close().await.unwrap();
    g2.close().await.unwrap();
    publisher.close().await.unwrap();
    Outcome::Passed
}

/// 10,000 messages while the server goes away twice; none lost. The server is one the test
/// owns ([`Harness::owned_pubsub`]): a private instance that restarts, or a proxy that cuts
/// every connection. The first outage comes while 3,000 messages wait unread (they must
/// survive it), the second while the subscription reads.
pub async fn reconnect<H: Harness>(h: &H) -> Outcome {
    let Some(owned) = h.owned_pubsub().await.expect("harness: owned pub/sub") else {
        return Outcome::Skipped("no server of its own to lose");
    };
    let OwnedPubSub {
        publisher,
        subscriber,
        mut outage,
    } = owned;
    let topic = unique_topic("reconnect");
    subscriber.subscribe_initialize(&topic).await.unwrap();
    let mut sub = subscriber.subscribe(&topic).await.unwrap();
    let msgs = messages(10_000, "rc");
    let (start_reading, go) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        let _ = go.await;
        let got = bulk_read(&mut sub, 10_000, Duration::from_secs(240)).await;
        (sub, got)
    });
    let mut start_reading = Some(start_reading);
    for (i, chunk) in msgs.chunks(100).enumerate() {
        if i == 30 || i == 70 {
            outage
                .go_away_and_come_back()
                .await
                .unwrap_or_else(|e| panic!("outage before chunk {i}: {}", e.report()));
            if let Some(start) = start_reading.take() {
                let _ = start.send(());
            }
        }
        // Publishing may fail while the server is away: retry, as a producer would.
        let mut attempt = 0;
        loop {
            match publisher
                .publish(&topic, chunk.iter().map(Message::copy).collect())
                .await
            {
                Ok(()) => break,
                Err(e) if attempt < 120 => {
                    attempt += 1;
                    tracing::debug!("publish after an outage failed, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => panic!("publish never recovered after the outage: {e}"),
            }
        }
    }
    let (sub, got) = reader.await.unwrap();
    assert_all_received(&msgs, &got, false);
    drop(sub);
    close_both(&publisher, &subscriber).await;
    drop(outage);
    Outcome::Passed
}

/// A message published with a delay of a second comes no sooner than it is due, and after a
/// message published later without one.
pub async fn delay<H: Harness>(h: &H) -> Outcome {
    if !h.features().delays {
        return Outcome::Skipped("the backend does not delay messages");
    }
    let (publisher, subscriber) = pubsub(h).await;
    let topic = unique_topic("delay");
    subscriber.subscribe_initialize(&topic).await.unwrap();
    let mut sub = subscriber.subscribe(&topic).await.unwrap();
    let mut later = Message::with_uuid(format!("later-{topic}"), "later");
    crate::pubsub::delay::delay_for(&mut later, Duration::from_secs(1));
    let due = crate::pubsub::delay::due(&later).expect("a due time");
    publish_all(&publisher, &topic, std::slice::from_ref(&later)).await;
    let now = Message::with_uuid(format!("now-{topic}"), "now");
    publish_all(&publisher, &topic, std::slice::from_ref(&now)).await;
    for expected in [&now, &later] {
        let got = tokio::time::timeout(TIMEOUT, sub.recv())
            .await
            .unwrap_or_else(|_| panic!("{} did not arrive", expected.uuid))
            .expect("subscription open");
        assert_eq!(got.uuid, expected.uuid, "the undelayed message comes first");
        assert_eq!(got.payload, expected.payload);
        got.ack();
    }
    assert!(
        std::time::SystemTime::now() >= due,
        "the delayed message came before it was due"
    );
    drop(sub);
    close_both(&publisher, &subscriber).await;
    Outcome::Passed
}
