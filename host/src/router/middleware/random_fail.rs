//! RandomFail and RandomPanic: fault injection for testing retry and recovery paths.

use std::sync::Arc;

use async_trait::async_trait;

use crate::error::{ErrorKind, HandlerError};
use crate::message::Message;
use crate::router::{BoxHandler, Handler, HandlerResult, Middleware};

/// Fails a message with probability `p` (error kind `Injected`) before the chain runs.
#[derive(Debug, Clone, Copy)]
pub struct RandomFail {
    p: f64,
}

/// Panics with probability `p` before the chain runs (pair it with `recoverer`).
#[derive(Debug, Clone, Copy)]
pub struct RandomPanic {
    p: f64,
}

impl RandomFail {
    /// Fails with probability `p` (0.0 to 1.0).
    pub fn new(p: f64) -> Self {
        RandomFail {
            p: p.clamp(0.0, 1.0),
        }
    }
}

impl RandomPanic {
    /// Panics with probability `p` (0.0 to 1.0).
    pub fn new(p: f64) -> Self {
        RandomPanic {
            p: p.clamp(0.0, 1.0),
        }
    }
}

fn roll(p: f64) -> bool {
    p > 0.0 && rand::random::<f64>() < p
}

struct Failing {
    p: f64,
    panic: bool,
    next: BoxHandler,
}

#[async_trait]
impl Handler for Failing {
    async fn handle(&self, msg: Message) -> HandlerResult {
        if roll(self.p) {
            if self.panic {
                panic!("random panic injected (p = {})", self.p);
            }
            return Err(HandlerError::with_kind(
                ErrorKind::Injected,
                format!("random failure injected (p = {})", self.p),
            ));
        }
        self.next.handle(msg).await
    }
}

impl Middleware for RandomFail {
    fn wrap(&self, next: BoxHandler) -> BoxHandler {
        Arc::new(Failing {
            p: self.p,
            panic: false,
            next,
        })
    }
    fn name(&self) -> &str {
        "random_fail"
    }
}

impl Middleware for RandomPanic {
    fn wrap(&self, next: BoxHandler) -> BoxHandler {
        Arc::new(Failing {
            p: self.p,
            panic: true,
            next,
        })
    }
    fn name(&self) -> &str {
        "random_panic"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::handler_fn;
    use crate::router::middleware::Recoverer;

    fn ok() -> BoxHandler {
        handler_fn(|_m| async { Ok(vec![]) })
    }

    #[tokio::test]
    async fn zero_never_one_always_and_roughly_p_between() {
        assert!(
            RandomFail::new(0.0)
                .wrap(ok())
                .handle(Message::new("x"))
                .await
                .is_ok()
        );
        let e = RandomFail::new(1.0)
            .wrap(ok())
            .handle(Message::new("x"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Injected);
        let h = RandomFail::new(0.3).wrap(ok());
        let mut failed = 0;
        for _ in 0..2000 {
            if h.handle(Message::new("x")).await.is_err() {
                failed += 1;
            }
        }
        assert!((400..800).contains(&failed), "{failed} of 2000 at p = 0.3");
        let e = Recoverer
            .wrap(RandomPanic::new(1.0).wrap(ok()))
            .handle(Message::new("x"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Panic);
    }
}
