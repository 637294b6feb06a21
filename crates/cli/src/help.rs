//! What `--help` and the man pages say beyond the flags themselves: examples
//! for the main commands, the exit codes and the environment.
//!
//! Kept apart from `cli.rs` (the shape of the command line) so the definitions
//! stay readable; the exit codes here are the ones `error.rs` produces.

/// The exit codes scripts can rely on, as (code, meaning).
pub const EXIT_STATUS: &[(&str, &str)] = &[
    ("0", "done"),
    (
        "1",
        "the coordinator refused or found nothing (plan limits, permission, not found, \
         already exists, unauthenticated); a channel test the receiver did not accept; \
         an apply whose deletions were not confirmed",
    ),
    (
        "2",
        "usage error or bad input, found by the CLI (flags, an unreadable or invalid file) \
         or by the coordinator (INVALID_ARGUMENT)",
    ),
    (
        "3",
        "cannot reach the coordinator: connection refused, TLS verification, timeout, \
         UNAVAILABLE, a connection lost during the call",
    ),
    ("130", "interrupted by Ctrl-C (watch)"),
];

/// Environment variables read besides the flags' own (listed with each flag).
pub const ENVIRONMENT: &[(&str, &str)] = &[(
    "PORTWATCH_WEBHOOK_SECRET, PORTWATCH_SMTP_PASSWORD, PORTWATCH_PAGERDUTY_ROUTING_KEY",
    "channel secrets for `channel add`, so they stay out of shell history",
)];

/// Shown under the main `--help`.
pub const MAIN: &str = "\
Examples:
  export PORTWATCH_ADDR=https://coord.example.com:7400 PORTWATCH_CA=ca.pem PORTWATCH_TOKEN=pwt_...
  portwatch status
  portwatch monitor add --host db.example.com --port 5432 --regions eu-west,us-east --interval 30s
  portwatch monitor show db
  portwatch incidents --open
  portwatch -o json status | jq '.[] | select(.overall != \"up\") | .name'

Exit codes:
  0    done
  1    the coordinator refused or found nothing (plan limits, permission, not found, ...)
  2    usage error or bad input (also the coordinator's INVALID_ARGUMENT)
  3    cannot reach the coordinator (connection, TLS, unavailable)
  130  interrupted by Ctrl-C (watch)";

pub const MONITOR_ADD: &str = "\
Examples:
  portwatch monitor add --host db.example.com --port 5432 --regions eu-west,us-east,ap-south
  portwatch monitor add --host smtp.example.com --port 587 --regions eu-west,us-east \\
    --name mail --interval 30s --timeout 5s --consensus unanimous
  portwatch monitor add --host 10.0.0.5 --port 22 --regions office --paused   # a private region";

pub const MONITOR_SHOW: &str = "\
Examples:
  portwatch monitor show db
  portwatch monitor show mon-0f3c... -o json";

pub const MONITOR_UPDATE: &str = "\
Examples:
  portwatch monitor update db --interval 1m
  portwatch monitor update db --regions eu-west,us-east --consensus quorum
  portwatch monitor update db --default-channels";

pub const MONITOR_LIST: &str = "\
Examples:
  portwatch monitor list
  portwatch monitor list --names        # one name per line, for scripts";

pub const STATUS: &str = "\
Examples:
  portwatch status
  portwatch -o json status | jq -r '.[] | select(.overall == \"down\") | .name'";

pub const RESULTS: &str = "\
Examples:
  portwatch results db --since 15m
  portwatch results db --region eu-west --since 2026-11-24T09:00:00Z --until 2026-11-24T10:00:00Z
  portwatch results db --limit 0 -o json > db-results.json";

pub const INCIDENTS: &str = "\
Examples:
  portwatch incidents --open
  portwatch incidents --monitor db --limit 10";

pub const WATCH: &str = "\
Examples:
  portwatch watch
  portwatch watch --monitor db
  portwatch watch -o json | jq 'select(.type == \"incident_opened\")'

Ctrl-C ends it with exit status 130.";

pub const APPLY: &str = "\
Examples:
  portwatch apply -f monitors.toml --dry-run        # the plan, nothing changed
  portwatch apply -f monitors.toml                  # create and update; never deletes
  portwatch apply -f monitors.toml --prune          # also delete monitors not in the file
  portwatch apply -f monitors.toml --prune --yes    # in CI: confirm deleting more than 3

Without --prune, monitors not in the file are kept (and listed in the plan). With
--prune, deleting more than 3 monitors, or every monitor of the tenant, needs --yes
or a typed \"yes\" at the terminal.";

pub const CHANNEL_ADD: &str = "\
Examples:
  PORTWATCH_WEBHOOK_SECRET=... portwatch channel add webhook --url https://hooks.example.com/pw --default
  portwatch channel add slack --webhook-url https://hooks.slack.com/services/T/B/X
  portwatch channel add email --smtp-host smtp.example.com --from pw@example.com --to ops@example.com
  PORTWATCH_PAGERDUTY_ROUTING_KEY=... portwatch channel add pagerduty --default";

pub const TENANT_ADD: &str = "\
Examples:
  portwatch tenant add acme --name \"Acme Corp\" --plan pro    # prints the tenant's token once";

pub const REGION_ADD: &str = "\
Examples:
  portwatch region add eu-west --description \"Frankfurt\"
  portwatch region add acme-dc --owner acme     # a private region for tenant acme";

pub const AGENT_TOKEN_CREATE: &str = "\
Examples:
  portwatch agent-token create eu-west --description \"probe-1\"   # prints the secret once";

pub const COMPLETIONS: &str = "\
Examples:
  portwatch completions bash > ~/.local/share/bash-completion/completions/portwatch
  portwatch completions zsh > \"${fpath[1]}/_portwatch\"

The bash script also completes monitor names (asking the coordinator with the
PORTWATCH_* settings of the shell).";

pub const VERSION: &str = "\
Examples:
  portwatch version
  portwatch version -o json";
