//! The `fsmon` binary: parse arguments, run the command, report an error as
//! one line on stderr with a non-zero exit.
use clap::Parser;

/// clap's multi-line usage error as one line with a hint:
/// `fsmon: unexpected argument '--bogus' found (usage: fsmon query <CMD>; more: fsmon query --help)`.
/// `sub` is the subcommand named on the command line, if any, for the hint
/// when clap's message has no usage line.
fn usage_error_line(rendered: &str, sub: Option<&str>) -> String {
    let mut message = Vec::new();
    let mut usage = None;
    let mut in_message = true;
    for line in rendered.lines() {
        let t = line.trim();
        if let Some(u) = t.strip_prefix("Usage: ") {
            usage = Some(u.to_string());
            in_message = false;
        } else if t.is_empty() {
            in_message = message.is_empty();
        } else if in_message && !t.starts_with("tip:") {
            message.push(t.strip_prefix("error: ").unwrap_or(t));
        }
    }
    // `the following ... were not provided:` then one item per line.
    let mut out = format!(
        "fsmon: {}",
        message.first().copied().unwrap_or("bad arguments")
    );
    if message.len() > 1 {
        out.push(' ');
        out.push_str(&message[1..].join(", "));
    }
    if let Some(usage) = usage {
        // `fsmon add --path <PATH> <CMD>` -> help for `fsmon add`.
        let help: Vec<&str> = usage
            .split_whitespace()
            .take_while(|w| !w.starts_with('-') && !w.starts_with('<') && !w.starts_with('['))
            .collect();
        out.push_str(&format!(
            " (usage: {usage}; more: {} --help)",
            help.join(" ")
        ));
    } else {
        let help = sub.map_or("fsmon".to_string(), |s| format!("fsmon {s}"));
        out.push_str(&format!(" (more: {help} --help)"));
    }
    out
}

fn main() {
    fsmon::residency::limit_malloc_arenas();
    // Shell completion requests (`COMPLETE=bash fsmon -- ...`, from the
    // code `fsmon completions bash` prints) are answered here and exit.
    clap_complete::CompleteEnv::with_factory(<fsmon::cli::Cli as clap::CommandFactory>::command)
        .complete();
    // Never a backtrace for the user: a bug still gets one clear line.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("fsmon: internal error: {msg}{at} (please report this)");
    }));
    let cli = match fsmon::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            let sub = std::env::args().skip(1).find(|a| !a.starts_with('-'));
            let sub = sub.filter(|s| {
                <fsmon::cli::Cli as clap::CommandFactory>::command()
                    .find_subcommand(s)
                    .is_some()
            });
            eprintln!(
                "{}",
                usage_error_line(&e.render().to_string(), sub.as_deref())
            );
            std::process::exit(2);
        }
    };
    let mut logger = env_logger::Builder::new();
    logger
        .filter_level(log::LevelFilter::Info)
        .filter_module("aya", log::LevelFilter::Warn)
        .parse_env("FSMON_LOG")
        .format_target(false);
    // `daemon --debug` shows debug lines (ours and the eBPF programs') even
    // when FSMON_LOG asks for less; aya's own internals stay at warn.
    if matches!(&cli.command, fsmon::cli::Command::Daemon(a) if a.debug) {
        logger
            .filter_level(log::LevelFilter::Debug)
            .filter_module("aya", log::LevelFilter::Warn);
    }
    // Under systemd, stderr is the journal: each line starts with its
    // syslog priority (sd-daemon(3): <3> error ... <7> debug), so
    // `journalctl -p warning` separates warnings; the journal adds the time.
    if journal_priorities() {
        logger.format(|buf, record| {
            use std::io::Write;
            writeln!(
                buf,
                "<{}>{}",
                syslog_priority(record.level()),
                record.args()
            )
        });
    }
    logger.init();
    if let Err(e) = fsmon::commands::run(cli) {
        eprintln!("fsmon: {}", one_line(&e));
        std::process::exit(1);
    }
}

/// Whether log lines carry sd-daemon priority prefixes: when stderr is the
/// journal (`$JOURNAL_STREAM`, set by systemd), or `$FSMON_LOG_PRIORITY=1`.
fn journal_priorities() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some_and(|v| !v.is_empty())
        || std::env::var_os("FSMON_LOG_PRIORITY").is_some_and(|v| v == "1")
}

/// The syslog priority of a log level (sd-daemon's `<N>` prefixes).
fn syslog_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// The error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    let mut s = String::new();
    for (i, cause) in e.chain().enumerate() {
        let text = cause.to_string();
        if i > 0 {
            if s.contains(&text) {
                continue;
            }
            s.push_str(": ");
        }
        s.push_str(&text);
    }
    s.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::usage_error_line;

    #[test]
    fn clap_errors_become_one_line_with_a_hint() {
        let missing = "error: the following required arguments were not provided:\n  --path <PATH>\n  <CMD>\n\nUsage: fsmon add --path <PATH> <CMD>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            usage_error_line(missing, Some("add")),
            "fsmon: the following required arguments were not provided: --path <PATH>, <CMD> (usage: fsmon add --path <PATH> <CMD>; more: fsmon add --help)"
        );
        let unexpected = "error: unexpected argument '--bogus' found\n\n  tip: to pass '--bogus' as a value, use '-- --bogus'\n\nUsage: fsmon query <CMD>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            usage_error_line(unexpected, Some("query")),
            "fsmon: unexpected argument '--bogus' found (usage: fsmon query <CMD>; more: fsmon query --help)"
        );
        assert_eq!(
            usage_error_line(
                "error: bad value\n\nFor more information, try '--help'.\n",
                Some("daemon")
            ),
            "fsmon: bad value (more: fsmon daemon --help)"
        );
        assert_eq!(
            usage_error_line("error: bad\n", None),
            "fsmon: bad (more: fsmon --help)"
        );
    }
}
