//! The settings of `kind = "mqtt"` and the broker its URL names (TLS with `mqtts://`).

use super::*;

/// Settings of `kind = "mqtt"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// `mqtt://[user[:password]@]host[:port]` (port 1883 by default; `tcp://` works too), or
    /// `mqtts://...` (`ssl://`) for TLS, port 8883 by default (the broker's certificate
    /// checked against the system's roots and `ca_file`).
    pub url: String,
    /// A PEM file of a CA to trust besides the system's roots (with `mqtts://`).
    pub ca_file: Option<PathBuf>,
    /// Consumer group: subscriptions in one group share a topic's messages, each group gets
    /// all of them (default `wasmill`). No `/`, `+` or `#`.
    pub consumer_group: Option<String>,
    /// Prefix of the client ids. A subscription's session is `{client_id}-{group}-{hash of
    /// topic}`, so a restarted host resumes its sessions. Two processes with the same prefix
    /// and group take the session over from each other: give each process its own prefix.
    pub client_id: String,
    /// Subscribe through the shared subscription `$share/{group}/{topic}`, so that processes
    /// with distinct `client_id`s share a group's messages. Mosquitto 2.0 does not restore
    /// shared subscriptions after a broker restart (messages published before the
    /// subscription reconnects are lost), hence off by default.
    pub shared_subscription: bool,
    /// How long the broker keeps a subscription's session, and the messages queued for it,
    /// while no subscription is connected.
    #[serde(with = "crate::config::duration")]
    pub session_expiry: Duration,
    /// How many unacknowledged messages the broker may push to one session (MQTT 5 Receive
    /// Maximum, 1 to 65535): the session buffers them, so a slow consumer may lag this far
    /// behind (plus the broker's `max_queued_messages`) before the broker drops messages.
    pub receive_maximum: u16,
    /// Keep-alive interval (at least 5 s).
    #[serde(with = "crate::config::duration")]
    pub keep_alive: Duration,
    /// Bound on connecting and on a subscription's confirmation by the broker.
    #[serde(with = "crate::config::duration")]
    pub connect_timeout: Duration,
    /// Bound on one publish call: waiting for the connection and for every PUBACK.
    #[serde(with = "crate::config::duration")]
    pub publish_timeout: Duration,
    /// Longest wait between two reconnection attempts of a subscription (and the publisher).
    #[serde(with = "crate::config::duration")]
    pub reconnect_max_delay: Duration,
    /// After the publisher lost its connection and got it back, how long it waits before
    /// publishing again, so that subscriptions resume their sessions first (the broker keeps
    /// only `max_queued_messages` for an offline session).
    #[serde(with = "crate::config::duration")]
    pub resume_delay: Duration,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            url: "mqtt://127.0.0.1:1883".into(),
            ca_file: None,
            consumer_group: None,
            client_id: "wasmill".into(),
            shared_subscription: false,
            session_expiry: Duration::from_secs(7 * 24 * 3600),
            receive_maximum: u16::MAX,
            keep_alive: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            publish_timeout: Duration::from_secs(10),
            reconnect_max_delay: Duration::from_millis(500),
            resume_delay: Duration::from_secs(1),
        }
    }
}

/// Where the broker is, from the URL.
#[derive(Debug, Clone)]
pub(crate) struct Broker {
    /// The TLS client config with `mqtts://`.
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    /// The URL without its password, for messages.
    pub(super) shown: String,
}

pub(crate) fn parse_url(url: &str, ca_file: Option<&PathBuf>) -> Result<Broker> {
    let shown = redacted(url);
    let bad = |why: &str| Error::pubsub_msg(NAME, format!("invalid url {shown}: {why}"));
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("expected mqtt://host[:port]"))?;
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "mqtt" | "tcp" if ca_file.is_some() => {
            return Err(bad("ca_file is set but the url is not mqtts:// (TLS)"));
        }
        "mqtt" | "tcp" => None,
        "mqtts" | "ssl" => Some(tls::client_config(NAME, ca_file)?),
        "ws" | "wss" => {
            return Err(bad(
                "MQTT over WebSocket is not supported; use mqtt:// or mqtts://",
            ));
        }
        _ => return Err(bad("expected mqtt://host[:port] or mqtts://host[:port]")),
    };
    let (auth, hostport) = match rest.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, rest),
    };
    let hostport = hostport.trim_end_matches('/');
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        (h, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() || hostport.contains('/') {
        return Err(bad("expected mqtt://host[:port]"));
    }
    let port = match port {
        Some(p) => p.parse().map_err(|_| bad("invalid port"))?,
        None if tls.is_some() => 8883,
        None => 1883,
    };
    let (username, password) = match auth {
        Some(a) => match a.split_once(':') {
            Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
            None => (Some(a.to_string()), None),
        },
        None => (None, None),
    };
    Ok(Broker {
        tls,
        host: host.to_string(),
        port,
        username,
        password,
        shown,
    })
}
