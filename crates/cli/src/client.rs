//! The connection to the coordinator's AdminService.
//!
//! Guarantees:
//! - `https://` always means TLS verified against `--ca` (tonic silently speaks
//!   plaintext to an `http://` endpoint, so the scheme is checked here, not
//!   trusted); `http://` is accepted only for a loopback address, matching the
//!   coordinator's rule that `insecure_plaintext` only listens on loopback;
//! - the connection is made eagerly with a bounded timeout, so "cannot connect"
//!   is reported as such (exit 3) before any request is attempted;
//! - every request carries `authorization: Bearer <token>`.

use std::net::IpAddr;
use std::time::Duration;

use portwatch_proto::v1;
use portwatch_proto::v1::admin_service_client::AdminServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

use crate::cli::ConnectArgs;
use crate::error::{CliError, Result, chain};

/// The coordinator's port when `--addr` names none.
pub const DEFAULT_PORT: u16 = 7400;

/// How long to wait for TCP + TLS to the coordinator.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// The generated client with our interceptor.
pub type Admin = AdminServiceClient<InterceptedService<Channel, Bearer>>;

/// A connected admin client and the tenant the user asked to act on.
pub struct Client {
    pub admin: Admin,
    /// Empty: the token's own tenant (or none, for operator-wide calls).
    pub tenant: String,
}

/// The scheme and host of `--addr`, checked.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    url: String,
    tls: bool,
    host: String,
}

fn parse_addr(addr: &str) -> Result<Target> {
    let (scheme, rest) = match addr.split_once("://") {
        Some((s, r)) => (s, r),
        // "host:port" alone means TLS.
        None => ("https", addr),
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(CliError::usage(format!(
            "--addr: {addr:?} has no host; use https://host:port"
        )));
    }
    let (host, has_port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, rest) = v6.split_once(']').unwrap_or((v6, ""));
            (host.to_string(), rest.starts_with(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((h, _)) => (h.to_string(), true),
            None => (authority.to_string(), false),
        },
    };
    // The coordinator's documented port, not the scheme's (443 / 80).
    let authority = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:{DEFAULT_PORT}")
    };
    let tls = match scheme {
        "https" => true,
        "http" => {
            let loopback =
                host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                return Err(CliError::usage(format!(
                    "--addr: plaintext http:// only to a loopback coordinator, not {host}; use https://"
                )));
            }
            false
        }
        other => {
            return Err(CliError::usage(format!(
                "--addr: unknown scheme {other:?}; use https://host:port"
            )));
        }
    };
    Ok(Target {
        url: format!("{scheme}://{authority}"),
        tls,
        host,
    })
}

fn read(flag: &str, path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| CliError::usage(format!("{flag}: {}: {e}", path.display())))
}

