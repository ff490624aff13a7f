//! The raw bindings generated from `wit/v0.2.0/plugin.wit`.
//!
//! `generate!` runs here, inside the SDK, so that `path: "../wit"` resolves against this crate's
//! manifest directory whichever crate uses the export macros. With `pub_export_macro` the
//! macros that write the wasm exports are `#[macro_export]`ed from this crate and run in the
//! plugin crate, where they also emit the custom section describing the world's exports;
//! the section emitted here describes imports only, and `wit-component` drops the imports a
//! plugin does not use (so a handler never imports `next`).

/// The `handler` world: `host` imported, `handle` exported.
pub mod handler {
    wit_bindgen::generate!({
        path: "../wit/v0.2.0",
        world: "wasmill:plugin/handler@0.2.0",
        runtime_path: "::wasmill_guest::__private::wit_bindgen::rt",
        pub_export_macro: true,
        export_macro_name: "__export_handler_world",
        default_bindings_module: "::wasmill_guest::bindings::handler",
    });
}

/// The `middleware` world: `host` and `next` imported, `handle` exported.
pub mod middleware {
    wit_bindgen::generate!({
        path: "../wit/v0.2.0",
        world: "wasmill:plugin/middleware@0.2.0",
        runtime_path: "::wasmill_guest::__private::wit_bindgen::rt",
        pub_export_macro: true,
        export_macro_name: "__export_middleware_world",
        default_bindings_module: "::wasmill_guest::bindings::middleware",
        // One set of Rust types and host functions for both worlds.
        with: {
            "wasmill:plugin/types@0.2.0": crate::bindings::handler::wasmill::plugin::types,
            "wasmill:plugin/host@0.2.0": crate::bindings::handler::wasmill::plugin::host,
        },
    });
}
