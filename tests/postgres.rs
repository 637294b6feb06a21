//! A private PostgreSQL server for a test: [`postgres`] starts one on a free
//! loopback port in a temporary directory and [`Postgres`] stops it (fast) and
//! removes the directory when dropped, even when the test panics.
//!
//! The server binaries come from the distribution's packages. When they are
//! missing (a fresh CI machine), the first test installs `postgresql-15` (or
//! `postgresql`) with apt-get, under the set-up lock of [`crate::external`]
//! so that concurrent test processes install it once; `apt-get update` is run
//! only when the install fails without it. `.ci/run` installs the package
//! beforehand as a convenience, but nothing depends on that.
//!
//! `initdb` refuses to run as root, so as root the server runs as the
//! `postgres` user (which the package creates) in a directory that user owns;
//! as any other user it runs as that user. Local (socket) connections are
//! trusted; TCP connections need the password, so tests exercise the same
//! authentication a deployed coordinator does (and a wrong password fails).
//! Every step is bounded in time; a failure names the step and ends with the
//! server's log.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::external::{Lock, PREPARE_LIMIT, run_within, tail, target_dir};

/// The database user every test server has (its superuser).
pub const USER: &str = "portwatch";

/// The packages tried, in order, when the server binaries are missing.
const PACKAGES: &[&str] = &["postgresql-15", "postgresql"];

/// Where Debian and Ubuntu put each major version's server binaries.
const PACKAGE_BIN_ROOT: &str = "/usr/lib/postgresql";

/// How long `initdb`, a start or a stop may take.
const STEP_LIMIT: Duration = Duration::from_secs(90);

/// A running private PostgreSQL server. Connect as [`USER`] with
/// [`password`](Self::password) to [`url`](Self::url).
#[derive(Debug)]
pub struct Postgres {
    bin: PathBuf,
    /// `None` only while dropping.
    dir: Option<tempfile::TempDir>,
    port: u16,
    password: String,
    as_postgres_user: bool,
    /// Server options beyond the port and socket directory (TLS).
    ssl_options: String,
    /// `fsync` as PostgreSQL's own setting: off for tests (speed), on for benchmarks.
    fsync: bool,
}

impl Postgres {
    /// `postgres://portwatch@127.0.0.1:PORT/postgres` (no password in it).
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/postgres", self.port)
    }

    /// The password of [`USER`] over TCP.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn data_dir(&self) -> PathBuf {
        self.dir
            .as_ref()
            .map(|d| d.path().join("data"))
            .unwrap_or_default()
    }

    /// Stops the server as an operator's restart does (`pg_ctl stop -m fast`:
    /// sessions are ended, everything committed stays). Panics if it fails.
    pub fn stop(&self) {
        let mut stop = pg_command(&self.bin, "pg_ctl", self.as_postgres_user);
        stop.arg("-D")
            .arg(self.data_dir())
            .args(["-m", "fast", "-w", "-t", "30", "stop"]);
        if let Err(e) = run_within(&mut stop, "pg_ctl stop", STEP_LIMIT) {
            panic!("stopping PostgreSQL: {e}\n{}", self.log_tail());
        }
    }

    /// Starts the server again on the same port after [`Postgres::stop`].
    pub fn start(&self) {
        if let Err(e) = self.try_start_server() {
            panic!("starting PostgreSQL again: {e}\n{}", self.log_tail());
        }
    }

    fn try_start_server(&self) -> Result<(), String> {
        let socket_dir = self
            .dir
            .as_ref()
            .map(|d| d.path().to_path_buf())
            .unwrap_or_default();
        let mut start = pg_command(&self.bin, "pg_ctl", self.as_postgres_user);
        start
            .arg("-D")
            .arg(self.data_dir())
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync={}{}",
                self.port,
                socket_dir.display(),
                if self.fsync { "on" } else { "off" },
                self.ssl_options
            ))
            .arg("-l")
            .arg(socket_dir.join("log"))
            .args(["-w", "-t", "60", "start"]);
        run_within(&mut start, "pg_ctl start", STEP_LIMIT).map(|_| ())
    }

    /// The last lines of the server's log (for failure messages).
    pub fn log_tail(&self) -> String {
        let log = self
            .dir
            .as_ref()
            .map(|d| d.path().join("log"))
            .unwrap_or_default();
        std::fs::read_to_string(log)
            .map(|text| tail(&text, 20))
            .unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data_dir();
        let mut stop = pg_command(&self.bin, "pg_ctl", self.as_postgres_user);
        stop.arg("-D")
            .arg(&data)
            .args(["-m", "fast", "-w", "-t", "30", "stop"]);
        let _ = run_within(&mut stop, "pg_ctl stop", STEP_LIMIT);
        // The TempDir removes the directory (the server is gone or, at worst,
        // loses its files and exits).
        self.dir.take();
    }
}

