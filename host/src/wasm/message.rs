//! 0.2.0's `message` resource: a message held by the host in the store's resource table,
//! which the guest reads and changes through method calls. A pass-through returns the handle
//! it got, so neither the payload nor the metadata crosses into the guest's memory.

use bytes::Bytes;
use wasmtime::component::Resource;

use super::bindings::handler2::wasmill::plugin::{host, types};
use super::bindings::middleware2;
use super::state::PluginState;
use crate::error::{ErrorKind, HandlerError};
use crate::message::{Message, Metadata, new_uuid};

/// What a `message` handle stands for: the parts a guest may read and change. The delivery,
/// context and route stay with the router's message; `next` puts them back (`pass_on`).
#[derive(Debug, Clone, Default)]
pub struct MessageRep {
    /// The identifier; empty means "give it a fresh one" when it leaves the guest.
    pub uuid: String,
    /// The metadata, shared copy-on-write with the message it came from.
    pub metadata: Metadata,
    /// The body, shared with the message it came from.
    pub payload: Bytes,
}

impl MessageRep {
    /// The parts of `m`: no copy of the metadata or payload.
    pub fn of(m: &Message) -> Self {
        MessageRep {
            uuid: m.uuid.clone(),
            metadata: m.metadata.clone(),
            payload: m.payload.clone(),
        }
    }

    /// A new host message (its own delivery) with these parts; an empty uuid gets a fresh one.
    pub fn into_message(self) -> Message {
        let uuid = if self.uuid.is_empty() {
            new_uuid()
        } else {
            self.uuid
        };
        let mut m = Message::with_uuid(uuid, self.payload);
        m.metadata = self.metadata;
        m
    }
}

/// At most this many messages may be alive in one instance (the guest's handles, not yet
/// dropped or handed back): they live in host memory, outside the guest's memory cap.
pub const MAX_LIVE_MESSAGES: usize = 100_000;

/// Counts what an instance's messages hold in host memory, against [`MAX_LIVE_MESSAGES`] and
/// the instance's memory cap (for their payload bytes).
#[derive(Debug, Default)]
pub(crate) struct LiveMessages {
    count: usize,
    bytes: u64,
    /// Set when the guest made more than [`MAX_LIVE_MESSAGES`]: its call fails with an
    /// output limit, like 0.1.0's handler returning that many.
    pub(crate) too_many: bool,
}

fn trap(message: String) -> wasmtime::Error {
    wasmtime::Error::msg(message)
}

impl PluginState {
    /// Puts `rep` in the table as a handle the guest may own.
    pub(crate) fn push_message(
        &mut self,
        rep: MessageRep,
    ) -> wasmtime::Result<Resource<MessageRep>> {
        if self.live.count >= MAX_LIVE_MESSAGES {
            self.live.too_many = true;
            return Err(trap(format!(
                "more than {MAX_LIVE_MESSAGES} messages alive in plugin {}",
                self.plugin()
            )));
        }
        let bytes = self.live.bytes + rep.payload.len() as u64;
        if bytes > self.memory_cap() {
            self.mark_memory_exceeded();
            return Err(trap(format!(
                "memory limit: the payloads of plugin {}'s messages would take {bytes} bytes",
                self.plugin()
            )));
        }
        self.live.count += 1;
        self.live.bytes = bytes;
        Ok(self.table().push(rep)?)
    }

    /// Takes the message behind `handle` out of the table (the guest handed it back).
    pub(crate) fn take_message(
        &mut self,
        handle: Resource<MessageRep>,
    ) -> wasmtime::Result<MessageRep> {
        let rep = self.table().delete(handle)?;
        self.live.count = self.live.count.saturating_sub(1);
        self.live.bytes = self.live.bytes.saturating_sub(rep.payload.len() as u64);
        Ok(rep)
    }

    fn message(&mut self, handle: &Resource<MessageRep>) -> wasmtime::Result<&mut MessageRep> {
        Ok(self.table().get_mut(handle)?)
    }
}

/// A 0.2.0 guest's error as a handler error, keeping its retryable flag.
pub fn from_wit_error(e: types::HandlerError) -> HandlerError {
    HandlerError::with_kind(ErrorKind::Handler, e.reason).with_retryable(e.retryable)
}

/// A handler error as a 0.2.0 guest sees it (from `next`).
pub fn to_wit_error(e: &HandlerError) -> types::HandlerError {
    types::HandlerError {
        reason: e.reason().to_string(),
        retryable: e.is_retryable(),
    }
}

impl types::Host for PluginState {}

impl types::HostMessage for PluginState {
    fn new(
        &mut self,
        uuid: String,
        metadata: Vec<(String, String)>,
        payload: Vec<u8>,
    ) -> wasmtime::Result<Resource<MessageRep>> {
        self.push_message(MessageRep {
            uuid,
            metadata: metadata.into_iter().collect(),
            payload: payload.into(),
        })
    }

    fn uuid(&mut self, msg: Resource<MessageRep>) -> wasmtime::Result<String> {
        Ok(self.message(&msg)?.uuid.clone())
    }

    fn set_uuid(&mut self, msg: Resource<MessageRep>, uuid: String) -> wasmtime::Result<()> {
        self.message(&msg)?.uuid = uuid;
        Ok(())
    }

