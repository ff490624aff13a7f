//! WebAssembly plugins: the engine, loading and validating components, the per-subscriber
//! sandbox, and the adapters that make a component a [`Handler`](crate::Handler) or a
//! [`Middleware`](crate::Middleware).

pub mod adapters;
pub mod batch;
pub mod bindings;
pub mod cache;
pub mod component;
pub mod convert;
pub mod engine;
pub mod guest_output;
pub mod instance;
pub mod lane;
pub mod limits;
pub mod message;
pub mod state;
mod sync_io;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_chain;
pub mod toolchain;

pub use adapters::{WasmHandler, WasmMiddleware};
pub use component::{CompiledPlugin, ComponentInfo, WitVersion, World, inspect};
pub use engine::{EngineConfig, WasmEngine};
pub use instance::InstancePool;
pub use limits::Limits;
pub use state::Grants;
pub use toolchain::toolchain_warnings;
