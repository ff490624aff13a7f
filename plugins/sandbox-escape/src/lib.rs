//! `sandbox-escape`: tries to leave the sandbox and reports what happened.
//!
//! It tries, in turn, to read `/etc/passwd` (`std::fs`), to read the environment variables
//! `HOME` and `PATH` (`std::env`), to open a TCP connection to `127.0.0.1:1` (`std::net`), and
//! to publish to the topic `forbidden` (`host.publish`). It returns one message whose payload
//! is a JSON object with one entry per attempt, `fs`, `env`, `net` and `publish`, each a string
//! that starts with `denied: ` when the sandbox stopped the attempt and with `allowed: ` when
//! it did not. It never fails and never panics, so a test can assert on every entry.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};

use wasmill_guest::{Error, Handler, Message, export_handler, publish};

struct SandboxEscape;

fn try_fs() -> String {
    match std::fs::read("/etc/passwd") {
        Ok(bytes) => format!("allowed: read {} bytes of /etc/passwd", bytes.len()),
        Err(e) => format!("denied: {e}"),
    }
}

fn try_env() -> String {
    let seen: Vec<String> = ["HOME", "PATH"]
        .into_iter()
        .filter_map(|k| std::env::var_os(k).map(|_| k.to_owned()))
        .collect();
    let visible = std::env::vars_os().count();
    if seen.is_empty() && visible == 0 {
        "denied: HOME and PATH are not set (no variable visible)".to_owned()
    } else {
        format!(
            "allowed: {visible} variables visible, set: {}",
            seen.join(", ")
        )
    }
}

fn try_net() -> String {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 1));
    match TcpStream::connect(addr) {
        Ok(_) => "allowed: connected to 127.0.0.1:1".to_owned(),
        // These come from the network itself: the sandbox let the attempt through.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
            ) =>
        {
            format!("allowed: reached the network: {e}")
        }
        Err(e) => format!("denied: {e}"),
    }
}

fn try_publish() -> String {
    match publish("forbidden", Message::new("sandbox-escape was here")) {
        Ok(()) => "allowed: published to forbidden".to_owned(),
        Err(reason) => format!("denied: {reason}"),
    }
}

impl Handler for SandboxEscape {
    fn handle(msg: Message) -> Result<Vec<Message>, Error> {
        // Standard output and error are not the host's: they land in its log, tagged.
        println!("sandbox-escape: trying the file system, env, network and publish");
        eprintln!("sandbox-escape: this line goes to the host log at WARN");
        let report = serde_json::json!({
            "fs": try_fs(),
            "env": try_env(),
            "net": try_net(),
            "publish": try_publish(),
        });
        let out = Message::with_uuid(msg.uuid(), report.to_string())
            .with_metadata("content-type", "application/json");
        Ok(vec![out])
    }
}

export_handler!(SandboxEscape);
