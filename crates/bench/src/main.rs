//! `portwatch-bench`: the figures of BENCHMARKS.md, measured on real sockets and
//! real processes on loopback, each beside a baseline measured in the same run.
//!
//! Every figure prints a table and one JSON line (`{"bench": "<figure>", …}`);
//! notes go to stderr. Every loop is bounded in count and in time; the default
//! run of all figures takes about three minutes on two cores, plus about a
//! minute and a half for time-to-alert's sample without fast confirmation;
//! `--quick` (which skips that sample) a fraction of that (the smoke test uses
//! it; its numbers are not figures).
//!
//! Panics: set-up that cannot go on (a child process that never starts, a test
//! certificate that cannot be written) panics through the e2e harness, which is
//! the right answer for a benchmark; measured paths return errors instead.

mod burst;
mod cpu_per_check;
mod create_monitor;
mod drive;
mod ingest;
mod link;
mod memory_disk;
mod postgres;
mod raw;
mod report;
mod scheduler;
mod stats;
mod targets;
mod time_to_alert;
mod timing_truth;
mod usage;
mod world;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};

/// One figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Figure {
    /// 1. Agent check engine CPU per check vs raw epoll and minimal tokio.
    CpuPerCheck,
    /// 2. Checks per second with 1024 in flight.
    Burst,
    /// 3. 100k monitors at 30 s: CPU, schedule lag, memory per monitor.
    Scheduler,
    /// 4. Userspace connect time minus the kernel's tcpi_rtt, idle and busy.
    TimingTruth,
    /// 5. Coordinator ingest from 5 regions, durably acknowledged.
    Ingest,
    /// 6. Port closed to notification (webhook, else the event stream).
    TimeToAlert,
    /// 7. Coordinator RSS and store size for 100k monitors × 5 regions.
    MemoryDisk,
    /// CreateMonitor calls/s and latency with 100k other monitors in the store
    /// (not part of `all`: run it by name).
    CreateMonitor,
    /// The PostgreSQL backend beside sled: store ingest, bytes per result,
    /// CreateMonitor calls/s, takeover after kill -9 (not part of `all`).
    Postgres,
    /// Every figure of the default set (1–7), in order.
    All,
}

impl Figure {
    const ORDER: [Figure; 7] = [
        Figure::CpuPerCheck,
        Figure::Burst,
        Figure::Scheduler,
        Figure::TimingTruth,
        Figure::Ingest,
        Figure::TimeToAlert,
        Figure::MemoryDisk,
    ];

    fn name(self) -> &'static str {
        match self {
            Figure::CpuPerCheck => "cpu-per-check",
            Figure::Burst => "burst",
            Figure::Scheduler => "scheduler",
            Figure::TimingTruth => "timing-truth",
            Figure::Ingest => "ingest",
            Figure::TimeToAlert => "time-to-alert",
            Figure::MemoryDisk => "memory-disk",
            Figure::CreateMonitor => "create-monitor",
            Figure::Postgres => "postgres",
            Figure::All => "all",
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "portwatch-bench",
    about = "portwatch benchmarks: tables for people, one JSON line per figure for machines",
    version
)]
struct Args {
    /// Figures to run (default: all).
    #[arg(value_enum)]
    figures: Vec<Figure>,
    /// Figures to run, comma-separated (same as the positional list).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Figure>,
    /// Small counts and short windows: checks that everything runs, not figures.
    #[arg(long)]
    quick: bool,
    /// Runs per figure where a figure repeats (default 5 for cpu-per-check, 3 for burst);
    /// for time-to-alert, the samples without fast confirmation (default 1, over a minute).
    #[arg(long)]
    runs: Option<usize>,
    /// Monitors for the scheduler and memory-disk figures, and the other
    /// tenant's monitors of create-monitor (default 100000).
    #[arg(long)]
    monitors: Option<usize>,
    /// CreateMonitor calls per phase of create-monitor (default 1000).
    #[arg(long)]
    creates: Option<usize>,
    /// Steady-state window of the scheduler figure, seconds (default 15, quick 5).
    #[arg(long)]
    window: Option<u64>,
    /// Which scheduler measurements to take.
    #[arg(long, value_enum, default_value = "both")]
    scheduler_variant: SchedulerVariant,
    /// Scheduler figure, agent variant: acknowledge the spool on this period
    /// instead of after every batch (what a backlog acknowledged at once does).
    #[arg(long)]
    ack_every_ms: Option<u64>,
    /// Memory-disk figure: rounds of history to write (one round = every
    /// monitor reported once by every region = one minute at the 60 s
    /// interval; 60 = one hour). Default 1.
    #[arg(long)]
    history_rounds: Option<u64>,
    /// Where portwatch-coordinator and portwatch-agent are (default: beside this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    #[arg(long, hide = true)]
    child_listeners: Option<usize>,
    #[arg(long, hide = true)]
    child_spin: Option<usize>,
    #[arg(long, hide = true, default_value_t = 600)]
    child_secs: u64,
}

