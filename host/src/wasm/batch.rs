//! Several messages in one guest call: 0.2.0's `handle-batch` export. One checkout, one
//! entry into the guest and one result list for the whole batch; each message gets its own
//! result, as if `handle` had run on it. Plugins that do not export it (0.1.0 handlers,
//! middleware) are called once per message.

use std::sync::atomic::Ordering;

use super::component::Pre;
use super::instance::{
    Bindings, Instance, InstancePool, Returned, SYNC_SLICE, arm, classify, take_output,
};
use super::message::MessageRep;
use super::state::Interruption;
use crate::error::{ErrorKind, HandlerError};
use crate::message::Message;
use crate::router::HandlerResult;

type BatchOutput = wasmtime::Result<
    Vec<
        Result<
            Vec<wasmtime::component::Resource<MessageRep>>,
            super::bindings::handler2::wasmill::plugin::types::HandlerError,
        >,
    >,
>;

impl InstancePool {
    /// Runs the handler on every message of `msgs`, in one guest call when the plugin exports
    /// `handle-batch` (a 0.2.0 handler), else one call per message. The batch shares one
    /// budget: `fuel` and `timeout` times the number of messages; the first message's context
    /// (its Timeout middleware's deadline, the router's close) bounds the call. When the batch
    /// call fails (a trap, its budget spent), every message is run again on its own, so only
    /// the messages that fail alone fail.
    pub async fn call_batch(&self, msgs: &[Message]) -> Vec<HandlerResult> {
        if !self.supports_batch() || msgs.len() < 2 {
            return self.call_each(msgs).await;
        }
        match self.batch_once(msgs).await {
            Ok(results) => results,
            // A trap, fuel or time running out fails the whole call: each message is run
            // again on its own, so only the one(s) that fail alone fail.
            Err(e) => {
                tracing::debug!(
                    plugin = %self.current().name,
                    "a batch of {} failed ({}): each message runs on its own",
                    msgs.len(),
                    e.reason()
                );
                self.call_each(msgs).await
            }
        }
    }

    /// Whether the current version exports `handle-batch` (a 0.2.0 handler).
    pub fn supports_batch(&self) -> bool {
        matches!(self.current().pre, Pre::SyncHandler2(..) | Pre::Handler2(_))
    }

    async fn call_each(&self, msgs: &[Message]) -> Vec<HandlerResult> {
        let mut out = Vec::with_capacity(msgs.len());
        for m in msgs {
            out.push(self.call(m, None).await);
        }
        out
    }

    async fn batch_once(&self, msgs: &[Message]) -> Result<Vec<HandlerResult>, HandlerError> {
        let limits = *self.limits();
        let n = msgs.len() as u32;
        let deadline = std::time::Instant::now() + limits.timeout.saturating_mul(n);
        let mut fuel_left = limits.fuel.saturating_mul(u64::from(n));
        loop {
            let mut inst = self.checkout().await?;
            let sync = inst.bindings.is_sync();
            inst.store
                .set_fuel(fuel_left)
                .map_err(|e| HandlerError::with_kind(ErrorKind::Trap, format!("set fuel: {e}")))?;
            let remaining = deadline.saturating_duration_since(std::time::Instant::now());
            arm(&mut inst.store, remaining, msgs.first(), sync);
            let (mut inst, result) = if sync {
                let result = batch_sync(&mut inst, msgs);
                (inst, result)
            } else {
                batch_async(inst, msgs.to_vec()).await.ok_or_else(|| {
                    HandlerError::with_kind(
                        ErrorKind::Trap,
                        "the guest call was dropped by the guest runtime",
                    )
                })?
            };
            inst.store.data_mut().call = None;
            let left = inst.store.get_fuel().unwrap_or(0);
            self.fuel_used
                .fetch_add(fuel_left.saturating_sub(left), Ordering::Relaxed);
            return match result {
                Ok(results) if results.len() == msgs.len() => {
                    let out = results
                        .into_iter()
                        .map(|r| take_output(&mut inst.store, Returned::V2(r), &limits))
                        .collect();
                    self.checkin(inst);
                    Ok(out)
                }
                Ok(results) => {
                    let returned = results.len();
                    for r in results.into_iter().flatten() {
                        let _ = take_output(&mut inst.store, Returned::V2(Ok(r)), &limits);
                    }
                    self.checkin(inst);
                    Err(HandlerError::with_kind(
                        ErrorKind::Trap,
                        format!(
                            "handle-batch returned {returned} results for {} messages",
                            msgs.len()
                        ),
                    ))
                }
                Err(_) if inst.store.data().interrupted == Some(Interruption::SliceEnded) => {
                    if !self.demoted.swap(true, Ordering::Relaxed) {
                        tracing::info!(
                            plugin = %inst.store.data().plugin(),
                            "a call computed longer than {SYNC_SLICE:?}: calls of this handler run async from now on, yielding their thread on every epoch tick"
                        );
                    }
                    fuel_left = left;
                    continue;
                }
                Err(e) => Err(classify(&inst.store, e, "handle-batch")),
            };
        }
    }
}

