//! Known limits of the toolchain a component was built with, read from its modules' custom
//! sections (`wasmill check` prints them as warnings).

/// Go's garbage collector calls `wasi:clocks` from inside `cabi_realloc`, which the component
/// model forbids: such a handler traps now and then with "cannot leave component instance".
pub const GO_WARNING: &str = "built with Go: Go's garbage collector may call wasi:clocks from \
     inside cabi_realloc, which traps (\"cannot leave component instance\"), more often with \
     large payloads (measured: 1 in 20,000 messages at 100 B, 165 in 20,000 at 16 KiB); \
     upstream: bytecodealliance/componentize-go#77 and wasmtime#14318 (fix: wasmtime#14319, in \
     the preview1 adapter); see docs/guests/README.md#go";

/// Warnings about the toolchains that built the modules inside `bytes` (a component or a
/// module); none when it cannot be parsed (the compile reports that).
pub fn toolchain_warnings(bytes: &[u8]) -> Vec<&'static str> {
    let mut warnings = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else { break };
        if let wasmparser::Payload::CustomSection(c) = payload
            && c.name() == "go:buildid"
            && !warnings.contains(&GO_WARNING)
        {
            warnings.push(GO_WARNING);
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module with one custom section `name`, alone or nested in a component.
    fn module_with_custom(name: &str) -> Vec<u8> {
        let mut m = b"\0asm\x01\0\0\0".to_vec();
        let mut body = vec![name.len() as u8];
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(b"x");
        m.push(0);
        m.push(body.len() as u8);
        m.extend(body);
        m
    }

    fn component_around(module: &[u8]) -> Vec<u8> {
        let mut c = b"\0asm\x0d\0\x01\0".to_vec();
        c.push(1); // a core module section
        c.push(module.len() as u8);
        c.extend_from_slice(module);
        c
    }

    #[test]
    fn a_go_module_is_named_even_inside_a_component() {
        let go = module_with_custom("go:buildid");
        assert_eq!(toolchain_warnings(&go), vec![GO_WARNING]);
        assert_eq!(toolchain_warnings(&component_around(&go)), vec![GO_WARNING]);
        let other = module_with_custom("producers");
        assert!(toolchain_warnings(&component_around(&other)).is_empty());
        assert!(toolchain_warnings(b"not wasm").is_empty());
    }
}
