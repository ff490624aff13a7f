//! Delayed messages on Redis (Watermill's `components/delay`): a message published with its
//! due time ahead (`_watermill_delayed_until`) waits in a sorted set of its topic
//! (`wasmill:delayed:{topic}`, scored by the due time in milliseconds), and is moved into the
//! stream once due, by any subscription of the topic, on any host. The move is one Lua script
//! (`XADD` then `ZREM`, atomic on the server), so a message is moved once however many
//! subscriptions race for it, and a host killed mid-way loses nothing: the message is in the
//! set or in the stream. A subscription moves what is due every
//! [`crate::pubsub::delay::MOVE_INTERVAL`] (sooner
//! when the next due message is nearer), so a delayed message is read at most about that
//! plus one blocking read after it is due.

use std::time::SystemTime;

use super::RedisPubSub;
use crate::message::Message;

/// Most messages one move takes.
const MOVE_BATCH: usize = 256;

/// The sorted set holding `topic`'s delayed messages.
pub(super) fn key(topic: &str) -> String {
    format!("wasmill:delayed:{topic}")
}

/// The set member holding `msg`: a header line `NONCE UUID_LEN METADATA_LEN`, then the uuid,
/// the stored metadata and the payload, so the script can rebuild the stream entry with no
/// decoding library. The nonce keeps two equal messages two members.
pub(super) fn member(msg: &Message) -> Vec<u8> {
    let metadata = if msg.metadata.is_empty() {
        String::new()
    } else {
        crate::pubsub::stored::encode_metadata(&msg.metadata)
    };
    let header = format!(
        "{} {} {}\n",
        uuid::Uuid::new_v4().simple(),
        msg.uuid.len(),
        metadata.len()
    );
    let mut out =
        Vec::with_capacity(header.len() + msg.uuid.len() + metadata.len() + msg.payload.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(msg.uuid.as_bytes());
    out.extend_from_slice(metadata.as_bytes());
    out.extend_from_slice(&msg.payload);
    out
}

/// Moves the due members of `KEYS[2]` (scores up to `ARGV[1]`, at most `ARGV[2]`) into the
/// stream `KEYS[1]` as the entries a publish writes (`MAXLEN ~ ARGV[3]` unless empty), and
/// returns the score of the next member still waiting, or -1.
const MOVE_SCRIPT: &str = r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, m in ipairs(due) do
  local nl = string.find(m, '\n', 1, true)
  local _, ul, ml = string.match(string.sub(m, 1, nl - 1), '^(%x+) (%d+) (%d+)$')
  ul = tonumber(ul)
  ml = tonumber(ml)
  local p = nl + 1
  local args = {'XADD', KEYS[1]}
  if ARGV[3] ~= '' then
    table.insert(args, 'MAXLEN'); table.insert(args, '~'); table.insert(args, ARGV[3])
  end
  table.insert(args, '*')
  table.insert(args, 'uuid'); table.insert(args, string.sub(m, p, p + ul - 1))
  p = p + ul
  if ml > 0 then
    table.insert(args, 'metadata'); table.insert(args, string.sub(m, p, p + ml - 1))
  end
  p = p + ml
  table.insert(args, 'payload'); table.insert(args, string.sub(m, p))
  redis.call(unpack(args))
  redis.call('ZREM', KEYS[2], m)
end
local next = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if #next == 0 then return -1 end
return tonumber(next[2])
"#;

impl RedisPubSub {
    /// Moves `topic`'s due delayed messages into its stream; returns when the next one is
    /// due (milliseconds since the epoch), if one waits.
    pub(super) async fn move_due(&self, topic: &str) -> redis::RedisResult<Option<u64>> {
        let mut con = self.commands.clone();
        let max_len = self
            .config
            .max_len
            .map(|n| n.to_string())
            .unwrap_or_default();
        let next: i64 = redis::cmd("EVAL")
            .arg(MOVE_SCRIPT)
            .arg(2)
            .arg(topic)
            .arg(key(topic))
            .arg(crate::pubsub::delay::millis(SystemTime::now()))
            .arg(MOVE_BATCH)
            .arg(max_len)
            .query_async(&mut con)
            .await?;
        Ok(u64::try_from(next).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_carries_uuid_metadata_and_payload_after_its_header() {
        let mut m = Message::with_uuid("u-1", &b"pay\nload"[..]);
        m.metadata.set("k", "v");
        let bytes = member(&m);
        let nl = bytes.iter().position(|b| *b == b'\n').unwrap();
        let header = std::str::from_utf8(&bytes[..nl]).unwrap();
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[1], "3");
        let meta_len: usize = parts[2].parse().unwrap();
        let rest = &bytes[nl + 1..];
        assert_eq!(&rest[..3], b"u-1");
        assert_eq!(&rest[3..3 + meta_len], br#"{"k":"v"}"#);
        assert_eq!(&rest[3 + meta_len..], b"pay\nload");
        assert_ne!(member(&m), bytes, "two publishes are two members");
    }
}
