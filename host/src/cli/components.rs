//! `wasmill request` and `wasmill replay`: request-reply and poison replay through a running
//! host's HTTP API.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

use super::{auth_hint, parse_metadata, read_payload, topic_url, with_token};

/// Arguments of `wasmill request`.
#[derive(Args)]
pub struct RequestArgs {
    /// The topic a handler serves.
    topic: String,
    /// The payload; `-` or nothing reads standard input.
    payload: Option<String>,
    /// Metadata `key=value`, repeatable (a command's `name=PlaceOrder`).
    #[arg(short, long = "metadata")]
    metadata: Vec<String>,
    /// How long to wait for the reply.
    #[arg(long, default_value = "5s")]
    timeout: String,
    /// The running host.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "WASMILL_URL")]
    url: String,
    /// A named backend of the host (default: its default one).
    #[arg(long)]
    pubsub: Option<String>,
    /// The host's bearer token (`[host] token`), if it requires one.
    #[arg(long, env = "WASMILL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the reply's JSON envelope instead of its payload.
    #[arg(long)]
    json: bool,
}

/// `wasmill request`: publishes a request and prints the reply's payload (or envelope).
pub async fn request(a: RequestArgs) -> Result<()> {
    let wait = humantime::parse_duration(&a.timeout)
        .with_context(|| format!("--timeout {:?}", a.timeout))?;
    let payload = read_payload(a.payload.as_deref())?;
    let metadata = parse_metadata(&a.metadata)?;
    let mut url = topic_url(&a.url, &a.topic, "", a.pubsub.as_deref());
    url.push(if url.contains('?') { '&' } else { '?' });
    url.push_str(&format!("reply=1&timeout={}", a.timeout));
    let r = with_token(reqwest::Client::new().post(&url), a.token.as_deref())
        .json(&serde_json::json!({ "metadata": metadata, "payload": payload }))
        // The host answers within the timeout; a little more for the round trip.
        .timeout(wait + Duration::from_secs(5))
        .send()
        .await
        .with_context(|| format!("POST {url} (is `wasmill run` running?)"))?;
    let status = r.status();
    let answer: serde_json::Value = r.json().await.unwrap_or_default();
    if status.as_u16() != 200 {
        let reason = answer["error"].as_str().unwrap_or_default();
        bail!("{}: {status}: {reason}{}", a.topic, auth_hint(status));
    }
    if a.json {
        println!("{answer}");
    } else if let Some(p) = answer["payload"].as_str() {
        println!("{p}");
    } else {
        println!("{}", answer["payload_base64"].as_str().unwrap_or_default());
    }
    Ok(())
}

/// Arguments of `wasmill replay`.
#[derive(Args)]
pub struct ReplayArgs {
    /// The poison topic to replay.
    #[arg(long)]
    from: String,
    /// Where to send the messages (default: the topic each one failed on).
    #[arg(long)]
    to: Option<String>,
    /// At most this many messages.
    #[arg(long)]
    limit: Option<usize>,
    /// The running host.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "WASMILL_URL")]
    url: String,
    /// A named backend of the host (default: its default one).
    #[arg(long)]
    pubsub: Option<String>,
    /// The host's bearer token (`[host] token`), if it requires one.
    #[arg(long, env = "WASMILL_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// `wasmill replay`: sends a poison queue's messages back to their topics.
pub async fn replay(a: ReplayArgs) -> Result<()> {
    let mut url = topic_url(&a.url, &a.from, "/replay", a.pubsub.as_deref());
    let mut query = Vec::new();
    if let Some(to) = &a.to {
        query.push(format!("to={to}"));
    }
    if let Some(n) = a.limit {
        query.push(format!("limit={n}"));
    }
    if !query.is_empty() {
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&query.join("&"));
    }
    let r = with_token(reqwest::Client::new().post(&url), a.token.as_deref())
        .send()
        .await
        .with_context(|| format!("POST {url} (is `wasmill run` running?)"))?;
    let status = r.status();
    let answer: serde_json::Value = r.json().await.unwrap_or_default();
    if !status.is_success() {
        let reason = answer["error"].as_str().unwrap_or_default();
        bail!("replay {}: {status}: {reason}{}", a.from, auth_hint(status));
    }
    let skipped = answer["skipped"].as_array().cloned().unwrap_or_default();
    println!(
        "replayed {} message(s) from {}",
        answer["replayed"].as_u64().unwrap_or(0),
        a.from
    );
    for s in &skipped {
        eprintln!("left on {}: {}", a.from, s.as_str().unwrap_or_default());
    }
    Ok(())
}
