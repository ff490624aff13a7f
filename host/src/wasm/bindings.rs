//! Host bindings generated from `wit/v0.1.0/plugin.wit` and `wit/v0.2.0/plugin.wit`, one
//! module per world and version.
//!
//! Both worlds of a version share its `wasmill:plugin/types` and `host`; the middleware world
//! reuses the handler world's generated interfaces (`with`) so one host implementation serves
//! both.

#![allow(missing_docs)]

/// The `handler` world.
pub mod handler {
    wasmtime::component::bindgen!({
        path: "../wit/v0.1.0",
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
        path: "../wit/v0.1.0",
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
        path: "../wit/v0.1.0",
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

/// The `handler` world of 0.2.0: the message is a host resource ([`super::message::MessageRep`]).
/// Its methods never wait, so they are synchronous imports, linked in the synchronous linker
/// as well; only `publish` is async.
pub mod handler2 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.2.0",
        world: "handler",
        imports: {
            "wasmill:plugin/host.publish": async | trappable,
            default: trappable,
        },
        exports: { default: async },
        with: {
            "wasmill:plugin/types.message": crate::wasm::message::MessageRep,
        },
    });
}

/// 0.2.0's `handler` world called synchronously (see [`handler_sync`]).
pub mod handler2_sync {
    wasmtime::component::bindgen!({
        path: "../wit/v0.2.0",
        world: "handler",
        imports: {
            default: trappable,
        },
        exports: { default: trappable },
        // `host.publish` (reused from `handler2`) is async.
        require_store_data_send: true,
        with: {
            "wasmill:plugin/types": super::handler2::wasmill::plugin::types,
            "wasmill:plugin/host": super::handler2::wasmill::plugin::host,
        },
    });
}

/// 0.2.0's `middleware` world.
pub mod middleware2 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.2.0",
        world: "middleware",
        imports: {
            "next": exact | async | trappable,
            default: trappable,
        },
        exports: { default: async },
        with: {
            "wasmill:plugin/types": super::handler2::wasmill::plugin::types,
            "wasmill:plugin/host": super::handler2::wasmill::plugin::host,
        },
    });
}