fn push_all(
    inst: &mut Instance,
    msgs: &[Message],
) -> wasmtime::Result<Vec<wasmtime::component::Resource<MessageRep>>> {
    msgs.iter()
        .map(|m| inst.store.data_mut().push_message(MessageRep::of(m)))
        .collect()
}

fn batch_sync(inst: &mut Instance, msgs: &[Message]) -> BatchOutput {
    let input = push_all(inst, msgs)?;
    match &inst.bindings {
        Bindings::SyncHandler2(b) => b.call_handle_batch(&mut inst.store, &input),
        _ => Err(wasmtime::Error::msg(
            "handle-batch on an instance without it",
        )),
    }
}

async fn batch_async(mut inst: Instance, msgs: Vec<Message>) -> Option<(Instance, BatchOutput)> {
    let long = inst.store.data().long_call.clone();
    long.store(false, Ordering::Relaxed);
    let call = async move {
        let result = match push_all(&mut inst, &msgs) {
            Err(e) => Err(e),
            Ok(input) => match &inst.bindings {
                Bindings::Handler2(b) => b.call_handle_batch(&mut inst.store, &input).await,
                Bindings::SyncHandler2(b) => b.call_handle_batch(&mut inst.store, &input),
                _ => Err(wasmtime::Error::msg(
                    "handle-batch on an instance without it",
                )),
            },
        };
        (inst, result)
    };
    super::lane::run(call, &long).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wasm::tests::pool;
    use crate::wasm::{Grants, Limits, WitVersion};

    fn batch() -> Vec<Message> {
        (0..5)
            .map(|i| {
                Message::with_uuid(format!("u{i}"), format!("payload {i}"))
                    .with_metadata("i", i.to_string())
            })
            .collect()
    }

    #[tokio::test]
    async fn a_batch_gets_one_result_per_message_in_order() {
        let msgs = batch();
        for name in ["passthrough", "passthrough-v1"] {
            let p = pool(name, Limits::default(), Grants::default()).await;
            let out = p.call_batch(&msgs).await;
            assert_eq!(out.len(), msgs.len(), "{name}");
            for (m, r) in msgs.iter().zip(&out) {
                let r = r.as_ref().unwrap();
                assert_eq!(r.as_slice(), std::slice::from_ref(m), "{name}");
            }
        }
        // 0.2.0: in one guest call, the payloads not copied.
        let p = pool("passthrough", Limits::default(), Grants::default()).await;
        assert_eq!(p.current().info.version, WitVersion::V0_2);
        let out = p.call_batch(&msgs).await;
        for (m, r) in msgs.iter().zip(&out) {
            assert_eq!(r.as_ref().unwrap()[0].payload.as_ptr(), m.payload.as_ptr());
        }
    }

    #[tokio::test]
    async fn each_message_of_a_batch_fails_on_its_own() {
        let p = pool("json-enrich", Limits::default(), Grants::default()).await;
        let msgs = [
            Message::new(r#"{"a":1}"#),
            Message::new("{nope"),
            Message::new(r#"{"b":2}"#),
        ];
        let out = p.call_batch(&msgs).await;
        assert!(out[0].is_ok() && out[2].is_ok(), "{out:?}");
        let err = out[1].as_ref().unwrap_err();
        assert!(err.reason().starts_with("invalid json"), "{err}");
    }

    #[tokio::test]
    async fn a_trap_fails_only_the_message_that_traps() {
        let p = pool("panic", Limits::default(), Grants::default()).await;
        let out = p.call_batch(&batch()).await;
        assert_eq!(out.len(), 5);
        for r in out {
            assert!(r.unwrap_err().reason().starts_with("trap: "));
        }
        let msgs = [
            Message::new("spare me"),
            Message::new("boom"),
            Message::new("spare me"),
        ];
        let out = p.call_batch(&msgs).await;
        assert!(out[0].is_ok() && out[2].is_ok(), "{out:?}");
        assert!(out[1].as_ref().unwrap_err().reason().starts_with("trap: "));
    }
}
