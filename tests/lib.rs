//! Test harness for portwatch: real processes, real TLS, real gRPC clients.
//!
//! Used by the end-to-end suite in this crate and by the daemons' integration
//! tests, which all set up their coordinator, tenants, regions, agent tokens,
//! fake agents and monitors with one builder ([`World::builder`], in `world`).
//! Everything runs on loopback; every wait is bounded; every child process is
//! killed when its handle is dropped, even when a test panics.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use crate::postgres::Postgres;
use portwatch_proto::v1;
use portwatch_proto::v1::admin_service_client::AdminServiceClient;
use portwatch_proto::v1::agent_message::Msg as AgentMsg;
use portwatch_proto::v1::agent_service_client::AgentServiceClient;
use portwatch_proto::v1::coordinator_message::Msg as CoordMsg;
use tokio::sync::mpsc;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

pub mod external;
pub mod postgres;
pub mod world;

pub use world::{FAST_PLANS, RegionInfo, TENANT, TenantInfo, World, WorldBuilder, workspace_bin};

/// The operator token every test coordinator uses.
pub const OPERATOR_TOKEN: &str = "test-operator-token-0123456789";

/// Installs the ring crypto provider once (rustls needs exactly one).
pub fn crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A self-signed certificate for `localhost` and 127.0.0.1, written to `dir`.
#[derive(Clone)]
pub struct TestCert {
    pub cert_pem: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCert {
    pub fn generate(dir: &Path) -> TestCert {
        Self::generate_named(dir, "coordinator")
    }

    /// Like [`TestCert::generate`], written to `{name}.pem` and `{name}.key`
    /// (several certificates side by side in one directory).
    pub fn generate_named(dir: &Path, name: &str) -> TestCert {
        let ck = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .expect("generate a test certificate");
        let cert_pem = ck.cert.pem();
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &cert_pem).expect("write cert");
        std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write key");
        TestCert {
            cert_pem,
            cert,
            key,
        }
    }

    /// A rustls server configuration presenting this certificate (for test
    /// servers that speak TLS).
    pub fn server_config(&self) -> std::sync::Arc<rustls::ServerConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        crypto();
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("the test certificate parses");
        let key = PrivateKeyDer::from_pem_file(&self.key).expect("the test key parses");
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("a usable certificate and key");
        std::sync::Arc::new(config)
    }
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub lines: std_mpsc::Receiver<String>,
    pub name: String,
}

impl Proc {
    /// Starts `cmd` with stdout piped; stderr goes to the test's output.
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines: rx,
            name: name.to_string(),
        }
    }

    /// Like [`Proc::spawn`], but stderr lines arrive on `lines` too (for
    /// processes that report readiness or progress on stderr).
    pub fn spawn_merged(name: &str, mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let (tx, rx) = std_mpsc::channel();
        let stdout = child.stdout.take().expect("stdout piped");
        let stderr = child.stderr.take().expect("stderr piped");
        let readers: Vec<Box<dyn std::io::Read + Send>> = vec![Box::new(stdout), Box::new(stderr)];
        for r in readers {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Proc {
            child,
            lines: rx,
            name: name.to_string(),
        }
    }

    /// Waits for a stdout line containing `needle`; returns it.
    pub fn wait_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(_) => {
                    let status = self.child.try_wait().ok().flatten();
                    panic!(
                        "{}: no line containing {needle:?} within {timeout:?} (exit: {status:?})",
                        self.name
                    )
                }
            }
        }
    }

    /// SIGKILL, no chance to flush.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP`, `libc::SIGCONT`) to the process.
    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("a pid");
        // SAFETY: sending a signal to our own child.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal})");
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let pid = i32::try_from(self.child.id()).ok()?;
        // SAFETY: sending a signal to our own child.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pseudo-terminal, for behaviour that differs on a terminal (colours,
