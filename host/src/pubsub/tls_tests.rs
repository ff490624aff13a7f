//! TLS to every network backend, through the config as a user writes it (`url` with the TLS
//! scheme or mode, `ca_file`): each test starts a private server that serves TLS only, with a
//! certificate signed by a CA made for the test, then
//! - connects with `ca_file` naming that CA and carries a message through the broker;
//! - connects without it and is refused (the system's roots do not know the CA), so the
//!   certificate was checked and the first connection really was TLS.

use std::time::Duration;

use super::registry;
use super::testkit::{Kind, PrivateServer};
use crate::message::Message;

/// `extra` settings (TOML lines) keep the refused connection's wait short.
async fn through_tls(kind: Kind, backend: &str, extra: &str) {
    let server = PrivateServer::start_tls(kind)
        .await
        .unwrap_or_else(|e| panic!("private {kind:?} with TLS: {}", e.report()));
    let ca = server.certs().expect("a TLS server").ca.clone();
    let settings = |with_ca: bool| -> toml::Table {
        let mut text = format!("url = {:?}\n{extra}\n", server.url());
        if with_ca {
            text.push_str(&format!("ca_file = {:?}\n", ca.display().to_string()));
        }
        toml::from_str(&text).unwrap()
    };

    let b = registry::connect("secure", backend, &settings(true))
        .await
        .unwrap_or_else(|e| panic!("{backend} over TLS: {}", e.report()));
    let topic = format!("tls_{}", uuid::Uuid::new_v4().simple());
    let mut sub = b.subscriber.subscribe(&topic).await.unwrap();
    b.publisher
        .publish(&topic, vec![Message::new("over tls")])
        .await
        .unwrap_or_else(|e| panic!("{backend} publish over TLS: {}", e.report()));
    let m = tokio::time::timeout(Duration::from_secs(30), sub.recv())
        .await
        .expect("the message within 30 s")
        .expect("a message");
    assert_eq!(&m.payload[..], b"over tls");
    m.ack();
    drop(sub);
    let _ = b.publisher.close().await;
    let _ = b.subscriber.close().await;

    // Without the CA, and with a password in the URL: refused at once, the error naming the
    // server and TLS's reason, never the password.
    let url = server.url();
    let with_password = match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((user, host)) => {
                let user = user.split(':').next().unwrap_or_default();
                format!("{scheme}://{user}:secret-pw@{host}")
            }
            None => format!("{scheme}://u:secret-pw@{rest}"),
        },
        None => panic!("a URL: {url}"),
    };
    let mut table = settings(false);
    table.insert("url".into(), toml::Value::String(with_password));
    let refused = tokio::time::timeout(
        Duration::from_secs(60),
        registry::connect("secure", backend, &table),
    )
    .await
    .expect("refused within 60 s");
    let err = match refused {
        Err(e) => e.report(),
        Ok(_) => panic!("{backend}: a server whose CA is not trusted was accepted"),
    };
    eprintln!("{backend} without the CA: {err}");
    let address = format!("127.0.0.1:{}", server.port());
    assert!(
        err.contains(&address),
        "{backend}: the error names the server: {err}"
    );
    assert!(
        !err.contains("secret-pw"),
        "{backend}: the password leaked: {err}"
    );
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"),
        "{backend}: the error says the certificate was refused: {err}"
    );
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_over_tls() {
    through_tls(Kind::Redis, "redis", "command_timeout = \"2s\"").await;
}

#[cfg(feature = "nats")]
#[tokio::test]
async fn nats_over_tls() {
    through_tls(Kind::Nats, "nats", "request_timeout = \"3s\"").await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_over_tls() {
    through_tls(Kind::Postgres, "postgres", "").await;
}

#[cfg(feature = "mysql")]
#[tokio::test]
async fn mysql_over_tls() {
    through_tls(Kind::Mariadb, "mysql", "acquire_timeout = \"3s\"").await;
}

#[cfg(feature = "amqp")]
#[tokio::test]
async fn amqp_over_tls() {
    through_tls(Kind::Rabbitmq, "amqp", "connect_timeout = \"3s\"").await;
}

#[cfg(feature = "mqtt")]
#[tokio::test]
async fn mqtt_over_tls() {
    through_tls(Kind::Mosquitto, "mqtt", "connect_timeout = \"3s\"").await;
}
