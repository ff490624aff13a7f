//! Publishing: the confirm-mode channel, the exchanges declared on it, and messages as AMQP properties and back.

use super::*;

/// The publishing channel (confirm mode) and the exchanges declared on it.
#[derive(Clone)]
pub(super) struct PubChannel {
    pub(super) channel: Channel,
    pub(super) declared: Arc<std::sync::Mutex<HashSet<String>>>,
}

impl PubChannel {
    pub(super) fn is_declared(&self, topic: &str) -> bool {
        self.declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(topic)
    }

    pub(super) fn mark_declared(&self, topic: &str) {
        self.declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.to_string());
    }

    pub(super) fn forget_declared(&self, topic: &str) {
        self.declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(topic);
    }
}

/// The publisher's connection and channel.
pub(super) struct PublishSide {
    pub(super) link: Link,
    pub(super) channel: Mutex<Option<PubChannel>>,
}

impl PublishSide {
    pub(super) async fn channel(&self) -> Result<PubChannel> {
        let mut slot = self.channel.lock().await;
        if let Some(pc) = slot.as_ref()
            && pc.channel.status().connected()
        {
            return Ok(pc.clone());
        }
        *slot = None;
        let conn = self.link.get().await?;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| lerr("open publishing channel", e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| lerr("enable publisher confirms", e))?;
        let pc = PubChannel {
            channel,
            declared: Arc::default(),
        };
        *slot = Some(pc.clone());
        Ok(pc)
    }

    /// Forgets that `topic`'s exchange was declared (it was deleted): the next publish
    /// declares it again.
    pub(super) async fn forget(&self, topic: &str) {
        if let Some(pc) = self.channel.lock().await.as_ref() {
            pc.forget_declared(topic);
        }
    }

    pub(super) async fn close(&self) {
        // Closed before the connection: a channel merely dropped asks lapin to close it in
        // the background, and that close then meets the connection's own and fails
        // ("invalid channel state: Closing"), which lapin logs as a connection error.
        if let Some(pc) = self.channel.lock().await.take() {
            close_channel(&pc.channel).await;
        }
        self.link.close().await;
    }
}
#[async_trait]
impl Publisher for AmqpPubSub {
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        if self.closed.is_cancelled() {
            return Err(closed(NAME));
        }
        if messages.is_empty() {
            return Ok(());
        }
        let properties = messages
            .iter()
            .map(|m| properties(m, self.config.durable))
            .collect::<Result<Vec<_>>>()?;
        tokio::time::timeout(
            self.config.publish_timeout,
            self.publish_confirmed(topic, &messages, properties),
        )
        .await
        .map_err(|_| {
            Error::pubsub_msg(
                NAME,
                format!(
                    "publish to {topic}: not confirmed within {:?}",
                    self.config.publish_timeout
                ),
            )
        })?
    }

    async fn close(&self) -> Result<()> {
        self.closed.cancel();
        // Ended subscriptions ack what their consumers settled before the connection closes
        // (else the last acks fail and the broker delivers those messages again).
        self.tasks.close();
        if tokio::time::timeout(ACK_TIMEOUT, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("amqp: acks still unsent at close (the broker redelivers them)");
        }
        if !self.tail {
            self.publishing.close().await;
        }
        self.consuming.close().await;
        Ok(())
    }

    fn name(&self) -> &'static str {
        NAME
    }
}
/// The AMQP properties carrying `m`'s uuid and metadata; `persistent` sets delivery mode 2.
pub(crate) fn properties(m: &Message, persistent: bool) -> Result<BasicProperties> {
    let mut headers = FieldTable::default();
    for (k, v) in m.metadata.iter() {
        headers.insert(short("metadata key", k)?, AMQPValue::LongString(v.into()));
    }
    headers.insert(
        UUID_HEADER.into(),
        AMQPValue::LongString(m.uuid.as_str().into()),
    );
    let props = BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(if persistent { 2 } else { 1 });
    Ok(match ShortString::try_new(m.uuid.as_str()) {
        Ok(id) => props.with_message_id(id),
        Err(_) => props,
    })
}

/// A header value as text (what a Wasmill or Watermill publisher writes is a string).
pub(super) fn header_text(v: &AMQPValue) -> Option<String> {
    Some(match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        _ => return None,
    })
}

pub(super) fn to_message(properties: &BasicProperties, data: Vec<u8>) -> Message {
    let mut uuid = properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned())
        .unwrap_or_default();
    let mut metadata = Metadata::new();
    if let Some(headers) = properties.headers() {
        for (k, v) in headers {
            let Some(text) = header_text(v) else { continue };
            if k.as_str() == UUID_HEADER {
                uuid = text;
            } else {
                metadata.set(k.as_str(), text);
            }
        }
    }
    let mut msg = Message::with_uuid(uuid, Bytes::from(data));
    msg.metadata = metadata;
    msg
}