impl Client {
    /// Connects as the flags say. Errors: usage (2) for bad flags or unreadable
    /// files, connect (3) when the coordinator cannot be reached.
    pub async fn connect(args: &ConnectArgs) -> Result<Client> {
        let target = parse_addr(&args.addr)?;
        let token = args.token.as_deref().ok_or_else(|| {
            CliError::usage(
                "--token (or PORTWATCH_TOKEN) is required: the operator's or a tenant's token",
            )
        })?;
        if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(CliError::usage(
                "--token: must be non-empty, without whitespace",
            ));
        }
        let bearer: MetadataValue<Ascii> = format!("Bearer {token}")
            .parse()
            .map_err(|_| CliError::usage("--token: must be ASCII"))?;
        let mut endpoint = Endpoint::from_shared(target.url.clone())
            .map_err(|e| CliError::usage(format!("--addr: {:?}: {e}", args.addr)))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if target.tls {
            let ca_path = args.ca.as_deref().ok_or_else(|| {
                CliError::usage(
                    "--ca (or PORTWATCH_CA) is required for https: the CA certificate (PEM) that signed the coordinator's certificate",
                )
            })?;
            let ca = read("--ca", ca_path)?;
            let name = args
                .tls_server_name
                .clone()
                .unwrap_or_else(|| target.host.clone());
            let mut tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .domain_name(name);
            match (&args.client_cert, &args.client_key) {
                (Some(c), Some(k)) => {
                    tls = tls.identity(Identity::from_pem(
                        read("--client-cert", c)?,
                        read("--client-key", k)?,
                    ));
                }
                (None, None) => {}
                _ => {
                    return Err(CliError::usage(
                        "--client-cert and --client-key go together",
                    ));
                }
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| CliError::usage(format!("TLS settings: {}", chain(&e))))?;
        } else if args.ca.is_some() || args.client_cert.is_some() {
            return Err(CliError::usage(
                "--ca/--client-cert need an https:// --addr",
            ));
        }
        let channel = tokio::time::timeout(CONNECT_TIMEOUT * 2, endpoint.connect())
            .await
            .map_err(|_| {
                CliError::connect(format!(
                    "cannot connect to {}: no answer within {}s",
                    target.url,
                    (CONNECT_TIMEOUT * 2).as_secs()
                ))
            })?
            .map_err(|e| {
                CliError::connect(format!("cannot connect to {}: {}", target.url, chain(&e)))
            })?;
        Ok(Client {
            admin: AdminServiceClient::with_interceptor(channel, Bearer(bearer)),
            tenant: args.tenant.clone().unwrap_or_default(),
        })
    }

    /// Every monitor of the tenant, following pages.
    pub async fn all_monitors(&mut self) -> Result<Vec<v1::Monitor>> {
        self.monitors_tagged("").await
    }

    /// Every monitor of the tenant carrying `tag` (every one when empty),
    /// following pages.
    pub async fn monitors_tagged(&mut self, tag: &str) -> Result<Vec<v1::Monitor>> {
        let mut out = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .admin
                .list_monitors(v1::ListMonitorsRequest {
                    tenant_id: self.tenant.clone(),
                    page_size: 1000,
                    page_token: page_token.clone(),
                    tag: tag.to_string(),
                })
                .await?
                .into_inner();
            out.extend(page.monitors);
            if page.next_page_token.is_empty() || page.next_page_token == page_token {
                return Ok(out);
            }
            page_token = page.next_page_token;
        }
    }

    /// A monitor named by id or by name. A name must be unique; nothing matching
    /// is answered with the server's own NOT_FOUND.
    pub async fn find_monitor(&mut self, key: &str) -> Result<v1::Monitor> {
        let all = self.all_monitors().await?;
        if let Some(m) = all.iter().find(|m| m.id == key) {
            return Ok(m.clone());
        }
        let named: Vec<&v1::Monitor> = all.iter().filter(|m| m.name == key).collect();
        match named.as_slice() {
            [one] => Ok((*one).clone()),
            [] => {
                // Asked anyway: the coordinator decides other refusals (a
                // tenant_id the operator must give, permissions).
                let got = self
                    .admin
                    .get_monitor(v1::GetMonitorRequest {
                        tenant_id: self.tenant.clone(),
                        id: key.to_string(),
                    })
                    .await;
                match got {
                    Ok(m) => Ok(m.into_inner()),
                    // The server's "id: no such monitor" (or, for a name with a
                    // space, "id: contains whitespace") would not say which; the
                    // user gave a name or an id, so repeat it.
                    Err(s)
                        if s.code() == tonic::Code::NotFound
                            || (s.code() == tonic::Code::InvalidArgument
                                && s.message().starts_with("id:")) =>
                    {
                        Err(CliError::refused(format!(
                            "no monitor with the id or name {key:?} [not_found]"
                        )))
                    }
                    Err(s) => Err(s.into()),
                }
            }
            many => Err(CliError::usage(format!(
                "{key:?} names {} monitors ({}); use an id",
                many.len(),
                many.iter()
                    .map(|m| m.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Results of a monitor in [since, until), oldest first, following pages.
    pub async fn results(
        &mut self,
        monitor_id: &str,
        since: Option<prost_types::Timestamp>,
        until: Option<prost_types::Timestamp>,
        region: &str,
    ) -> Result<Vec<v1::CheckResult>> {
        let mut out = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .admin
                .list_results(v1::ListResultsRequest {
                    tenant_id: self.tenant.clone(),
                    monitor_id: monitor_id.to_string(),
                    since,
                    until,
                    region: region.to_string(),
                    page_size: 1000,
                    page_token: page_token.clone(),
                })
                .await?
                .into_inner();
            out.extend(page.results);
            if page.next_page_token.is_empty() || page.next_page_token == page_token {
                return Ok(out);
            }
            page_token = page.next_page_token;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Failure;

    #[test]
    fn addresses_are_checked() {
        let t = parse_addr("https://coord.example.com:7400").unwrap();
        assert!(t.tls);
        assert_eq!(t.host, "coord.example.com");
        let t = parse_addr("127.0.0.1:7400").unwrap();
        assert_eq!(t.url, "https://127.0.0.1:7400");
        let t = parse_addr("http://[::1]:7400").unwrap();
        assert!(!t.tls);
        assert_eq!(t.host, "::1");
        assert!(parse_addr("http://localhost:7400").is_ok());
        let e = parse_addr("http://10.0.0.1:7400").unwrap_err();
        assert_eq!(e.kind, Failure::Usage);
        assert!(e.message.contains("loopback"), "{e}");
        assert!(parse_addr("ftp://x:1").is_err());
        // No port: the coordinator's 7400, not https' 443.
        assert_eq!(
            parse_addr("https://coord.example.com").unwrap().url,
            "https://coord.example.com:7400"
        );
        assert_eq!(
            parse_addr("coord.example.com").unwrap().url,
            "https://coord.example.com:7400"
        );
        assert_eq!(parse_addr("http://[::1]").unwrap().url, "http://[::1]:7400");
        assert_eq!(
            parse_addr("https://[::1]:7401/").unwrap().url,
            "https://[::1]:7401"
        );
        assert_eq!(
            parse_addr("https://coord.example.com").unwrap().host,
            "coord.example.com"
        );
        assert!(parse_addr("https://").is_err());
    }
}
