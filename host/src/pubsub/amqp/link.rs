//! The broker connection: the URL, TLS, and a connection opened on first use and reopened when found dead.

use super::*;

pub(crate) fn parse_uri(url: &str) -> Result<AMQPUri> {
    // lapin's parse error quotes the whole URL, password included: do not pass it on.
    url.parse::<AMQPUri>()
        .map_err(|_| Error::pubsub_msg(NAME, format!("invalid url {}", redacted(url))))
}

/// The TLS settings of `config`: with `amqps://`, `ca_file`'s PEM as the trusted chain.
pub(super) fn tls_config(config: &AmqpConfig) -> Result<OwnedTLSConfig> {
    let amqps = scheme(&config.url) == "amqps";
    if amqps {
        tls::install_provider();
    }
    let cert_chain = match &config.ca_file {
        None => None,
        Some(_) if !amqps => {
            return Err(Error::pubsub_msg(
                NAME,
                format!(
                    "ca_file is set but url {} is not amqps:// (TLS)",
                    redacted(&config.url)
                ),
            ));
        }
        Some(ca) => Some(tls::read_ca_pem(NAME, ca)?),
    };
    Ok(OwnedTLSConfig {
        identity: None,
        cert_chain,
    })
}

pub(crate) async fn open_connection(
    uri: &AMQPUri,
    tls: &OwnedTLSConfig,
    url: &str,
    timeout: Duration,
) -> Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name("wasmill".into());
    let runtime = lapin::runtime::default_runtime().map_err(|e| lerr("the tokio runtime", e))?;
    let connect = Connection::connect_uri_with_config(uri.clone(), props, tls.clone(), runtime);
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(lerr(format!("connect {}", redacted(url)), e)),
        Err(_) => Err(Error::pubsub_msg(
            NAME,
            format!("connect {}: timed out after {timeout:?}", redacted(url)),
        )),
    }
}

/// A connection opened on first use and reopened when found dead.
pub(super) struct Link {
    pub(super) uri: AMQPUri,
    pub(super) tls: OwnedTLSConfig,
    pub(super) url: String,
    pub(super) connect_timeout: Duration,
    pub(super) conn: Mutex<Option<Arc<Connection>>>,
    pub(super) closed: CancellationToken,
}

impl Link {
    pub(super) fn new(
        uri: AMQPUri,
        tls: OwnedTLSConfig,
        config: &AmqpConfig,
        closed: CancellationToken,
    ) -> Link {
        Link {
            uri,
            tls,
            url: config.url.clone(),
            connect_timeout: config.connect_timeout,
            conn: Mutex::new(None),
            closed,
        }
    }

    pub(super) async fn get(&self) -> Result<Arc<Connection>> {
        let mut slot = self.conn.lock().await;
        if self.closed.is_cancelled() {
            return Err(closed(NAME));
        }
        if let Some(conn) = slot.as_ref()
            && conn.status().connected()
        {
            return Ok(conn.clone());
        }
        *slot = None;
        let conn =
            Arc::new(open_connection(&self.uri, &self.tls, &self.url, self.connect_timeout).await?);
        *slot = Some(conn.clone());
        Ok(conn)
    }

    pub(super) async fn close(&self) {
        let conn = self.conn.lock().await.take();
        if let Some(conn) = conn
            && conn.status().connected()
        {
            let _ =
                tokio::time::timeout(Duration::from_secs(2), conn.close(200, "OK".into())).await;
        }
    }
}
