//! Broker URLs in errors and logs: never with their password.

/// `url` with the password of its userinfo replaced by `***`; user, host, port, path and
/// query stay, so a log still says which server and which account. A URL without a password
/// is returned as it is.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            // NATS reads a lone userinfo as a token (`nats://token@host`): a secret. Elsewhere
            // it is a user name, kept.
            None if is_token_scheme(scheme) => format!("{scheme}://***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

fn is_token_scheme(scheme: &str) -> bool {
    matches!(scheme.to_ascii_lowercase().as_str(), "nats" | "tls")
}

/// The scheme of `url` in lower case (`rediss`, `amqps`, `mqtts`), or `""`.
pub fn scheme(url: &str) -> String {
    url.split_once("://")
        .map(|(s, _)| s.to_ascii_lowercase())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_passwords_and_tokens_only() {
        assert_eq!(
            redacted("amqp://guest:secret@127.0.0.1:5672/%2f?heartbeat=5"),
            "amqp://guest:***@127.0.0.1:5672/%2f?heartbeat=5"
        );
        assert_eq!(
            redacted("postgres://u:p@w@db:5432/test"),
            "postgres://u:***@db:5432/test"
        );
        assert_eq!(redacted("nats://tok@127.0.0.1"), "nats://***@127.0.0.1");
        assert_eq!(redacted("redis://me@127.0.0.1"), "redis://me@127.0.0.1");
        assert_eq!(redacted("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(
            redacted("mysql://root@127.0.0.1/test?a=b@c"),
            "mysql://root@127.0.0.1/test?a=b@c"
        );
        assert_eq!(redacted("not a url"), "not a url");
        assert!(!redacted("mqtts://me:hunter2@broker:8883").contains("hunter2"));
        assert_eq!(scheme("Rediss://x"), "rediss");
        assert_eq!(scheme("x"), "");
    }
}