/// confirmation prompts): a child gets [`Pty::terminal`] as stdin or stderr and
/// `isatty` is true for it; the test reads what it wrote and types into it
/// through the other side.
pub struct Pty {
    master: std::fs::File,
    terminal: PathBuf,
    output: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Pty {
    pub fn open() -> Pty {
        use std::os::fd::FromRawFd;
        // SAFETY: plain libc calls on a descriptor we own; ptsname_r writes at
        // most buf.len() bytes, NUL-terminated.
        let (master, terminal) = unsafe {
            let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            assert!(fd >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
            let master = std::fs::File::from_raw_fd(fd);
            assert_eq!(libc::grantpt(fd), 0, "grantpt");
            assert_eq!(libc::unlockpt(fd), 0, "unlockpt");
            let mut buf = [0 as libc::c_char; 128];
            assert_eq!(
                libc::ptsname_r(fd, buf.as_mut_ptr(), buf.len()),
                0,
                "ptsname_r"
            );
            let name = std::ffi::CStr::from_ptr(buf.as_ptr());
            (master, PathBuf::from(name.to_string_lossy().into_owned()))
        };
        let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut reader = master.try_clone().expect("clone the pty master");
        let sink = output.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            // Ends with EIO once no process has the terminal open any more.
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                if let Ok(mut out) = sink.lock() {
                    out.extend_from_slice(&buf[..n]);
                }
            }
        });
        Pty {
            master,
            terminal,
            output,
        }
    }

    /// The terminal side, opened anew for a child's stdin, stdout or stderr.
    pub fn terminal(&self) -> Stdio {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&self.terminal)
            .expect("open the pty's terminal side");
        Stdio::from(file)
    }

    /// Types `text` as if at the keyboard.
    pub fn type_text(&self, text: &str) {
        use std::io::Write;
        (&self.master)
            .write_all(text.as_bytes())
            .expect("write to the pty");
    }

    /// Everything the terminal showed so far (the child's output and the echo).
    pub fn output(&self) -> String {
        let bytes = self.output.lock().map(|o| o.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Waits until the terminal showed `needle`; returns everything shown.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.output();
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "the terminal did not show {needle:?} within {timeout:?}; it showed:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A coordinator process with a temp data dir and TLS.
pub struct Coordinator {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub cert: TestCert,
    pub addr: SocketAddr,
    pub metrics: Option<SocketAddr>,
    pub extra: String,
    pub proc: Proc,
    /// The data dir is a tmpfs of this many MiB in a mount namespace of the
    /// coordinator's own (see [`Coordinator::start_in_tmpfs`]).
    pub tmpfs_mib: Option<u64>,
    /// The coordinator's PostgreSQL server when it runs on that backend
    /// ([`store_backend`]); stopped when the coordinator is dropped, kept
    /// across [`Coordinator::restart`].
    pub database: Option<Postgres>,
}

/// The store backend the coordinators of a test run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sled,
    Postgres,
}

/// The backend for this test process: `PORTWATCH_TEST_STORE` (`sled` or
/// `postgres`) when set, else PostgreSQL for a test binary whose name says
/// `on_postgres` (the suites run twice: `coordinator.rs` on sled,
/// `coordinator_on_postgres.rs`, which includes it, on PostgreSQL), else sled.
pub fn store_backend() -> Backend {
    match std::env::var("PORTWATCH_TEST_STORE").as_deref() {
        Ok("postgres") => return Backend::Postgres,
        Ok("sled") => return Backend::Sled,
        _ => {}
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let name = exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.contains("on_postgres") {
        Backend::Postgres
    } else {
        Backend::Sled
    }
}

impl Coordinator {
    /// Starts a coordinator; `extra` is appended to its TOML config.
    pub fn start(bin: &Path, dir: &Path, extra: &str) -> Coordinator {
        Self::start_inner(bin, dir, extra, None, None)
    }

    /// Like [`Coordinator::start`], with RLIMIT_NOFILE set to `limit` (soft
    /// and hard, so the process cannot raise it): a coordinator as a shell or
    /// a service manager with default limits would start it. [`Coordinator::restart`]
    /// starts it again without the limit.
    pub fn start_with_open_file_limit(
        bin: &Path,
        dir: &Path,
        extra: &str,
        limit: u64,
    ) -> Coordinator {
        Self::start_inner(bin, dir, extra, Some(limit), None)
    }

    /// Starts a coordinator whose data dir is a small tmpfs (`size_mib`),
    /// mounted in a private mount namespace (`unshare -m`, root) that lives as
    /// long as the process: a disk the test can fill and free through
    /// [`Coordinator::data_view`]. The store is gone when the process is.
    pub fn start_in_tmpfs(bin: &Path, dir: &Path, extra: &str, size_mib: u64) -> Coordinator {
        Self::start_inner(bin, dir, extra, None, Some(size_mib))
    }

    /// Like [`Coordinator::start`], presenting `cert` (coordinators of one
    /// cluster share a certificate, so one agent configuration trusts them all).
    pub fn start_with_cert(bin: &Path, dir: &Path, extra: &str, cert: &TestCert) -> Coordinator {
        Self::start_inner_with(bin, dir, extra, None, None, Some(cert.clone()))
    }

    fn start_inner(
        bin: &Path,
        dir: &Path,
        extra: &str,
        limit: Option<u64>,
        tmpfs_mib: Option<u64>,
    ) -> Coordinator {
        Self::start_inner_with(bin, dir, extra, limit, tmpfs_mib, None)
    }

    fn start_inner_with(
        bin: &Path,
        dir: &Path,
        extra: &str,
        limit: Option<u64>,
        tmpfs_mib: Option<u64>,
        cert: Option<TestCert>,
    ) -> Coordinator {
        let cert = cert.unwrap_or_else(|| TestCert::generate(dir));
        // On PostgreSQL: a private server of this coordinator's, unless the
        // test chose a store itself. Its keys go first: `extra` may end in
        // TOML tables.
        let database = (store_backend() == Backend::Postgres && !extra.contains("store ="))
            .then(crate::postgres::postgres);
        let extra = match &database {
            Some(pg) => {
                let password_file = dir.join("postgres-password");
                std::fs::write(&password_file, pg.password()).expect("write the password file");
                format!(
                    "store = \"postgres\"\npostgres_url = \"{}\"\npostgres_password_file = \"{}\"\n{extra}",
                    pg.url(),
                    password_file.display()
                )
            }
            None => extra.to_string(),
        };
        let (proc, addr, metrics) = Self::launch(
            bin,
            dir,
            &cert,
            &extra,
            "127.0.0.1:0".parse().expect("addr"),
            limit,
            tmpfs_mib,
        );
        Coordinator {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            cert,
            addr,
            metrics,
            extra,
            proc,
            tmpfs_mib,
            database,
        }
    }

    /// The data dir as the running coordinator sees it (through its mount
    /// namespace when it has a tmpfs of its own).
    pub fn data_view(&self) -> PathBuf {
        let data = self.dir.join("data");
        match self.tmpfs_mib {
            Some(_) => PathBuf::from(format!("/proc/{}/root", self.proc.child.id()))
                .join(data.strip_prefix("/").unwrap_or(&data)),
            None => data,
        }
    }

    fn launch(
        bin: &Path,
        dir: &Path,
        cert: &TestCert,
        extra: &str,
        listen: SocketAddr,
        open_file_limit: Option<u64>,
        tmpfs_mib: Option<u64>,
    ) -> (Proc, SocketAddr, Option<SocketAddr>) {
        let config = dir.join("coordinator.toml");
        let text = format!(
            "listen = \"{listen}\"\nmetrics_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\noperator_token = \"{OPERATOR_TOKEN}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n{}{extra}\n",
            dir.join("data").display(),
            cert.cert.display(),
            cert.key.display(),
            fast_timings(extra),
        );
        std::fs::write(&config, text).expect("write config");
        let mut cmd = match tmpfs_mib {
            None => Command::new(bin),
            Some(mib) => {
                let data = dir.join("data");
                std::fs::create_dir_all(&data).expect("data dir");
                // `exec`: the coordinator keeps this process's id.
                let mut c = Command::new("unshare");
                c.args(["-m", "--propagation", "private", "sh", "-c"])
                    .arg(format!(
                        "mount -t tmpfs -o size={mib}m portwatch-test \"$1\" && exec \"$2\" \"$3\" \"$4\""
                    ))
                    .arg("sh")
                    .arg(&data)
                    .arg(bin);
                c
            }
        };
        cmd.arg("--config")
            .arg(&config)
            .env("PORTWATCH_LOG", "info");
        if let Some(limit) = open_file_limit {
            use std::os::unix::process::CommandExt;
            let lim = libc::rlimit {
                rlim_cur: limit as libc::rlim_t,
                rlim_max: limit as libc::rlim_t,
            };
            // SAFETY: setrlimit is async-signal-safe and touches only the child.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut proc = Proc::spawn("coordinator", cmd);
        let metrics_line = proc.wait_line("metrics on http://", Duration::from_secs(20));
        let metrics = metrics_line
            .rsplit("http://")
            .next()
            .and_then(|s| s.trim_end_matches("/metrics").parse().ok());
        let line = proc.wait_line("listening on https://", Duration::from_secs(20));
        let addr: SocketAddr = line
            .rsplit("https://")
            .next()
            .and_then(|s| s.trim().parse().ok())
            .expect("listen address in the log line");
        (proc, addr, metrics)
    }

    /// Restarts on the same address and data dir (after `kill9` or `terminate`).
    pub fn restart(&mut self) {
        let (proc, addr, metrics) = Self::launch(
            &self.bin,
            &self.dir,
            &self.cert,
            &self.extra,
            self.addr,
            None,
            self.tmpfs_mib,
        );
        self.proc = proc;
        self.addr = addr;
        self.metrics = metrics;
    }

    /// A TLS channel to the coordinator.
    pub async fn channel(&self) -> Channel {
        crypto();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.cert.cert_pem))
            .domain_name("localhost");
        Endpoint::from_shared(format!("https://{}", self.addr))
            .expect("endpoint")
            .tls_config(tls)
            .expect("tls config")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connect to the coordinator")
    }

    /// An admin client presenting `token`.
    pub async fn admin(&self, token: &str) -> Admin {
        AdminServiceClient::with_interceptor(self.channel().await, Bearer::new(token))
    }

    /// The `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        let addr = self.metrics.expect("metrics address");
        http_get(addr, "/metrics").await
    }
}

