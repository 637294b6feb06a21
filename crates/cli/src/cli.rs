//! The command line: every subcommand and flag of `portwatch`, as clap types.
//!
//! Only the shape lives here (what a user may type, with help text); what each
//! command does lives in `commands/`, examples and exit codes in `help.rs`.
//! Connection flags are global, so they may follow the subcommand, and each has
//! an environment variable so a shell session can be set up once
//! (`PORTWATCH_ADDR`, `PORTWATCH_TOKEN`, ...); `--help` shows them apart, under
//! "Global options". Every flag and argument has help text (a test checks).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::help;
use crate::names;

/// The heading of the flags every command takes (as `gh` shows "inherited flags").
pub const GLOBAL: &str = "Global options";

/// portwatch admin CLI: monitors, status, incidents, regions, tenants.
#[derive(Parser, Debug)]
#[command(
    name = "portwatch",
    version,
    about = "portwatch admin CLI: multi-region TCP port monitoring",
    long_about = "portwatch admin CLI: talks to the coordinator's AdminService over TLS.\n\n\
                  Set PORTWATCH_ADDR, PORTWATCH_TOKEN and PORTWATCH_CA once per shell; \
                  use --output json for scripts.",
    after_help = help::MAIN
)]
pub struct Cli {
    #[command(flatten)]
    pub conn: ConnectArgs,
    /// Output format: aligned tables for people, JSON for scripts.
    #[arg(
        long,
        short = 'o',
        global = true,
        help_heading = GLOBAL,
        value_enum,
        default_value = "table",
        env = "PORTWATCH_OUTPUT"
    )]
    pub output: OutputFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// Where the coordinator is and who we are.
#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Coordinator URL: https://host[:port] (port 7400 when left out; http:// only
    /// to a loopback coordinator running with insecure_plaintext).
    #[arg(
        long,
        global = true,
        help_heading = GLOBAL,
        env = "PORTWATCH_ADDR",
        default_value = "https://127.0.0.1:7400"
    )]
    pub addr: String,
    /// Bearer token: the operator's or a tenant's.
    #[arg(long, global = true, help_heading = GLOBAL, env = "PORTWATCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) that signed the coordinator's certificate.
    #[arg(long, global = true, help_heading = GLOBAL, env = "PORTWATCH_CA")]
    pub ca: Option<PathBuf>,
    /// TLS server name to expect (default: the host in --addr).
    #[arg(long, global = true, help_heading = GLOBAL, env = "PORTWATCH_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
    /// Client certificate (PEM) when the coordinator requires mTLS.
    #[arg(long, global = true, help_heading = GLOBAL, env = "PORTWATCH_CLIENT_CERT")]
    pub client_cert: Option<PathBuf>,
    /// Client key (PEM) for --client-cert.
    #[arg(long, global = true, help_heading = GLOBAL, env = "PORTWATCH_CLIENT_KEY")]
    pub client_key: Option<PathBuf>,
    /// Tenant to act on (required with the operator token for tenant objects;
    /// a tenant token implies its own tenant).
    #[arg(long, global = true, help_heading = GLOBAL, env = "PORTWATCH_TENANT")]
    pub tenant: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show who the token belongs to.
    Whoami,
    /// Create, list, show, change, pause, resume and delete port monitors.
    #[command(subcommand)]
    Monitor(MonitorCmd),
    /// Every monitor, one line each, with a mark per region.
    #[command(after_help = help::STATUS)]
    Status(StatusArgs),
    /// Check results of one monitor (newest last).
    #[command(after_help = help::RESULTS)]
    Results(ResultsArgs),
    /// Incidents, newest first.
    #[command(after_help = help::INCIDENTS)]
    Incidents(IncidentsArgs),
    /// One incident: show it with its timeline, or acknowledge it.
    #[command(subcommand)]
    Incident(IncidentCmd),
    /// Maintenance windows: nobody is notified about the monitors they cover.
    #[command(subcommand)]
    Maintenance(MaintenanceCmd),
    /// Routing rules: which channels notices go to, by tag and severity.
    #[command(subcommand)]
    Routing(RoutingCmd),
    /// Probe regions and their live agents.
    Regions,
    /// Probe agents, online and known (operator).
    Agents(AgentsArgs),
    /// Notification channels.
    #[command(subcommand)]
    Channel(ChannelCmd),
    /// Tenants and plans (operator).
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Create or delete a probe region (operator).
    #[command(subcommand)]
    Region(RegionCmd),
    /// Tokens agents use to join a region (operator).
    #[command(subcommand)]
    AgentToken(AgentTokenCmd),
    /// Stream live events (incidents, region state changes) until Ctrl-C.
    #[command(after_help = help::WATCH)]
    Watch(WatchArgs),
    /// Make the tenant's monitors match a TOML file (create and update by name;
    /// delete the others only with --prune).
    #[command(after_help = help::APPLY)]
    Apply(ApplyArgs),
    /// The CLI's version and the coordinator's.
    #[command(after_help = help::VERSION)]
    Version,
    /// Print a shell completion script.
    #[command(after_help = help::COMPLETIONS)]
    Completions(CompletionsArgs),
    /// Print the man page (or write one page per command with --dir).
    Man(ManArgs),
    /// Write a development CA, server and client certificates (not for production).
    DevCerts(DevCertsArgs),
    /// Listen on local TCP ports and accept connections (a target for demos).
    DevListen(DevListenArgs),
}

