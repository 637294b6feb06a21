//! Development helpers, used by `deploy/local.sh` and handy on a laptop:
//!
//! - `dev-certs --out DIR`: a throw-away CA and, signed by it, a server
//!   certificate for localhost/127.0.0.1/::1 (plus `--san` names) and a client
//!   certificate for mTLS. Private keys are written with mode 0600. Never for
//!   production: see deploy/TLS.md for openssl commands.
//! - `dev-listen PORT...`: accepts TCP connections on 127.0.0.1 and closes them
//!   at once, so a demo has ports to monitor; stop it to "close the port".

use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, date_time_ymd,
};
use serde_json::json;

use crate::cli::{DevCertsArgs, DevListenArgs, OutputFormat};
use crate::error::{CliError, Result};
use crate::output;

/// The files `dev-certs` writes, in order.
const FILES: [&str; 6] = [
    "ca.pem",
    "ca.key",
    "server.pem",
    "server.key",
    "client.pem",
    "client.key",
];

fn rc(what: &str) -> impl Fn(rcgen::Error) -> CliError + '_ {
    move |e| CliError::refused(format!("generating the {what}: {e}"))
}

/// Validity: from the start of last year to five years ahead.
fn validity(p: &mut CertificateParams) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let year = 1970 + i32::try_from(secs / 31_556_952).unwrap_or(0);
    p.not_before = date_time_ymd(year - 1, 1, 1);
    p.not_after = date_time_ymd(year + 5, 1, 1);
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "portwatch development");
    dn.push(DnType::CommonName, cn);
    dn
}

fn write(path: &Path, text: &str, secret: bool) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if secret {
        opts.mode(0o600);
    }
    opts.open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| CliError::usage(format!("--out: {}: {e}", path.display())))
}

pub fn certs(a: DevCertsArgs, out: OutputFormat) -> Result<()> {
    std::fs::create_dir_all(&a.out)
        .map_err(|e| CliError::usage(format!("--out: {}: {e}", a.out.display())))?;
    if let Some(f) = FILES.iter().find(|f| !a.force && a.out.join(f).exists()) {
        return Err(CliError::usage(format!(
            "--out: {} already exists; use --force to overwrite",
            a.out.join(f).display()
        )));
    }

    let ca_key = KeyPair::generate().map_err(rc("CA key"))?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = name("portwatch development CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca);
    let ca_cert = ca.self_signed(&ca_key).map_err(rc("CA certificate"))?;
    let issuer = Issuer::new(ca, &ca_key);

    let mut sans = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    sans.extend(a.san.iter().filter(|s| !s.is_empty()).cloned());
    let server_key = KeyPair::generate().map_err(rc("server key"))?;
    let mut server =
        CertificateParams::new(sans.clone()).map_err(|e| CliError::usage(format!("--san: {e}")))?;
    server.distinguished_name = name("portwatch coordinator");
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut server);
    let server_cert = server
        .signed_by(&server_key, &issuer)
        .map_err(rc("server certificate"))?;

    let client_key = KeyPair::generate().map_err(rc("client key"))?;
    let mut client = CertificateParams::new(Vec::<String>::new()).map_err(rc("client"))?;
    client.distinguished_name = name("portwatch client");
    client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut client);
    let client_cert = client
        .signed_by(&client_key, &issuer)
        .map_err(rc("client certificate"))?;

    let contents = [
        (ca_cert.pem(), false),
        (ca_key.serialize_pem(), true),
        (server_cert.pem(), false),
        (server_key.serialize_pem(), true),
        (client_cert.pem(), false),
        (client_key.serialize_pem(), true),
    ];
    for (file, (text, secret)) in FILES.iter().zip(contents.iter()) {
        write(&a.out.join(file), text, *secret)?;
    }
    let paths: Vec<String> = FILES
        .iter()
        .map(|f| a.out.join(f).display().to_string())
        .collect();
    match out {
        OutputFormat::Json => output::json(&json!({
            "ca": paths[0], "ca_key": paths[1],
            "server_cert": paths[2], "server_key": paths[3],
            "client_cert": paths[4], "client_key": paths[5],
            "server_names": sans,
        })),
        OutputFormat::Table => output::print(&format!(
            "wrote a development CA and certificates to {} (server names: {})\n\
             coordinator: tls_cert = {}, tls_key = {} (client_ca = {} for mTLS)\n\
             agents/CLI:  ca = {} (client_cert/client_key {} {} for mTLS)\n\
             not for production: see deploy/TLS.md\n",
            a.out.display(),
            sans.join(", "),
            paths[2],
            paths[3],
            paths[0],
            paths[0],
            paths[4],
            paths[5],
        )),
    }
}

pub async fn listen(a: DevListenArgs) -> Result<()> {
    let mut tasks = Vec::new();
    for port in a.ports {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| CliError::usage(format!("dev-listen: 127.0.0.1:{port}: {e}")))?;
        let addr = l
            .local_addr()
            .map_err(|e| CliError::usage(format!("dev-listen: {e}")))?;
        output::line(&format!("listening on {addr}"))?;
        tasks.push(tokio::spawn(async move {
            // Accept and close: a port check needs the handshake only.
            while let Ok((s, _)) = l.accept().await {
                drop(s);
            }
        }));
    }
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    for t in tasks {
        t.abort();
    }
    Ok(())
}
