//! Publishing from SQL: `wasmill_publish(topic, payload, metadata, uuid)`, a function the
//! backend creates beside its tables, so that a program in any language can publish inside
//! its own transaction, with its business write (the transactional outbox, from `psql`, a
//! Python or Go service, a trigger):
//!
//! ```sql
//! BEGIN;
//! INSERT INTO orders (id, item) VALUES (7, 'book');
//! SELECT wasmill_publish('forwarder_topic', convert_to('order 7', 'UTF8'),
//!                        '{"_wasmill_forward_to": "orders"}');
//! COMMIT;   -- or ROLLBACK: then nothing was published
//! ```
//!
//! It does what [`super::publish_in_tx`] does for one message: locks the topic's row (offsets
//! become visible in order), inserts the message, and notifies the subscribers at commit. It
//! returns the message's uuid (a new one unless given). `metadata` must be a JSON object of
//! strings (default `{}`); anything else is refused, so a consumer never meets a message it
//! cannot read.

/// The function, created (or replaced by this version) when the backend connects.
pub(super) const CREATE_FUNCTION: &str = r#"
CREATE OR REPLACE FUNCTION wasmill_publish(
    p_topic TEXT, p_payload BYTEA, p_metadata TEXT DEFAULT '{}', p_uuid TEXT DEFAULT NULL)
RETURNS TEXT LANGUAGE plpgsql AS $fn$
DECLARE
    id TEXT := COALESCE(NULLIF(p_uuid, ''), gen_random_uuid()::text);
    meta JSONB;
BEGIN
    BEGIN
        meta := p_metadata::jsonb;
    EXCEPTION WHEN others THEN
        RAISE EXCEPTION 'wasmill_publish: metadata is not JSON: %', p_metadata;
    END;
    IF jsonb_typeof(meta) <> 'object' OR EXISTS (
        SELECT 1 FROM jsonb_each(meta) AS e WHERE jsonb_typeof(e.value) <> 'string') THEN
        RAISE EXCEPTION 'wasmill_publish: metadata must be a JSON object of strings: %', p_metadata;
    END IF;
    INSERT INTO wasmill_topics (topic) VALUES (p_topic) ON CONFLICT DO NOTHING;
    PERFORM 1 FROM wasmill_topics WHERE topic = p_topic FOR UPDATE;
    INSERT INTO wasmill_messages (topic, uuid, metadata, payload)
        VALUES (p_topic, id, p_metadata, p_payload);
    PERFORM pg_notify('wasmill', p_topic);
    RETURN id;
END
$fn$"#;

/// Whether an error creating the function only means that another connection created it at
/// the same moment.
pub(super) fn raced(error: &str) -> bool {
    error.contains("already exists")
        || error.contains("duplicate key")
        || error.contains("tuple concurrently updated")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_concurrent_creation_is_forgiven() {
        assert!(raced("error: tuple concurrently updated"));
        assert!(raced("duplicate key value violates unique constraint"));
        assert!(!raced("permission denied for schema public"));
    }
}