/// Starts a private PostgreSQL server (installing the binaries first if they
/// are missing). Panics with what failed and what to do.
pub fn postgres() -> Postgres {
    try_postgres().unwrap_or_else(|e| panic!("starting a private PostgreSQL server: {e}"))
}

/// [`postgres`], serving TLS (as well as plain connections) with the certificate
/// and key in these PEM files, e.g. a [`crate::TestCert`] (made for `127.0.0.1`).
pub fn postgres_with_tls(cert: &Path, key: &Path) -> Postgres {
    try_start(Some((cert, key)))
        .unwrap_or_else(|e| panic!("starting a private PostgreSQL server with TLS: {e}"))
}

/// [`postgres`], with the failure as a value.
pub fn try_postgres() -> Result<Postgres, String> {
    try_start(None)
}

/// [`postgres`] with `fsync` on, as a production server runs: for benchmarks, where what a
/// durable commit costs is the figure.
pub fn postgres_durable() -> Postgres {
    try_start_with(None, true)
        .unwrap_or_else(|e| panic!("starting a private PostgreSQL server: {e}"))
}

fn try_start(tls: Option<(&Path, &Path)>) -> Result<Postgres, String> {
    try_start_with(tls, false)
}

fn try_start_with(tls: Option<(&Path, &Path)>, fsync: bool) -> Result<Postgres, String> {
    let bin = ensure_server_binaries()?;
    let as_postgres_user = is_root();
    let dir = tempfile::Builder::new()
        .prefix("portwatch-pg-")
        .tempdir()
        .map_err(|e| format!("creating a temporary directory: {e}"))?;
    let password = format!(
        "pw-{:x}-{:x}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    );
    let pwfile = dir.path().join("pwfile");
    std::fs::write(&pwfile, &password).map_err(|e| format!("writing {}: {e}", pwfile.display()))?;
    // Everything the server reads must be its user's.
    let mut owned = vec![dir.path().to_path_buf(), pwfile.clone()];
    let mut ssl_options = String::new();
    if let Some((cert, key)) = tls {
        // The server insists that its key is readable by its user only.
        let (server_cert, server_key) =
            (dir.path().join("server.crt"), dir.path().join("server.key"));
        std::fs::copy(cert, &server_cert)
            .and_then(|_| std::fs::copy(key, &server_key))
            .and_then(|_| {
                std::fs::set_permissions(&server_key, std::fs::Permissions::from_mode(0o600))
            })
            .map_err(|e| format!("copying the TLS certificate and key: {e}"))?;
        ssl_options = format!(
            " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            server_cert.display(),
            server_key.display()
        );
        owned.extend([server_cert, server_key]);
    }
    if as_postgres_user {
        let (uid, gid) = postgres_user()?;
        for path in &owned {
            chown(path, uid, gid)?;
        }
    }
    let mut server = Postgres {
        bin,
        dir: Some(dir),
        port: 0,
        password,
        as_postgres_user,
        ssl_options,
        fsync,
    };
    let data = server.data_dir();
    let mut initdb = pg_command(&server.bin, "initdb", as_postgres_user);
    initdb
        .arg("-D")
        .arg(&data)
        .args(["-U", USER, "-E", "UTF8"])
        .args(if fsync { &[][..] } else { &["--no-sync"][..] })
        .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
        .arg(format!("--pwfile={}", pwfile.display()));
    run_within(&mut initdb, "initdb", STEP_LIMIT)?;
    // A free port can be taken between our probe and the server's bind: retry.
    let mut last = String::new();
    for _ in 0..3 {
        server.port = free_port()?;
        match server.try_start_server() {
            Ok(()) => return Ok(server),
            Err(e) => {
                last = format!("{e}\nthe server's log:\n{}", server.log_tail());
                if !last.contains("could not bind") && !last.contains("already in use") {
                    break;
                }
            }
        }
    }
    Err(last)
}

/// A command running one of the server's programs, as the `postgres` user
/// when we are root.
fn pg_command(bin: &Path, program: &str, as_postgres_user: bool) -> Command {
    let path = bin.join(program);
    if as_postgres_user {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(path);
        cmd
    } else {
        Command::new(path)
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The directory holding `initdb` and `pg_ctl`: the newest major version under
/// [`PACKAGE_BIN_ROOT`], else the first on `PATH`.
fn find_server_binaries() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    let packaged = std::fs::read_dir(PACKAGE_BIN_ROOT)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            has_both(&bin).then_some((major, bin))
        })
        .max_by_key(|(major, _)| *major)
        .map(|(_, bin)| bin);
    packaged.or_else(|| {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .find(|dir| has_both(dir))
    })
}

