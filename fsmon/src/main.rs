//! The `fsmon` binary: parse arguments, run the command, report an error as
//! one line on stderr with a non-zero exit.
use clap::Parser;

fn main() {
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
    let cli = fsmon::cli::Cli::parse();
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
    logger.init();
    if let Err(e) = fsmon::commands::run(cli) {
        eprintln!("fsmon: {}", one_line(&e));
        std::process::exit(1);
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