    fn metadata(&mut self, msg: Resource<MessageRep>) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(self
            .message(&msg)?
            .metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    fn get(&mut self, msg: Resource<MessageRep>, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self
            .message(&msg)?
            .metadata
            .get_opt(&key)
            .map(str::to_string))
    }

    fn set(
        &mut self,
        msg: Resource<MessageRep>,
        key: String,
        value: String,
    ) -> wasmtime::Result<()> {
        self.message(&msg)?.metadata.set(key, value);
        Ok(())
    }

    fn remove(&mut self, msg: Resource<MessageRep>, key: String) -> wasmtime::Result<()> {
        self.message(&msg)?.metadata.remove(&key);
        Ok(())
    }

    fn set_metadata(
        &mut self,
        msg: Resource<MessageRep>,
        pairs: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        self.message(&msg)?.metadata = pairs.into_iter().collect();
        Ok(())
    }

    fn payload(&mut self, msg: Resource<MessageRep>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.message(&msg)?.payload.to_vec())
    }

    fn payload_len(&mut self, msg: Resource<MessageRep>) -> wasmtime::Result<u64> {
        Ok(self.message(&msg)?.payload.len() as u64)
    }

    fn set_payload(&mut self, msg: Resource<MessageRep>, payload: Vec<u8>) -> wasmtime::Result<()> {
        let old = self.message(&msg)?.payload.len() as u64;
        let bytes = self.live.bytes.saturating_sub(old) + payload.len() as u64;
        if bytes > self.memory_cap() {
            self.mark_memory_exceeded();
            return Err(trap(format!(
                "memory limit: the payloads of plugin {}'s messages would take {bytes} bytes",
                self.plugin()
            )));
        }
        self.live.bytes = bytes;
        self.message(&msg)?.payload = payload.into();
        Ok(())
    }

    fn drop(&mut self, msg: Resource<MessageRep>) -> wasmtime::Result<()> {
        self.take_message(msg)?;
        Ok(())
    }
}

/// 0.2.0's log level as 0.1.0's, which the host's log takes.
pub(crate) fn level(l: host::Level) -> super::bindings::handler::wasmill::plugin::host::Level {
    use super::bindings::handler::wasmill::plugin::host::Level as L1;
    match l {
        host::Level::Trace => L1::Trace,
        host::Level::Debug => L1::Debug,
        host::Level::Info => L1::Info,
        host::Level::Warn => L1::Warn,
        host::Level::Error => L1::Error,
    }
}

impl host::Host for PluginState {
    fn log(
        &mut self,
        l: host::Level,
        message: String,
        fields: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        PluginState::log(self, level(l), &message, &fields);
        Ok(())
    }

    async fn publish(
        &mut self,
        topic: String,
        msg: Resource<MessageRep>,
    ) -> wasmtime::Result<Result<(), String>> {
        let msg = self.take_message(msg)?.into_message();
        Ok(self.publish_granted(topic, msg).await)
    }

    fn monotonic_now(&mut self) -> wasmtime::Result<u64> {
        Ok(PluginState::monotonic_now(self))
    }
}

impl middleware2::MiddlewareImports for PluginState {
    async fn next(
        &mut self,
        msg: Resource<MessageRep>,
    ) -> wasmtime::Result<Result<Vec<Resource<MessageRep>>, types::HandlerError>> {
        let rep = self.take_message(msg)?;
        let Some(current) = self.current.as_ref() else {
            return Err(wasmtime::Error::msg(
                "next called outside of a middleware call",
            ));
        };
        let msg = pass_on(current, rep);
        Ok(match self.call_next(msg).await? {
            Ok(out) => {
                let mut handles = Vec::with_capacity(out.len());
                for m in &out {
                    handles.push(self.push_message(MessageRep::of(m))?);
                }
                Ok(handles)
            }
            Err(e) => Err(to_wit_error(&e)),
        })
    }
}

/// The message a 0.2.0 middleware hands to `next`: the one in flight (same delivery, context
/// and route) carrying the guest's uuid, metadata and payload. An empty uuid keeps the
/// original.
pub(crate) fn pass_on(current: &Message, from_guest: MessageRep) -> Message {
    let mut msg = current.clone();
    if !from_guest.uuid.is_empty() {
        msg.uuid = from_guest.uuid;
    }
    msg.metadata = from_guest.metadata;
    msg.payload = from_guest.payload;
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_shares_the_payload_and_next_keeps_the_delivery() {
        let current = Message::with_uuid("u1", "body").with_metadata("a", "1");
        let rep = MessageRep::of(&current);
        assert_eq!(
            rep.payload.as_ptr(),
            current.payload.as_ptr(),
            "payload copied"
        );
        let passed = pass_on(
            &current,
            MessageRep {
                uuid: String::new(),
                ..rep.clone()
            },
        );
        assert!(
            passed.same_delivery(&current),
            "a detached copy was passed on"
        );
        assert_eq!(passed.uuid, "u1");
        let out = rep.into_message();
        assert!(
            !out.same_delivery(&current),
            "an output shares the input's delivery"
        );
        assert_eq!(out.metadata.get("a"), "1");
        let fresh = MessageRep::default().into_message();
        assert!(!fresh.uuid.is_empty());
    }
}
