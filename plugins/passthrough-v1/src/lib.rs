//! `passthrough-v1`: returns every message unchanged, built on `wasmill:plugin@0.1.0` (the
//! message passed as a record) with `wit-bindgen` alone, as plugins were before 0.2.0. It keeps
//! the host's support of 0.1.0 tested.

// The world `use`s `message` and `handler-error`, so the bindings define both at the top.
wit_bindgen::generate!({
    path: "../../wit/v0.1.0",
    world: "wasmill:plugin/handler@0.1.0",
});

struct Passthrough;

impl Guest for Passthrough {
    fn handle(msg: Message) -> Result<Vec<Message>, HandlerError> {
        Ok(vec![msg])
    }
}

export!(Passthrough);