/// What every figure may read.
#[derive(Clone, Debug)]
pub struct Opts {
    pub quick: bool,
    pub runs: Option<usize>,
    pub monitors: Option<usize>,
    pub creates: Option<usize>,
    pub window: Option<u64>,
    pub scheduler_variant: SchedulerVariant,
    pub ack_every_ms: Option<u64>,
    pub history_rounds: Option<u64>,
    pub bin_dir: PathBuf,
}

/// The scheduler figure's two measurements (see `scheduler.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SchedulerVariant {
    Both,
    /// The scheduler with a no-op check only.
    Scheduler,
    /// The real runner, checks and spool only.
    Agent,
}

impl Opts {
    /// A daemon binary built beside this one, or an error saying how to build it.
    pub fn daemon(&self, name: &str) -> anyhow::Result<PathBuf> {
        let p = self.bin_dir.join(name);
        if p.is_file() {
            Ok(p)
        } else {
            anyhow::bail!(
                "{} not found; build it first: cargo build --release --workspace (or pass --bin-dir)",
                p.display()
            )
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Hidden child modes: the bench starting itself as a target or a CPU burner.
    if let Some(n) = args.child_listeners {
        return exit(targets::serve(n, args.child_secs));
    }
    if let Some(n) = args.child_spin {
        return exit(targets::spin(n, args.child_secs));
    }

    let mut figures: Vec<Figure> = args.figures.iter().chain(&args.only).copied().collect();
    if figures.is_empty() || figures.contains(&Figure::All) {
        figures = Figure::ORDER.to_vec();
    }
    let bin_dir = args.bin_dir.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(PathBuf::from))
            .unwrap_or_default()
    });
    let opts = Opts {
        quick: args.quick,
        runs: args.runs,
        monitors: args.monitors,
        creates: args.creates,
        window: args.window,
        scheduler_variant: args.scheduler_variant,
        ack_every_ms: args.ack_every_ms,
        history_rounds: args.history_rounds,
        bin_dir,
    };
    usage::raise_nofile();
    let _ = rustls_provider();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portwatch-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    report::note(format!(
        "load average before: {}; quick: {}",
        usage::loadavg(),
        opts.quick
    ));
    let mut failed = Vec::new();
    for fig in figures {
        let began = std::time::Instant::now();
        // A set-up panic (the harness's way to fail) ends this figure, not the run.
        let run = std::panic::AssertUnwindSafe(|| match fig {
            Figure::CpuPerCheck => cpu_per_check::run(&rt, &opts),
            Figure::Burst => burst::run(&rt, &opts),
            Figure::Scheduler => scheduler::run(&rt, &opts),
            Figure::TimingTruth => timing_truth::run(&rt, &opts),
            Figure::Ingest => ingest::run(&rt, &opts),
            Figure::TimeToAlert => time_to_alert::run(&rt, &opts),
            Figure::MemoryDisk => memory_disk::run(&rt, &opts),
            Figure::CreateMonitor => create_monitor::run(&rt, &opts),
            Figure::Postgres => postgres::run(&rt, &opts),
            Figure::All => Ok(()),
        });
        let outcome = std::panic::catch_unwind(run)
            .unwrap_or_else(|_| Err(anyhow::anyhow!("set-up panicked (see stderr)")));
        match outcome {
            Ok(()) => report::note(format!(
                "{} done in {:.1} s; load average {}",
                fig.name(),
                began.elapsed().as_secs_f64(),
                usage::loadavg()
            )),
            Err(e) => {
                report::note(format!("{} failed: {e:#}", fig.name()));
                println!(
                    "{}",
                    report::json_line(fig.name(), serde_json::json!({"error": format!("{e:#}")}))
                );
                failed.push(fig.name());
            }
        }
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        report::note(format!("failed figures: {}", failed.join(", ")));
        ExitCode::FAILURE
    }
}

/// rustls needs exactly one crypto provider for the harness's TLS clients.
fn rustls_provider() -> bool {
    portwatch_e2e::crypto();
    true
}

fn exit(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portwatch-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