/// A `portwatch-agent run` process connected to a test coordinator.
pub struct AgentProc {
    pub proc: Proc,
    pub config: PathBuf,
    pub bin: PathBuf,
    pub metrics: Option<SocketAddr>,
}

impl AgentProc {
    /// Starts an agent with its own data dir under `dir`; `extra` is appended to its TOML.
    pub fn start(
        bin: &Path,
        coord: &Coordinator,
        token: &str,
        dir: &Path,
        extra: &str,
    ) -> AgentProc {
        std::fs::create_dir_all(dir).expect("agent dir");
        let config = dir.join("agent.toml");
        let text = format!(
            "coordinator = \"https://{}\"\ntoken = \"{token}\"\nca = \"{}\"\ntls_server_name = \"localhost\"\ndata_dir = \"{}\"\nmetrics_listen = \"127.0.0.1:0\"\nbatch_wait = \"50ms\"\n{extra}\n",
            coord.addr,
            coord.cert.cert.display(),
            dir.join("spool").display(),
        );
        std::fs::write(&config, text).expect("write agent config");
        Self::launch(bin, &config)
    }

    /// Starts `bin run --config CONFIG` with a config file the caller wrote
    /// (for what `start` does not write, e.g. several coordinators).
    pub fn launch(bin: &Path, config: &Path) -> AgentProc {
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .env("PORTWATCH_LOG", "info");
        let mut proc = Proc::spawn("agent", cmd);
        let line = proc.wait_line("metrics on http://", Duration::from_secs(20));
        let metrics = line
            .rsplit("http://")
            .next()
            .and_then(|s| s.trim_end_matches("/metrics").parse().ok());
        proc.wait_line("running", Duration::from_secs(20));
        AgentProc {
            proc,
            config: config.to_path_buf(),
            bin: bin.to_path_buf(),
            metrics,
        }
    }

    /// Starts the same agent again (same config and spool) after a kill or stop.
    pub fn restart(&mut self) {
        let fresh = Self::launch(&self.bin, &self.config);
        *self = fresh;
    }

