//! Monitor names in bash completion: `portwatch monitor show <TAB>` offers
//! the tenant's monitor names, asked from the coordinator the shell is set up
//! for (the `PORTWATCH_*` variables and any connection flags already typed).
//!
//! clap's generated script knows only the static command line; this wrapper
//! runs first and falls back to it for everything but a monitor argument:
//! the positional of `monitor show|update|rm|pause|resume` and `results`, and
//! the value of `--monitor`. A coordinator that does not answer within 3 s
//! (or at all) just completes nothing.

/// Appended to clap's bash script; replaces its `complete` registration.
pub const BASH_MONITOR_NAMES: &str = r#"
# Monitor names (added by portwatch): asks `portwatch monitor list --names`.
_portwatch_monitor_names() {
    local cur=$1
    shift
    local pw=${COMP_WORDS[0]} names
    if command -v timeout >/dev/null 2>&1; then
        names=$(timeout 3 "$pw" "$@" monitor list --names 2>/dev/null) || return 1
    else
        names=$("$pw" "$@" monitor list --names 2>/dev/null) || return 1
    fi
    local IFS=$'\n' i
    COMPREPLY=($(compgen -W "$names" -- "$cur"))
    # Names may hold spaces: hand them back quoted for the command line.
    for i in "${!COMPREPLY[@]}"; do
        COMPREPLY[i]=$(printf '%q' "${COMPREPLY[i]}")
    done
    return 0
}

_portwatch_with_monitors() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
    local words=() globals=() i w flag=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
        if [[ -n $flag ]]; then
            case $flag in
                --since | --until | --region | --limit | --output | -o) ;;
                *) globals+=("$flag" "$w") ;;
            esac
            flag=""
            continue
        fi
        case $w in
            --addr | --token | --ca | --tls-server-name | --client-cert | --client-key | --tenant | \
                --since | --until | --region | --limit | --output | -o) flag=$w ;;
            -*) ;;
            *) words+=("$w") ;;
        esac
    done
    if [[ $prev == --monitor ]]; then
        _portwatch_monitor_names "$cur" "${globals[@]}" && return 0
    fi
    if [[ $cur != -* ]]; then
        case "${words[*]}" in
            "monitor show" | "monitor update" | "monitor rm" | "monitor delete" | "monitor remove" | \
                "monitor pause" | "monitor resume" | "results")
                _portwatch_monitor_names "$cur" "${globals[@]}" && return 0
                ;;
        esac
    fi
    _portwatch "$@"
}

if [[ "${BASH_VERSINFO[0]}" -eq 4 && "${BASH_VERSINFO[1]}" -ge 4 || "${BASH_VERSINFO[0]}" -gt 4 ]]; then
    complete -F _portwatch_with_monitors -o nosort -o bashdefault -o default portwatch
else
    complete -F _portwatch_with_monitors -o bashdefault -o default portwatch
fi
"#;