/// A monitor named by id or by its (unique) name.
#[derive(Args, Debug, Clone)]
pub struct MonitorRef {
    /// Monitor id or name.
    pub monitor: String,
}

#[derive(Subcommand, Debug)]
pub enum MonitorCmd {
    /// Create a monitor; the first check runs at once.
    #[command(after_help = help::MONITOR_ADD)]
    Add(MonitorAdd),
    /// List the tenant's monitors.
    #[command(alias = "ls", after_help = help::MONITOR_LIST)]
    List(MonitorList),
    /// One monitor: settings, per-region state and a latency sparkline.
    #[command(after_help = help::MONITOR_SHOW)]
    Show(MonitorRef),
    /// Change a monitor; only the flags given change.
    #[command(after_help = help::MONITOR_UPDATE)]
    Update(MonitorUpdate),
    /// Delete a monitor.
    #[command(alias = "delete", alias = "remove")]
    Rm(MonitorRef),
    /// Stop checking a monitor.
    Pause(MonitorRef),
    /// Start checking a paused monitor again.
    Resume(MonitorRef),
    /// Notify nobody about a monitor for a while (a one-off maintenance
    /// window from now); results and incidents are still recorded.
    Mute(MonitorMute),
}

#[derive(Args, Debug)]
pub struct MonitorMute {
    /// Monitor id or name.
    pub monitor: String,
    /// How long, e.g. 2h (1m to 7d).
    #[arg(long = "for", value_parser = parse_millis)]
    pub duration: u64,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Only monitors carrying this tag.
    #[arg(long)]
    pub tag: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum MaintenanceCmd {
    /// Create a window: one-off (--start, --end) or weekly (--weekly, --at,
    /// --for, --tz), covering --monitors, --tags or --all.
    Add(MaintenanceAdd),
    /// The tenant's windows, in force first, with their next occurrence.
    #[command(alias = "ls")]
    List,
    /// Delete a window.
    #[command(alias = "delete", alias = "remove")]
    Rm {
        /// Window id.
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum RoutingCmd {
    /// The tenant's rules, in the order they are tried.
    #[command(alias = "ls")]
    List,
    /// Replace every rule, in order: each --rule is
    /// "tags=a,b;severity=critical;channels=ch-1,ch-2" (tags and severity
    /// optional: any). The first rule matching a notice decides its channels;
    /// none matching: the tenant's default channels. Monitors that name their
    /// own channels are never routed.
    Set {
        /// One rule; repeat for more.
        #[arg(long = "rule", required = true)]
        rules: Vec<String>,
    },
    /// Remove every rule (the tenant's default channels for everything).
    Clear,
}

#[derive(Args, Debug)]
pub struct MaintenanceAdd {
    /// A name for people ("database upgrade").
    #[arg(long)]
    pub name: Option<String>,
    /// Monitors it covers (ids or names), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub monitors: Vec<String>,
    /// Monitors carrying any of these tags, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Every monitor of the tenant.
    #[arg(long)]
    pub all: bool,
    /// One-off: the start, RFC 3339 ("2026-12-24T22:00:00Z").
    #[arg(long, requires = "end", conflicts_with = "weekly")]
    pub start: Option<String>,
    /// One-off: the end, RFC 3339.
    #[arg(long, requires = "start")]
    pub end: Option<String>,
    /// Weekly: the days, comma-separated (mon,tue,wed,thu,fri,sat,sun).
    #[arg(long, value_delimiter = ',', requires_all = ["at", "for_", "tz"])]
    pub weekly: Vec<String>,
    /// Weekly: the local start time, HH:MM.
    #[arg(long)]
    pub at: Option<String>,
    /// Weekly: how long each occurrence lasts, e.g. 2h.
    #[arg(long = "for", id = "for_", value_parser = parse_millis)]
    pub duration: Option<u64>,
    /// Weekly: the IANA time zone of --at ("Europe/Berlin", "UTC").
    #[arg(long)]
    pub tz: Option<String>,
}

#[derive(Args, Debug)]
pub struct MonitorList {
    /// Print only the names, one per line (for scripts and shell completion).
    #[arg(long)]
    pub names: bool,
    /// Only monitors carrying this tag.
    #[arg(long)]
    pub tag: Option<String>,
}

#[derive(Args, Debug)]
pub struct MonitorAdd {
    /// DNS name or IP literal to check.
    #[arg(long)]
    pub host: String,
    /// TCP port (1-65535).
    #[arg(long, value_parser = parse_port)]
    pub port: u16,
    /// Regions to check from, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub regions: Vec<String>,
    /// Display name (default "host:port").
    #[arg(long)]
    pub name: Option<String>,
    /// Time between checks, e.g. 30s or 5m (default 60s, at least the plan's minimum).
    #[arg(long, value_parser = parse_millis)]
    pub interval: Option<u64>,
    /// Deadline over DNS and handshake, 1s-10s (default 3s).
    #[arg(long, value_parser = parse_millis)]
    pub timeout: Option<u64>,
    /// quorum: ceil(0.66 n) regions down opens an incident; unanimous: all of them.
    #[arg(long, value_enum)]
    pub consensus: Option<names::Consensus>,
    /// Address family.
    #[arg(long, value_enum)]
    pub family: Option<names::Family>,
    /// any: one address connecting is success; all: every resolved address must.
    #[arg(long, value_enum)]
    pub address_policy: Option<names::AddressPolicy>,
    /// How the probe closes its connection.
    #[arg(long, value_enum)]
    pub close_mode: Option<names::CloseMode>,
    /// Channel ids to notify, comma-separated (default: the tenant's default channels).
    #[arg(long, value_delimiter = ',')]
    pub channels: Vec<String>,
    /// Create the monitor paused.
    #[arg(long)]
    pub paused: bool,
    /// Flap detection (default on): a monitor whose incident keeps opening and
    /// closing sends one "flapping" notice and stays open until stable.
    #[arg(long, value_enum)]
    pub flap_detection: Option<names::FlapDetection>,
    /// State changes within the flap window that make it flapping, 2-100 (0 = default, 4).
    #[arg(long)]
    pub flap_threshold: Option<u32>,
    /// The window state changes are counted in, e.g. 20m; "default" = 20 intervals.
    #[arg(long, value_parser = parse_millis_or_default)]
    pub flap_window: Option<u64>,
    /// While flapping, how long every region must stay up before the incident
    /// closes, e.g. 5m; "default" = 5 intervals.
    #[arg(long, value_parser = parse_millis_or_default)]
    pub flap_stable_for: Option<u64>,
    /// All-up rounds (every region's latest N results up) before an incident
    /// closes, 1-100 (default 1).
    #[arg(long)]
    pub recover_after: Option<u32>,
    /// Repeat the notice while an incident stays open and unacknowledged, e.g.
    /// 30m (at least 1m); "off" (the default) sends none.
    #[arg(long, value_parser = parse_millis_or_off)]
    pub remind_every: Option<u64>,
    /// At most this many reminders per incident, 1-100 (default 10).
    #[arg(long)]
    pub remind_max: Option<u32>,
    /// Tags for choosing monitors (maintenance windows, --tag filters),
    /// comma-separated: lower-case letters, digits and . _ : -.
    #[arg(long, value_delimiter = ',')]
    pub tags: Vec<String>,
    /// The port must NOT accept connections: alert when a quorum of regions
    /// connects ("TCP Port Open (expected closed)").
    #[arg(long)]
    pub expect_closed: bool,
    /// Slow ports, by consensus: "TCP Port Slow" when a quorum of regions
    /// connects slower than this (e.g. 250ms, below the timeout) for
    /// --degraded-checks checks each.
    #[arg(long, value_parser = parse_millis)]
    pub degraded_after: Option<u64>,
    /// Consecutive slow checks per region before it counts, 1-100 (default 3).
    #[arg(long)]
    pub degraded_checks: Option<u32>,
}

#[derive(Args, Debug)]
pub struct MonitorUpdate {
    /// Monitor id or name.
    pub monitor: String,
    /// New display name.
    #[arg(long)]
    pub name: Option<String>,
    /// New DNS name or IP literal to check.
    #[arg(long)]
    pub host: Option<String>,
    /// New TCP port (1-65535).
    #[arg(long, value_parser = parse_port)]
    pub port: Option<u16>,
    /// Replace the region list (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub regions: Option<Vec<String>>,
    /// Time between checks, e.g. 30s or 5m (at least the plan's minimum).
    #[arg(long, value_parser = parse_millis)]
    pub interval: Option<u64>,
    /// Deadline over DNS and handshake, 1s-10s.
    #[arg(long, value_parser = parse_millis)]
    pub timeout: Option<u64>,
    /// quorum: ceil(0.66 n) regions down opens an incident; unanimous: all of them.
    #[arg(long, value_enum)]
    pub consensus: Option<names::Consensus>,
    /// Address family.
    #[arg(long, value_enum)]
    pub family: Option<names::Family>,
    /// any: one address connecting is success; all: every resolved address must.
    #[arg(long, value_enum)]
    pub address_policy: Option<names::AddressPolicy>,
    /// How the probe closes its connection.
    #[arg(long, value_enum)]
    pub close_mode: Option<names::CloseMode>,
    /// Replace the channel list (comma-separated).
    #[arg(long, value_delimiter = ',', conflicts_with = "default_channels")]
    pub channels: Option<Vec<String>>,
    /// Notify the tenant's default channels again (clears --channels).
    #[arg(long)]
    pub default_channels: bool,
    /// Turn flap detection on or off (a flapping incident is held open with one notice).
    #[arg(long, value_enum)]
    pub flap_detection: Option<names::FlapDetection>,
    /// State changes within the window that make it flapping, 2-100; 0 = back to the default (4).
    #[arg(long)]
    pub flap_threshold: Option<u32>,
    /// The window state changes are counted in, e.g. 20m; "default" = back to 20 intervals.
    #[arg(long, value_parser = parse_millis_or_default)]
    pub flap_window: Option<u64>,
    /// While flapping, how long every region must stay up before the incident closes,
    /// e.g. 5m; "default" = back to 5 intervals.
    #[arg(long, value_parser = parse_millis_or_default)]
    pub flap_stable_for: Option<u64>,
    /// All-up rounds before an incident closes, 1-100; 0 = back to the default (1).
    #[arg(long)]
    pub recover_after: Option<u32>,
    /// Repeat the notice while an incident stays open and unacknowledged, e.g.
    /// 30m (at least 1m); "off" stops reminders.
    #[arg(long, value_parser = parse_millis_or_off)]
    pub remind_every: Option<u64>,
    /// At most this many reminders per incident, 1-100; 0 = back to the default (10).
    #[arg(long)]
    pub remind_max: Option<u32>,
    /// Replace the tags (comma-separated).
    #[arg(long, value_delimiter = ',', conflicts_with = "clear_tags")]
    pub tags: Option<Vec<String>>,
    /// Remove every tag.
    #[arg(long)]
    pub clear_tags: bool,
    /// true: the port must NOT accept connections; false: it must (the default).
    #[arg(long)]
    pub expect_closed: Option<bool>,
    /// Slowness threshold (e.g. 250ms); "off" turns slowness alerts off.
    #[arg(long, value_parser = parse_millis_or_off)]
    pub degraded_after: Option<u64>,
    /// Consecutive slow checks per region, 1-100; 0 = back to the default (3).
    #[arg(long)]
    pub degraded_checks: Option<u32>,
}

#[derive(Args, Debug)]
pub struct ResultsArgs {
    /// Monitor id or name.
    pub monitor: String,
    /// Start of the window: a duration ago (1h, 30m) or an RFC 3339 time.
    #[arg(long, default_value = "1h", value_parser = parse_when)]
    pub since: When,
    /// End of the window (default now): a duration ago or an RFC 3339 time.
    #[arg(long, value_parser = parse_when)]
    pub until: Option<When>,
    /// Only this region.
    #[arg(long)]
    pub region: Option<String>,
    /// Show at most this many, the newest (0 = all in the window).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

#[derive(Args, Debug)]
pub struct IncidentsArgs {
    /// Only incidents still open.
    #[arg(long)]
    pub open: bool,
    /// Only this monitor (id or name).
    #[arg(long)]
    pub monitor: Option<String>,
    /// Show at most this many (0 = all).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
}

#[derive(Subcommand, Debug)]
pub enum IncidentCmd {
    /// An incident with its first steps and its timeline (opened, confirmed
    /// by region, notified, reminded, acknowledged, resolved).
    Show {
        /// Incident id.
        id: String,
    },
    /// Acknowledge an open incident: its reminders stop, PagerDuty gets an
    /// `acknowledge` event, the recovery notice names who acknowledged.
    Ack {
        /// Incident id.
        id: String,
        /// A note for the others on call (up to 500 characters).
        #[arg(long)]
        note: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct AgentsArgs {
    /// Only this region.
    #[arg(long)]
    pub region: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum ChannelCmd {
    /// Create a channel.
    #[command(subcommand, after_help = help::CHANNEL_ADD)]
    Add(ChannelAdd),
    /// List channels.
    #[command(alias = "ls")]
    List,
    /// Delete a channel.
    #[command(alias = "delete", alias = "remove")]
    Rm {
        /// Channel id.
        id: String,
    },
    /// Send a test notification through a channel and show the receiver's answer.
    Test {
        /// Channel id.
        id: String,
    },
    /// Notification deliveries and their state (did the page go out?).
    Deliveries {
        /// Only deliveries of this incident.
        #[arg(long)]
        incident: Option<String>,
        /// Show at most this many (0 = all).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

/// Settings every channel has.
#[derive(Args, Debug)]
pub struct ChannelCommon {
    /// Display name (default derived from the target).
    #[arg(long)]
    pub name: Option<String>,
    /// Notify this channel for monitors that name no channels of their own.
    #[arg(long)]
    pub default: bool,
}

#[derive(Subcommand, Debug)]
pub enum ChannelAdd {
    /// JSON POST with an HMAC-SHA256 signature header.
    #[command(after_help = help::CHANNEL_ADD)]
    Webhook {
        /// Where to POST: an https:// (or http://) URL.
        #[arg(long)]
        url: String,
        /// HMAC-SHA256 key for the X-Portwatch-Signature header (at least 16 characters).
        #[arg(long, env = "PORTWATCH_WEBHOOK_SECRET", hide_env_values = true)]
        secret: Option<String>,
        #[command(flatten)]
        common: ChannelCommon,
    },
    /// Slack incoming webhook.
    #[command(after_help = help::CHANNEL_ADD)]
    Slack {
        /// The incoming webhook's URL (https://hooks.slack.com/services/...).
        #[arg(long)]
        webhook_url: String,
        #[command(flatten)]
        common: ChannelCommon,
    },
    /// Email over SMTP.
    #[command(after_help = help::CHANNEL_ADD)]
    Email {
        /// SMTP server name; its certificate must match it.
        #[arg(long)]
        smtp_host: String,
        /// SMTP port. Default: 587 (starttls), 465 (implicit), 25 (none).
        #[arg(long, value_parser = parse_port)]
        smtp_port: Option<u16>,
        /// starttls (never falls back to plaintext), implicit TLS, or none (loopback or
        /// private test servers only).
        #[arg(long, value_enum, default_value = "starttls")]
        tls: names::SmtpTls,
        /// SMTP login name (no login when left out).
        #[arg(long)]
        username: Option<String>,
        /// SMTP password for --username.
        #[arg(long, env = "PORTWATCH_SMTP_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// Sender address.
        #[arg(long)]
        from: String,
        /// Recipients, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<String>,
        #[command(flatten)]
        common: ChannelCommon,
    },
    /// PagerDuty Events API v2.
    #[command(after_help = help::CHANNEL_ADD)]
    Pagerduty {
        /// The integration's routing key (Events API v2).
        #[arg(long, env = "PORTWATCH_PAGERDUTY_ROUTING_KEY", hide_env_values = true)]
        routing_key: String,
        /// Events API base URL (default: PagerDuty's public endpoint).
        #[arg(long)]
        base_url: Option<String>,
        #[command(flatten)]
        common: ChannelCommon,
    },
}

#[derive(Subcommand, Debug)]
pub enum TenantCmd {
    /// Create a tenant; prints its first token once.
    #[command(after_help = help::TENANT_ADD)]
    Add {
        /// Tenant id ([a-z0-9-]); generated when left out.
        id: Option<String>,
        /// Display name (default: the id).
        #[arg(long)]
        name: Option<String>,
        /// The plan: port monitors need basic or above; plans cap monitors and intervals.
        #[arg(long, value_enum, default_value = "basic")]
        plan: names::Plan,
    },
    /// List tenants with their plans and monitor counts.
    #[command(alias = "ls")]
    List,
    /// Change a tenant's plan.
    SetPlan {
        /// Tenant id.
        id: String,
        /// The new plan.
        #[arg(value_enum)]
        plan: names::Plan,
    },
}

#[derive(Subcommand, Debug)]
pub enum RegionCmd {
    /// Create a region; with --owner it is that tenant's private region.
    #[command(after_help = help::REGION_ADD)]
    Add {
        /// Region name ([a-z0-9-]), e.g. eu-west.
        name: String,
        /// What the region is, for people (e.g. the data centre).
        #[arg(long, default_value = "")]
        description: String,
        /// Owning tenant: a private region whose agents may probe private addresses.
        #[arg(long)]
        owner: Option<String>,
    },
    /// Delete a region no monitor uses.
    #[command(alias = "delete", alias = "remove")]
    Rm {
        /// Region name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum AgentTokenCmd {
    /// Create a token for agents of a region; prints the secret once.
    #[command(after_help = help::AGENT_TOKEN_CREATE)]
    Create {
        /// The region the token's agents probe from.
        region: String,
        /// What the token is for, for people (e.g. the host).
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Revoke an agent token.
    Revoke {
        /// Token id (not the secret).
        id: String,
    },
    /// List agent tokens (never their secrets).
    #[command(alias = "ls")]
    List {
        /// Only this region's tokens.
        #[arg(long)]
        region: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Only this monitor (id or name).
    #[arg(long)]
    pub monitor: Option<String>,
}

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// The monitors file (TOML, `[[monitor]]` tables).
    #[arg(long, short = 'f')]
    pub file: PathBuf,
    /// Print what would change and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also delete the tenant's monitors that are not in the file.
    #[arg(long)]
    pub prune: bool,
    /// Confirm deleting more than 3 monitors (or all of them) without asking.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write portwatch.1 and one page per subcommand into this directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DevCertsArgs {
    /// Directory to write into (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Extra server names (DNS names or IPs) besides localhost, 127.0.0.1 and ::1.
    #[arg(long, value_delimiter = ',')]
    pub san: Vec<String>,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct DevListenArgs {
    /// Ports on 127.0.0.1 to listen on (0 picks a free port; the chosen port is printed).
    #[arg(required = true)]
    pub ports: Vec<u16>,
}

/// A point in time given relative to now or absolutely.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    Ago(Duration),
    At(SystemTime),
}

impl When {
    pub fn resolve(self, now: SystemTime) -> SystemTime {
        match self {
            When::Ago(d) => now.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH),
            When::At(t) => t,
        }
    }
}

fn parse_when(s: &str) -> Result<When, String> {
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(When::Ago(d));
    }
    humantime::parse_rfc3339_weak(s)
        .map(When::At)
        .map_err(|_| format!("{s:?} is neither a duration (1h, 30m) nor an RFC 3339 time"))
}

/// A TCP port, 1-65535 (0 is no port a service listens on).
pub fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u64>() {
        Ok(p) => u16::try_from(p)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{s} is not a TCP port; must be 1-65535")),
        Err(_) => Err(format!("{s:?} is not a number; a TCP port is 1-65535")),
    }
}

/// "30s", "1500ms", "2m" as milliseconds.
pub fn parse_millis(s: &str) -> Result<u64, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration such as 30s, 1500ms or 5m ({e})"))?;
    u64::try_from(d.as_millis()).map_err(|_| format!("{s:?} is too long"))
}

/// A duration in milliseconds, or `default` (0: the coordinator's default).
pub fn parse_millis_or_default(s: &str) -> Result<u64, String> {
    if s == "default" {
        Ok(0)
    } else {
        parse_millis(s).map_err(|e| format!("{e}; or \"default\""))
    }
}

/// A duration, or "off" (0).
pub fn parse_millis_or_off(s: &str) -> Result<u64, String> {
    if s == "off" {
        Ok(0)
    } else {
        parse_millis(s).map_err(|e| format!("{e}; or \"off\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_flag_and_argument_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() && cmd.get_long_about().is_none() {
                missing.push(format!("{path}: the command"));
            }
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if arg.is_hide_set() || id == "help" || id == "version" {
                    continue;
                }
                let text = arg
                    .get_help()
                    .or(arg.get_long_help())
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                if text.trim().is_empty() {
                    missing.push(format!("{path}: {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_name() != "help" {
                    walk(sub, &path, missing);
                }
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }

    #[test]
    fn durations_and_times_parse() {
        assert_eq!(parse_millis("30s"), Ok(30_000));
        assert_eq!(parse_millis("1500ms"), Ok(1_500));
        assert!(parse_millis("30").is_err());
        assert_eq!(parse_millis_or_default("default"), Ok(0));
        assert_eq!(parse_millis_or_default("20m"), Ok(1_200_000));
        assert!(parse_millis_or_default("sometimes").is_err());
        assert_eq!(parse_when("1h"), Ok(When::Ago(Duration::from_secs(3600))));
        assert!(matches!(
            parse_when("2026-01-02T03:04:05Z"),
            Ok(When::At(_))
        ));
        assert!(parse_when("yesterday").is_err());
        assert_eq!(parse_port("5432"), Ok(5432));
        assert_eq!(
            parse_port("70000"),
            Err("70000 is not a TCP port; must be 1-65535".to_string())
        );
        assert!(parse_port("0").is_err());
        assert!(parse_port("http").is_err());
    }
}