    /// The agent's `/metrics` text, or `None` if it does not answer in time.
    pub async fn try_metrics_text(&self) -> Option<String> {
        try_http_get(self.metrics?, "/metrics").await
    }

    /// The agent's `/metrics` text (a few attempts: a busy agent may be slow to answer).
    pub async fn metrics_text(&self) -> String {
        for _ in 0..4 {
            if let Some(text) = self.try_metrics_text().await {
                return text;
            }
        }
        panic!("the agent's /metrics did not answer in 4 attempts of 5 s")
    }
}

/// The value of a metric line starting with `name` (first match; labels included in `name`).
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A TCP listener that accepts and counts connections (each check is one).
pub struct CountingListener {
    pub addr: SocketAddr,
    pub accepted: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingListener {
    pub async fn start() -> CountingListener {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(s);
            }
        });
        CountingListener {
            addr,
            accepted,
            task,
        }
    }

    pub fn count(&self) -> u64 {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for CountingListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Short test timings for the coordinator, except the keys `extra` sets itself
/// (TOML refuses a key given twice).
fn fast_timings(extra: &str) -> String {
    [
        ("heartbeat_interval", "500ms"),
        ("heartbeat_timeout", "2s"),
        ("evaluate_every", "200ms"),
    ]
    .iter()
    .filter(|(key, _)| {
        !extra
            .lines()
            .any(|l| l.trim_start().starts_with(&format!("{key} ")))
    })
    .map(|(key, value)| format!("{key} = \"{value}\"\n"))
    .collect()
}

/// Like [`http_get`], but `None` instead of a panic when the server does not
/// answer within 5 s (a daemon busy with a burst of work).
pub async fn try_http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(String::from_utf8_lossy(&buf).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}

/// A minimal HTTP GET over loopback (for `/metrics`).
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("read in time")
        .expect("read");
    String::from_utf8_lossy(&buf).into_owned()
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<tonic::metadata::Ascii>);

