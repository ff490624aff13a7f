//! Write [Wasmill](https://github.com/wasmill/wasmill) message handlers and middleware as
//! WebAssembly components.
//!
//! A plugin is a `cdylib` crate that depends on `wasmill-guest`, implements [`Handler`] (or
//! [`Middleware`]) for a type and names that type in [`export_handler!`] (or
//! [`export_middleware!`]). Build it with `cargo build --release --target wasm32-wasip2`: the
//! `.wasm` file is a component of the `wasmill:plugin/handler@0.2.0` (or `middleware`) world,
//! ready to drop into the host's plugins folder. The plugin needs no `wit-bindgen` of its own
//! and no WIT file: both come with this crate.
//!
//! # A handler
//!
//! ```
//! use wasmill_guest::{Error, Handler, Message, ResultExt, export_handler};
//!
//! /// Upper-cases text payloads and counts what it did.
//! struct Shout;
//!
//! impl Handler for Shout {
//!     fn handle(msg: Message) -> Result<Vec<Message>, Error> {
//!         let text = msg.payload_str().permanent("payload is not utf-8")?;
//!         if text.is_empty() {
//!             return Err(Error::permanent("empty payload"));
//!         }
//!         wasmill_guest::debug!("shouting {} bytes", text.len());
//!         let out = Message::new(text.to_uppercase())
//!             .with_metadata("shouted_from", msg.uuid());
//!         Ok(vec![out])
//!     }
//! }
//!
//! export_handler!(Shout);
//! # fn main() {}
//! ```
//!
//! Returning `Ok(messages)` publishes them to the handler's output topic and acks the input;
//! returning `Err` nacks it, and the host's middleware decides about retries
//! ([`Error::retryable`] vs [`Error::permanent`]) and poison queues. A panic or a trap
//! (running out of fuel or memory) is a failed message too; the plugin's instance is then
//! thrown away. A panic's message and location are written to the host's log first
//! (`plugin panicked at src/lib.rs:12:9: boom`).
//!
//! # A middleware
//!
//! A middleware wraps the rest of the chain, which it reaches through [`Next`]: it may call it
//! zero, one or several times.
//!
//! ```
//! use wasmill_guest::{Error, Message, Middleware, Next, export_middleware};
//!
//! /// Rejects messages without a `tenant` and tags every output with it.
//! struct RequireTenant;
//!
//! impl Middleware for RequireTenant {
//!     fn handle(msg: Message, next: &Next) -> Result<Vec<Message>, Error> {
//!         let Some(tenant) = msg.metadata().get("tenant").map(str::to_owned) else {
//!             return Err(Error::permanent("missing metadata tenant"));
//!         };
//!         let mut out = next.call(msg)?;
//!         for m in &mut out {
//!             m.metadata_mut().set("tenant", tenant.as_str());
//!         }
//!         Ok(out)
//!     }
//! }
//!
//! export_middleware!(RequireTenant);
//! # fn main() {}
//! ```
//!
//! # Host functions
//!
//! [`publish`] sends a message to another topic right away (the handler's configuration must
//! grant the topic), [`now`] reads a monotonic clock, and [`log`] (or the [`info!`] family of
//! macros) writes to the host's log.
//!
//! # Cargo setup
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! wasmill-guest = { path = "../../guest-sdk" }  # keep the name: the generated code uses it
//!
//! [profile.release]
//! opt-level = "s"
//! lto = true
//! strip = true
//! panic = "abort"
//! codegen-units = 1
//! ```
//!
//! The sandbox grants no files, environment, sockets or clock beyond [`now`]: `std::fs`,
//! `std::env` and `std::net` compile but fail (or see nothing) at run time.

// The generated code and the export macros name this crate by its absolute path
// (`runtime_path`); this makes that path resolve inside the crate too.
extern crate self as wasmill_guest;

// The generated FFI glue needs `unsafe` (Cargo.toml denies it everywhere else).
#[doc(hidden)]
#[allow(unsafe_code, missing_docs)]
pub mod bindings;
mod error;
mod host;
mod message;

pub use error::{Error, ResultExt};
pub use host::{log, now, publish};
pub use message::{Message, Metadata, new_uuid};
/// The `wit-bindgen` this crate uses, for plugins that want the raw bindings.
pub use wit_bindgen;

/// The raw WIT types, for code that talks to [`bindings`] directly; [`Message`] and [`Error`]
/// convert to and from them.
pub mod wit {
    pub use crate::bindings::handler::wasmill::plugin::types::{HandlerError, Message};
}

