//! Host bindings generated from `wit/plugin.wit`, one module per world.
//!
//! Both worlds share `wasmill:plugin/types` and `host`; the middleware world reuses the
//! handler world's generated interfaces (`with`) so one host implementation serves both.

#![allow(missing_docs)]

/// The `handler` world.
pub mod handler {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "handler",
        imports: { default: async | trappable },
        exports: { default: async },
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

/// The `handler` world's export called synchronously, for a handler whose imports are all
/// in the synchronous linker (`sync_io`). The imports are the `handler` module's.
pub mod handler_sync {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "handler",
        imports: { default: async | trappable },
        exports: { default: trappable },
        ownership: Borrowing { duplicate_if_necessary: true },
        with: {
            "wasmill:plugin/types": super::handler::wasmill::plugin::types,
            "wasmill:plugin/host": super::handler::wasmill::plugin::host,
        },
    });
}

/// The `middleware` world.
pub mod middleware {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "middleware",
        imports: { default: async | trappable },
        exports: { default: async },
        ownership: Borrowing { duplicate_if_necessary: true },
        with: {
            "wasmill:plugin/types": super::handler::wasmill::plugin::types,
            "wasmill:plugin/host": super::handler::wasmill::plugin::host,
        },
    });
}