impl Bearer {
    pub fn new(token: &str) -> Bearer {
        Bearer(format!("Bearer {token}").parse().expect("ascii token"))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

pub type Admin = AdminServiceClient<InterceptedService<Channel, Bearer>>;

/// Operator set-up shortcuts.
pub struct Setup;

impl Setup {
    /// Creates a tenant on `plan`; returns its id and token.
    pub async fn tenant(op: &mut Admin, id: &str, plan: v1::Plan) -> (String, String) {
        let r = op
            .create_tenant(v1::CreateTenantRequest {
                id: id.into(),
                name: format!("Tenant {id}"),
                plan: plan as i32,
            })
            .await
            .expect("create tenant")
            .into_inner();
        (r.tenant.expect("tenant").id, r.token)
    }

    /// Creates a region (public when `owner` is empty).
    pub async fn region(op: &mut Admin, name: &str, owner: &str) {
        op.create_region(v1::CreateRegionRequest {
            name: name.into(),
            description: String::new(),
            owner_tenant_id: owner.into(),
        })
        .await
        .expect("create region");
    }

    /// Creates an agent token for a region; returns the secret.
    pub async fn agent_token(op: &mut Admin, region: &str) -> String {
        op.create_agent_token(v1::CreateAgentTokenRequest {
            region: region.into(),
            description: "test".into(),
        })
        .await
        .expect("create agent token")
        .into_inner()
        .token
    }
}

/// A hand-driven agent: a real gRPC stream, messages under the test's control.
pub struct FakeAgent {
    pub agent_id: String,
    pub tx: mpsc::Sender<v1::AgentMessage>,
    pub rx: mpsc::UnboundedReceiver<Result<v1::CoordinatorMessage, Status>>,
    pub next_seq: u64,
    /// Monitors currently assigned (snapshot + updates applied).
    pub assigned: std::collections::BTreeMap<String, v1::Assignment>,
    pub welcome: Option<v1::Welcome>,
    pub acked: u64,
    pub check_now: Vec<String>,
    pub drained: bool,
    /// Whether the first snapshot arrived.
    pub snapshot: bool,
}

impl FakeAgent {
    /// Connects and says hello; fails with the server's status.
    pub async fn connect(
        coord: &Coordinator,
        token: &str,
        agent_id: &str,
    ) -> Result<FakeAgent, Status> {
        let mut client =
            AgentServiceClient::with_interceptor(coord.channel().await, Bearer::new(token));
        let (tx, out_rx) = mpsc::channel::<v1::AgentMessage>(1024);
        tx.send(v1::AgentMessage {
            msg: Some(AgentMsg::Hello(v1::Hello {
                agent_id: agent_id.into(),
                version: "test".into(),
                capabilities: vec![],
                assignment_revision: 0,
                last_seq: 0,
                hostname: "test-host".into(),
                status: None,
            })),
        })
        .await
        .map_err(|_| Status::internal("queue"))?;
        let response = client
            .connect(tokio_stream::wrappers::ReceiverStream::new(out_rx))
            .await?;
        let mut inbound = response.into_inner();
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(m)) => {
                        if in_tx.send(Ok(m)).is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = in_tx.send(Err(e));
                        break;
                    }
                }
            }
        });
        let mut agent = FakeAgent {
            agent_id: agent_id.into(),
            tx,
            rx: in_rx,
            next_seq: 1,
            assigned: Default::default(),
            welcome: None,
            acked: 0,
            check_now: Vec::new(),
            drained: false,
            snapshot: false,
        };
        // Welcome and snapshot come first.
        agent
            .pump_until(Duration::from_secs(5), |a| {
                a.welcome.is_some() && a.snapshot
            })
            .await?;
        let acked = agent.welcome.as_ref().map_or(0, |w| w.acked_seq);
        agent.next_seq = acked + 1;
        agent.acked = acked;
        Ok(agent)
    }

    fn apply(&mut self, m: v1::CoordinatorMessage) {
        match m.msg {
            Some(CoordMsg::Welcome(w)) => self.welcome = Some(w),
            Some(CoordMsg::Snapshot(s)) => {
                self.snapshot = true;
                self.assigned = s
                    .assignments
                    .into_iter()
                    .map(|a| (a.monitor_id.clone(), a))
                    .collect();
            }
            Some(CoordMsg::Update(u)) => {
                for id in u.removals {
                    self.assigned.remove(&id);
                }
                for a in u.upserts {
                    self.assigned.insert(a.monitor_id.clone(), a);
                }
            }
            Some(CoordMsg::Ack(a)) => self.acked = self.acked.max(a.up_to_seq),
            Some(CoordMsg::CheckNow(c)) => self.check_now.extend(c.monitor_ids),
            Some(CoordMsg::Drain(_)) => self.drained = true,
            None => {}
        }
    }

    /// Applies incoming messages until `done` holds or the time runs out.
    pub async fn pump_until(
        &mut self,
        timeout: Duration,
        done: impl Fn(&FakeAgent) -> bool,
    ) -> Result<(), Status> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !done(self) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Ok(m))) => self.apply(m),
                Ok(Some(Err(e))) => return Err(e),
                Ok(None) => return Err(Status::unavailable("stream closed")),
                Err(_) => {
                    return Err(Status::deadline_exceeded(format!(
                        "condition not met within {timeout:?}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Sends a result for `monitor_id` with `outcome`, checked now; returns its seq.
    pub async fn report(&mut self, monitor_id: &str, outcome: v1::Outcome) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let result = result(monitor_id, outcome, std::time::SystemTime::now());
        self.send_batch(vec![(seq, result)]).await;
        seq
    }

    /// Sends a batch of (seq, result).
    pub async fn send_batch(&mut self, items: Vec<(u64, v1::CheckResult)>) {
        let results = items
            .into_iter()
            .map(|(seq, r)| v1::SequencedResult {
                seq,
                result: Some(r),
            })
            .collect();
        self.tx
            .send(v1::AgentMessage {
                msg: Some(AgentMsg::Results(v1::ResultBatch { results })),
            })
            .await
            .expect("agent stream open");
    }

    /// Reports and waits for the acknowledgement.
    pub async fn report_acked(&mut self, monitor_id: &str, outcome: v1::Outcome) -> u64 {
        let seq = self.report(monitor_id, outcome).await;
        self.pump_until(Duration::from_secs(5), |a| a.acked >= seq)
            .await
            .expect("ack");
        seq
    }

    /// Sends heartbeats every 300 ms until this agent is dropped.
    pub fn keepalive(&self) {
        let weak = self.tx.downgrade();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let Some(tx) = weak.upgrade() else { return };
                let hb = v1::AgentMessage {
                    msg: Some(AgentMsg::Heartbeat(v1::Heartbeat::default())),
                };
                if tx.send(hb).await.is_err() {
                    return;
                }
            }
        });
    }

    pub async fn heartbeat(&self) {
        let _ = self
            .tx
            .send(v1::AgentMessage {
                msg: Some(AgentMsg::Heartbeat(v1::Heartbeat {
                    sent_at: Some(portwatch_proto::time::to_timestamp(
                        std::time::SystemTime::now(),
                    )),
                    ..Default::default()
                })),
            })
            .await;
    }
}

/// A result as an agent would send it.
pub fn result(
    monitor_id: &str,
    outcome: v1::Outcome,
    at: std::time::SystemTime,
) -> v1::CheckResult {
    v1::CheckResult {
        monitor_id: monitor_id.into(),
        region: "claimed-by-agent".into(),
        checked_at: Some(portwatch_proto::time::to_timestamp(at)),
        outcome: outcome as i32,
        detail: format!("{outcome:?}"),
        address: "203.0.113.10:5432".into(),
        dns_us: 10,
        connect_us: 1234,
        total_us: 1300,
        tcp_rtt_us: Some(1000),
        attempts: vec![],
        generation: 1,
        immediate: false,
    }
}

/// Polls `f` until it returns Some, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("{what}: not true within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------- notification receivers

/// A free loopback port (bound, then released) for a receiver started later.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local addr")
        .port()
}

/// One HTTP request a [`HttpReceiver`] got, with the status it answered.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub status: u16,
}

impl Recorded {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

type Responder = dyn Fn(&Recorded, usize) -> (u16, String) + Send + Sync;

/// A hand-written HTTP/1.1 server on loopback that records every request and
/// answers what the test's responder says (given the request and how many came
/// before it). Keep-alive is supported; every read is bounded in size and time.
pub struct HttpReceiver {
    pub addr: SocketAddr,
    requests: std::sync::Arc<std::sync::Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
    /// Serves HTTPS (see [`HttpReceiver::start_tls`]).
    tls: bool,
}

impl HttpReceiver {
    /// Answers 200 "ok" to everything.
    pub async fn ok() -> HttpReceiver {
        Self::start(|_, _| (200, "ok".to_string())).await
    }