/// A message handler: the `handler` world's `handle` export.
pub trait Handler {
    /// Handles one message: `Ok` lists the messages to publish to the output topic (possibly
    /// none), `Err` nacks the input.
    fn handle(msg: Message) -> Result<Vec<Message>, Error>;
}

/// A middleware: the `middleware` world's `handle` export, wrapping the rest of the chain.
pub trait Middleware {
    /// Handles one message, calling `next` whenever, as often and with whatever it decides.
    fn handle(msg: Message, next: &Next) -> Result<Vec<Message>, Error>;
}

/// The rest of the handler chain (inner middleware, then the handler), given to a
/// [`Middleware`].
#[derive(Debug)]
pub struct Next {
    // Only the middleware export can make one, so a handler cannot import `next`.
    _private: (),
}

impl Next {
    /// Runs the rest of the chain with `msg` and returns what it produced.
    pub fn call(&self, msg: Message) -> Result<Vec<Message>, Error> {
        bindings::middleware::next(msg.into_wit())
            .map(|out| out.into_iter().map(Message::from_wit).collect())
            .map_err(Error::from)
    }
}

/// Exports a [`Handler`] implementation as the plugin's `handle` function.
///
/// Use it once per plugin crate, at the top level: `export_handler!(MyHandler);`.
#[macro_export]
macro_rules! export_handler {
    ($ty:ty) => {
        const _: () = {
            type __WasmillHandlerExport = $crate::__private::HandlerAdapter<$ty>;
            $crate::bindings::handler::__export_handler_world!(
                __WasmillHandlerExport with_types_in $crate::bindings::handler
            );
        };
    };
}

/// Exports a [`Middleware`] implementation as the plugin's `handle` function.
///
/// Use it once per plugin crate, at the top level: `export_middleware!(MyMiddleware);`.
#[macro_export]
macro_rules! export_middleware {
    ($ty:ty) => {
        const _: () = {
            type __WasmillMiddlewareExport = $crate::__private::MiddlewareAdapter<$ty>;
            $crate::bindings::middleware::__export_middleware_world!(
                __WasmillMiddlewareExport with_types_in $crate::bindings::middleware
            );
        };
    };
}

/// Support for the export macros; not a public API.
#[doc(hidden)]
pub mod __private {
    use std::marker::PhantomData;

    use crate::{Handler, Message, Middleware, Next, bindings, wit};
    pub use wit_bindgen;

    /// Routes panic messages to the host's log (level error) before the panic aborts, which
    /// traps: without this the message would go to a stderr that the sandbox discards.
    fn install_panic_hook() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                // One line (the default `Display` puts the message on a line of its own).
                let message = info.payload_as_str().unwrap_or("(a non-string payload)");
                let line = match info.location() {
                    Some(at) => format!("plugin panicked at {at}: {message}"),
                    None => format!("plugin panicked: {message}"),
                };
                crate::log::log(crate::log::Level::Error, &line, &[]);
            }));
        });
    }

    fn convert(
        out: Result<Vec<Message>, crate::Error>,
    ) -> Result<Vec<wit::Message>, wit::HandlerError> {
        out.map(|v| v.into_iter().map(Message::into_wit).collect())
            .map_err(wit::HandlerError::from)
    }

    /// Implements the generated `Guest` trait of the handler world for a [`Handler`].
    pub struct HandlerAdapter<T>(PhantomData<T>);

    impl<T: Handler> bindings::handler::Guest for HandlerAdapter<T> {
        fn handle(msg: wit::Message) -> Result<Vec<wit::Message>, wit::HandlerError> {
            install_panic_hook();
            convert(T::handle(Message::from_wit(msg)))
        }

        fn handle_batch(
            msgs: Vec<wit::Message>,
        ) -> Vec<Result<Vec<wit::Message>, wit::HandlerError>> {
            install_panic_hook();
            msgs.into_iter()
                .map(|m| convert(T::handle(Message::from_wit(m))))
                .collect()
        }
    }

    /// Implements the generated `Guest` trait of the middleware world for a [`Middleware`].
    pub struct MiddlewareAdapter<T>(PhantomData<T>);

    impl<T: Middleware> bindings::middleware::Guest for MiddlewareAdapter<T> {
        fn handle(msg: wit::Message) -> Result<Vec<wit::Message>, wit::HandlerError> {
            install_panic_hook();
            convert(T::handle(Message::from_wit(msg), &Next { _private: () }))
        }
    }
}