/// The server binaries, installed from the distribution's packages once if
/// they are missing (see the module doc): the directory of `initdb` and
/// `pg_ctl` (for `deploy/local.sh --cluster`, `PORTWATCH_PG_BIN`).
pub fn ensure_server_binaries() -> Result<PathBuf, String> {
    if let Some(bin) = find_server_binaries() {
        return Ok(bin);
    }
    let base = target_dir();
    std::fs::create_dir_all(&base).map_err(|e| format!("creating {}: {e}", base.display()))?;
    let _lock = Lock::acquire(&base.join("postgresql-install.lock"), PREPARE_LIMIT)?;
    // Whoever held the lock before us may have installed it.
    if let Some(bin) = find_server_binaries() {
        return Ok(bin);
    }
    if !is_root() {
        return Err(format!(
            "the PostgreSQL server binaries (initdb, pg_ctl) are neither in \
             {PACKAGE_BIN_ROOT}/*/bin nor on PATH, and installing them needs root: \
             run `apt-get install postgresql-15` (or your distribution's PostgreSQL \
             server package) and run the tests again"
        ));
    }
    install_packages()?;
    find_server_binaries().ok_or_else(|| {
        format!(
            "the PostgreSQL packages installed, but initdb and pg_ctl are not in \
             {PACKAGE_BIN_ROOT}/*/bin nor on PATH"
        )
    })
}

/// `apt-get install` of the first of [`PACKAGES`] that installs, with an
/// `apt-get update` first only if a plain install fails.
fn install_packages() -> Result<(), String> {
    let install = |package: &str| {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive").args([
            "install",
            "-y",
            "--no-install-recommends",
            package,
        ]);
        run_within(
            &mut cmd,
            &format!("apt-get install {package}"),
            PREPARE_LIMIT,
        )
    };
    let mut failures = Vec::new();
    for package in PACKAGES {
        match install(package) {
            Ok(_) => return Ok(()),
            Err(e) => failures.push(e),
        }
    }
    let mut update = Command::new("apt-get");
    update
        .env("DEBIAN_FRONTEND", "noninteractive")
        .arg("update");
    if let Err(e) = run_within(&mut update, "apt-get update", PREPARE_LIMIT) {
        failures.push(e);
    } else {
        for package in PACKAGES {
            match install(package) {
                Ok(_) => return Ok(()),
                Err(e) => failures.push(e),
            }
        }
    }
    Err(format!(
        "the PostgreSQL server binaries are missing and installing them failed \
         (tried {} with apt-get, before and after apt-get update). Install \
         PostgreSQL's server package yourself (Debian/Ubuntu: apt-get install \
         postgresql-15) and run the tests again.\n{}",
        PACKAGES.join(", "),
        failures.join("\n")
    ))
}

/// The uid and gid of the `postgres` user.
fn postgres_user() -> Result<(libc::uid_t, libc::gid_t), String> {
    let name = c"postgres";
    // SAFETY: getpwnam with a NUL-terminated name; the entry is read at once,
    // before any other getpw* call in this thread could overwrite it.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return Err(
            "there is no `postgres` user to run the server as (initdb refuses \
                    root; the postgresql-common package creates the user)"
                .to_string(),
        );
    }
    // SAFETY: non-null, points to libc's static passwd entry.
    let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
    Ok((uid, gid))
}

fn chown(path: &Path, uid: libc::uid_t, gid: libc::gid_t) -> Result<(), String> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| format!("giving {} to the postgres user: {e}", path.display()))
}

/// A loopback port nobody listens on right now.
fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("finding a free loopback port: {e}"))
}