    /// Starts on a free loopback port.
    pub async fn start(
        respond: impl Fn(&Recorded, usize) -> (u16, String) + Send + Sync + 'static,
    ) -> HttpReceiver {
        Self::start_on("127.0.0.1:0".parse().expect("addr"), respond).await
    }

    /// Starts on `addr` (e.g. a port a channel already points at).
    pub async fn start_on(
        addr: SocketAddr,
        respond: impl Fn(&Recorded, usize) -> (u16, String) + Send + Sync + 'static,
    ) -> HttpReceiver {
        Self::listen(addr, None, respond).await
    }

    /// Like [`HttpReceiver::start`], over HTTPS with `cert` (HTTP/1.1; the
    /// URLs it hands out start with `https://`).
    pub async fn start_tls(
        cert: &TestCert,
        respond: impl Fn(&Recorded, usize) -> (u16, String) + Send + Sync + 'static,
    ) -> HttpReceiver {
        let acceptor = tokio_rustls::TlsAcceptor::from(cert.server_config());
        Self::listen(
            "127.0.0.1:0".parse().expect("addr"),
            Some(acceptor),
            respond,
        )
        .await
    }

    async fn listen(
        addr: SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
        respond: impl Fn(&Recorded, usize) -> (u16, String) + Send + Sync + 'static,
    ) -> HttpReceiver {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind the HTTP receiver");
        let addr = listener.local_addr().expect("local addr");
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let respond: std::sync::Arc<Responder> = std::sync::Arc::new(respond);
        let recorded = requests.clone();
        let is_tls = tls.is_some();
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                let recorded = recorded.clone();
                let respond = respond.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let _ = match tls {
                        None => serve_http(conn, recorded, respond).await,
                        Some(acceptor) => match tls_accept(&acceptor, conn).await {
                            Ok(conn) => serve_http(conn, recorded, respond).await,
                            Err(e) => Err(e),
                        },
                    };
                });
            }
        });
        HttpReceiver {
            addr,
            requests,
            task,
            tls: is_tls,
        }
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until at least `n` requests arrived; returns them all.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        eventually(
            &format!("{n} request(s) at the HTTP receiver"),
            timeout,
            || {
                let got = self.requests();
                async move { (got.len() >= n).then_some(got) }
            },
        )
        .await
    }
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TLS handshake as a server, bounded in time.
async fn tls_accept(
    acceptor: &tokio_rustls::TlsAcceptor,
    conn: tokio::net::TcpStream,
) -> std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(conn))
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

async fn serve_http<S>(
    conn: S,
    recorded: std::sync::Arc<std::sync::Mutex<Vec<Recorded>>>,
    respond: std::sync::Arc<Responder>,
) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    const LIMIT: usize = 1 << 20;
    let (rd, mut wr) = tokio::io::split(conn);
    let mut rd = tokio::io::BufReader::new(rd);
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(30), rd.read_line(&mut line))
            .await
            .map_err(|_| std::io::Error::other("idle"))??;
        if n == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), rd.read_line(&mut h))
                .await
                .map_err(|_| std::io::Error::other("slow headers"))??;
            if n == 0 || h == "\r\n" || h == "\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
            if headers.len() > 100 {
                return Err(std::io::Error::other("too many headers"));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        if len > LIMIT {
            return Err(std::io::Error::other("body too large"));
        }
        let mut body = vec![0u8; len];
        tokio::time::timeout(Duration::from_secs(10), rd.read_exact(&mut body))
            .await
            .map_err(|_| std::io::Error::other("slow body"))??;
        let mut req = Recorded {
            method,
            path,
            headers,
            body,
            status: 0,
        };
        let (status, answer) = {
            let mut all = recorded.lock().unwrap_or_else(|e| e.into_inner());
            let (status, answer) = respond(&req, all.len());
            req.status = status;
            all.push(req);
            (status, answer)
        };
        let content_type = if answer.starts_with('{') {
            "application/json"
        } else {
            "text/plain"
        };
        let head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            match status {
                200 => "OK",
                202 => "Accepted",
                400 => "Bad Request",
                500 => "Internal Server Error",
                503 => "Service Unavailable",
                _ => "Status",
            },
            answer.len()
        );
        wr.write_all(head.as_bytes()).await?;
        wr.write_all(answer.as_bytes()).await?;
        wr.flush().await?;
    }
}

/// One message an [`SmtpServer`] accepted.
#[derive(Clone, Debug, Default)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    /// The DATA section as sent (headers and encoded body), dot-unstuffed.
    pub data: String,
    /// `(username, password)` from AUTH PLAIN or LOGIN, if the client logged in.
    pub auth: Option<(String, String)>,
    /// Whether the message arrived over TLS (after STARTTLS, or implicit TLS).
    pub tls: bool,
}

impl Mail {
    fn split(&self) -> (&str, &str) {
        self.data
            .split_once("\r\n\r\n")
            .unwrap_or((self.data.as_str(), ""))
    }

    /// A header's value, unfolded (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<String> {
        let (head, _) = self.split();
        let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
        unfolded.split("\r\n").find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    /// The body, decoded from quoted-printable or base64 when the headers say so.
    pub fn body_text(&self) -> String {
        let (_, body) = self.split();
        let cte = self
            .header("Content-Transfer-Encoding")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let bytes = match cte.as_str() {
            "quoted-printable" => decode_qp(body),
            "base64" => decode_base64(&body.replace("\r\n", "")),
            _ => body.as_bytes().to_vec(),
        };
        String::from_utf8_lossy(&bytes).replace("\r\n", "\n")
    }
}

fn decode_qp(s: &str) -> Vec<u8> {
    let s = s.replace("=\r\n", "");
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'='
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(v) = u8::from_str_radix(hex, 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Standard base64 (with padding), enough for SMTP AUTH and MIME bodies.
pub fn decode_base64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter_map(val) {
        acc = (acc << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// How an [`SmtpServer`] uses TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpTlsMode {
    /// Plain TCP throughout (what [`SmtpServer::start`] does).
    Plain,
    /// Plaintext greeting, `STARTTLS` advertised in EHLO (AUTH only after the
    /// upgrade), then TLS; the client says EHLO again over TLS. A client that
    /// skips STARTTLS is still served, so that a test sees it (`Mail::tls`).
    StartTls,
    /// TLS from the first byte (SMTPS, port 465 style).
    Implicit,
}

/// A small SMTP server on loopback (plain TCP, STARTTLS or implicit TLS):
/// EHLO/HELO, STARTTLS, AUTH PLAIN/LOGIN, MAIL, RCPT, DATA, RSET, NOOP, QUIT.
/// Records every accepted message, and whether it came over TLS.
pub struct SmtpServer {
    pub addr: SocketAddr,
    mails: std::sync::Arc<std::sync::Mutex<Vec<Mail>>>,
    task: tokio::task::JoinHandle<()>,
    tls_failures: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl SmtpServer {
    pub async fn start() -> SmtpServer {
        Self::start_on("127.0.0.1:0".parse().expect("addr")).await
    }

    /// Starts on `addr` (e.g. a port a channel already points at, after the
    /// test kept it unreachable for a while).
    pub async fn start_on(addr: SocketAddr) -> SmtpServer {
        Self::listen(addr, SmtpTlsMode::Plain, None).await
    }

    /// Starts a server speaking TLS (`mode`) with `cert` (a certificate for
    /// `localhost` and 127.0.0.1, e.g. [`TestCert::generate_named`]).
    pub async fn start_tls(mode: SmtpTlsMode, cert: &TestCert) -> SmtpServer {
        Self::start_tls_on("127.0.0.1:0".parse().expect("addr"), mode, cert).await
    }

    /// Like [`SmtpServer::start_tls`], on `addr`.
    pub async fn start_tls_on(addr: SocketAddr, mode: SmtpTlsMode, cert: &TestCert) -> SmtpServer {
        let acceptor = tokio_rustls::TlsAcceptor::from(cert.server_config());
        Self::listen(addr, mode, Some(acceptor)).await
    }

    async fn listen(
        addr: SocketAddr,
        mode: SmtpTlsMode,
        acceptor: Option<tokio_rustls::TlsAcceptor>,
    ) -> SmtpServer {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind the SMTP server");
        let addr = listener.local_addr().expect("local addr");
        let mails = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let tls_failures = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let store = mails.clone();
        let failures = tls_failures.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                let store = store.clone();
                let failures = failures.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = serve_smtp(conn, mode, acceptor, store, failures).await;
                });
            }
        });
        SmtpServer {
            addr,
            mails,
            task,
            tls_failures,
        }
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// TLS handshakes that failed (e.g. the client refused the certificate).
    pub fn tls_failures(&self) -> u64 {
        self.tls_failures.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until at least `n` messages arrived; returns them all.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Mail> {
        eventually(
            &format!("{n} message(s) at the SMTP server"),
            timeout,
            || {
                let got = self.mails();
                async move { (got.len() >= n).then_some(got) }
            },
        )
        .await
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One connection: the TLS handshake where the mode says, then the dialogue.
async fn serve_smtp(
    conn: tokio::net::TcpStream,
    mode: SmtpTlsMode,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    store: std::sync::Arc<std::sync::Mutex<Vec<Mail>>>,
    failures: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> std::io::Result<()> {
    let handshake = async |conn| match &acceptor {
        Some(a) => tls_accept(a, conn).await.inspect_err(|_| {
            failures.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }),
        None => Err(std::io::Error::other("no TLS certificate configured")),
    };
    match mode {
        SmtpTlsMode::Plain => {
            smtp_session(conn, SmtpStage::Plain, &store).await?;
        }
        SmtpTlsMode::Implicit => {
            let tls = handshake(conn).await?;
            smtp_session(tls, SmtpStage::Tls { greet: true }, &store).await?;
        }
        SmtpTlsMode::StartTls => {
            if let SmtpEnd::StartTls(conn) =
                smtp_session(conn, SmtpStage::BeforeStartTls, &store).await?
            {
                let tls = handshake(conn).await?;
                smtp_session(tls, SmtpStage::Tls { greet: false }, &store).await?;
            }
        }
    }
    Ok(())
}

/// Where an SMTP dialogue stands with respect to TLS.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SmtpStage {
    /// Plain TCP; STARTTLS not offered.
    Plain,
    /// Plain TCP; STARTTLS offered, AUTH not yet.
    BeforeStartTls,
    /// Over TLS; `greet` unless it follows STARTTLS (no second greeting then).
    Tls { greet: bool },
}

/// How a dialogue ended.
enum SmtpEnd<S> {
    Closed,
    /// The client asked for STARTTLS and got 220: the raw stream to upgrade.
    StartTls(S),
}

async fn smtp_session<S>(
    conn: S,
    stage: SmtpStage,
    store: &std::sync::Mutex<Vec<Mail>>,
) -> std::io::Result<SmtpEnd<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let tls = matches!(stage, SmtpStage::Tls { .. });
    // BufReader passes writes through to the stream.
    let mut io = tokio::io::BufReader::new(conn);
    async fn read<R: tokio::io::AsyncBufRead + Unpin>(rd: &mut R) -> std::io::Result<String> {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(30), rd.read_line(&mut line))
            .await
            .map_err(|_| std::io::Error::other("idle"))??;
        if n == 0 || line.len() > 100_000 {
            return Err(std::io::Error::other("closed"));
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }
    async fn send<W: tokio::io::AsyncWrite + Unpin>(
        wr: &mut W,
        text: &[u8],
    ) -> std::io::Result<()> {
        wr.write_all(text).await?;
        wr.flush().await
    }
    let plain = |b64: &str| {
        let raw = decode_base64(b64);
        let parts: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        (
            parts.get(1).cloned().unwrap_or_default(),
            parts.get(2).cloned().unwrap_or_default(),
        )
    };
    if stage != (SmtpStage::Tls { greet: false }) {
        send(&mut io, b"220 portwatch-test ESMTP\r\n").await?;
    }
    let mut mail = Mail::default();
    let mut auth = None;
    loop {
        let line = read(&mut io).await?;
        let upper = line.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            if stage == SmtpStage::BeforeStartTls {
                "250-portwatch-test\r\n250-STARTTLS\r\n250 8BITMIME\r\n".into()
            } else {
                "250-portwatch-test\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n".into()
            }
        } else if upper.starts_with("HELO") {
            "250 portwatch-test\r\n".into()
        } else if upper == "STARTTLS" {
            if stage != SmtpStage::BeforeStartTls {
                "503 5.5.1 TLS not available now\r\n".into()
            } else if !io.buffer().is_empty() {
                // Commands pipelined behind STARTTLS would cross into TLS.
                send(&mut io, b"501 5.5.4 Nothing may follow STARTTLS\r\n").await?;
                return Ok(SmtpEnd::Closed);
            } else {
                send(&mut io, b"220 2.0.0 Ready to start TLS\r\n").await?;
                return Ok(SmtpEnd::StartTls(io.into_inner()));
            }
        } else if upper.starts_with("AUTH PLAIN") {
            let arg = line.get(10..).unwrap_or_default().trim().to_string();
            let arg = if arg.is_empty() {
                send(&mut io, b"334 \r\n").await?;
                read(&mut io).await?
            } else {
                arg
            };
            auth = Some(plain(&arg));
            "235 2.7.0 Authentication successful\r\n".into()
        } else if upper.starts_with("AUTH LOGIN") {
            send(&mut io, b"334 VXNlcm5hbWU6\r\n").await?;
            let user = String::from_utf8_lossy(&decode_base64(&read(&mut io).await?)).into_owned();
            send(&mut io, b"334 UGFzc3dvcmQ6\r\n").await?;
            let pass = String::from_utf8_lossy(&decode_base64(&read(&mut io).await?)).into_owned();
            auth = Some((user, pass));
            "235 2.7.0 Authentication successful\r\n".into()
        } else if upper.starts_with("MAIL FROM:") {
            mail = Mail {
                from: line[10..].trim().to_string(),
                auth: auth.clone(),
                tls,
                ..Mail::default()
            };
            "250 2.1.0 OK\r\n".into()
        } else if upper.starts_with("RCPT TO:") {
            mail.to.push(line[8..].trim().to_string());
            "250 2.1.5 OK\r\n".into()
        } else if upper == "DATA" {
            send(&mut io, b"354 End data with <CR><LF>.<CR><LF>\r\n").await?;
            let mut data = String::new();
            loop {
                let l = read(&mut io).await?;
                if l == "." {
                    break;
                }
                data.push_str(l.strip_prefix('.').unwrap_or(&l));
                data.push_str("\r\n");
                if data.len() > 10 << 20 {
                    return Err(std::io::Error::other("message too large"));
                }
            }
            mail.data = data;
            mail.tls = tls;
            let n = {
                let mut all = store.lock().unwrap_or_else(|e| e.into_inner());
                all.push(std::mem::take(&mut mail));
                all.len()
            };
            format!("250 2.0.0 OK queued as test-{n}\r\n")
        } else if upper == "RSET" {
            mail = Mail::default();
            "250 2.0.0 OK\r\n".into()
        } else if upper == "NOOP" {
            "250 2.0.0 OK\r\n".into()
        } else if upper == "QUIT" {
            send(&mut io, b"221 2.0.0 Bye\r\n").await?;
            let _ = io.shutdown().await;
            return Ok(SmtpEnd::Closed);
        } else {
            "502 5.5.2 Command not recognized\r\n".into()
        };
        send(&mut io, reply.as_bytes()).await?;
    }
}

/// Every stored result of a monitor, oldest first (all pages).
pub async fn all_results(admin: &Admin, monitor: &str) -> Vec<v1::CheckResult> {
    let mut admin = admin.clone();
    let mut out = Vec::new();
    let mut token = String::new();
    for _ in 0..1000 {
        let page = admin
            .list_results(v1::ListResultsRequest {
                monitor_id: monitor.into(),
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("list results")
            .into_inner();
        out.extend(page.results);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    out
}

/// A result's `checked_at` in milliseconds since the epoch (0 when unset).
pub fn checked_at_ms(r: &v1::CheckResult) -> u64 {
    r.checked_at
        .as_ref()
        .and_then(portwatch_proto::time::from_timestamp)
        .map_or(0, |t| portwatch_proto::time::unix_micros(t) / 1000)
}
