//! `daemon`, `health`, `init`, `cd`.
use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};

use super::Context;
use crate::{
    cli::{CdArgs, DaemonArgs, InitArgs},
    config::{BUFFER_MAX, BUFFER_MIN, DiskMinFree, TrackerChoice},
    control::Request,
    daemon::{self, DaemonOptions},
    error::Error,
    safefs,
};

/// CLI flags override the config file.
fn apply_flags(ctx: &mut Context, a: &DaemonArgs) -> Result<()> {
    let c = &mut ctx.config;
    let positive = |name: &str, v: u64| -> Result<u64> {
        if v == 0 {
            bail!("--{name} must be greater than 0");
        }
        Ok(v)
    };
    if let Some(s) = &a.disk_min_free {
        c.disk_min_free =
            Some(DiskMinFree::parse(s).map_err(|e| anyhow::anyhow!("--disk-min-free: {e}"))?);
    }
    if let Some(n) = a.sync_interval {
        c.sync_interval = (n > 0).then(|| Duration::from_secs(n));
    }
    if let Some(l) = &a.metrics_listen {
        l.parse::<std::net::SocketAddr>().map_err(|_| {
            anyhow::anyhow!("--metrics-listen: '{l}' is not an address like 127.0.0.1:9845")
        })?;
        c.metrics_listen = Some(l.clone());
    }
    if a.local_time {
        c.local_time = true;
    }
    if let Some(b) = a.buffer_size {
        if !(BUFFER_MIN..=BUFFER_MAX).contains(&b) {
            bail!("--buffer-size {b} is out of range ({BUFFER_MIN}..={BUFFER_MAX})");
        }
        c.buffer_size = b;
    }
    if let Some(n) = a.channel_capacity {
        c.channel_capacity = positive("channel-capacity", n as u64)? as usize;
    }
    if let Some(n) = a.subscribe_buf {
        c.subscribe_buf = positive("subscribe-buf", n as u64)? as usize;
    }
    if let Some(n) = a.cache_dir_cap {
        c.dir_capacity = positive("cache-dir-cap", n)?;
    }
    if let Some(n) = a.cache_dir_ttl {
        c.dir_ttl = Duration::from_secs(positive("cache-dir-ttl", n)?);
    }
    if let Some(n) = a.cache_file_size {
        c.file_size_capacity = positive("cache-file-size", n)?;
    }
    if let Some(n) = a.cache_proc_ttl {
        c.proc_ttl = Duration::from_secs(positive("cache-proc-ttl", n)?);
    }
    if let Some(n) = a.cache_stats_interval {
        c.stats_interval = (n > 0).then(|| Duration::from_secs(n));
    }
    if let Some(t) = &a.tracker {
        c.tracker = match t.as_str() {
            "auto" => TrackerChoice::Auto,
            "ebpf" => TrackerChoice::Ebpf,
            "procfs" => TrackerChoice::Procfs,
            other => bail!("--tracker: '{other}' is not one of auto, ebpf, procfs"),
        };
    }
    if let Some(n) = a.proc_map_capacity {
        let range = crate::process::MIN_MAP_CAPACITY..=crate::process::MAX_MAP_CAPACITY;
        if !range.contains(&n) {
            bail!(
                "--proc-map-capacity {n} is out of range ({}..={})",
                range.start(),
                range.end()
            );
        }
        c.map_capacity = n;
    }
    if let Some(n) = a.exit_grace {
        c.exit_grace = Duration::from_secs(positive("exit-grace", n)?);
    }
    c.ship = a.ship.apply(c.ship.take())?;
    if let Some(q) = &a.queue_size {
        c.queue_size = Some(match q.as_str() {
            "unlimited" => 0,
            n => match n.parse::<u32>() {
                Ok(v) if v > 0 => v,
                _ => bail!("--queue-size: '{q}' is not a positive number or \"unlimited\""),
            },
        });
    }
    Ok(())
}

pub fn daemon(ctx: &mut Context, args: DaemonArgs) -> Result<()> {
    apply_flags(ctx, &args)?;
    if args.debug {
        log::set_max_level(log::LevelFilter::Debug);
    }
    daemon::run(DaemonOptions {
        config: ctx.config.clone(),
        user: ctx.user.clone(),
        fs: ctx.fs.clone(),
        debug: args.debug,
    })
}

pub fn health(ctx: &Context, mode: crate::output::Mode) -> Result<()> {
    let mut c = ctx.connect()?;
    let v = c.call(&Request::Health {})?;
    // The daemon's text, made safe for the terminal.
    let out = match mode.format {
        crate::output::Format::Json => format!("{}\n", crate::control::terminal_json(&v)),
        crate::output::Format::Text => crate::output::render_health(&v, mode.color),
    };
    crate::output::print(&out)?;
    Ok(())
}

/// Where `init --service` writes the unit; `$FSMON_SYSTEMD_DIR` overrides
/// the directory (for packaging and tests), and then systemd is not reloaded.
const SYSTEMD_DIR: &str = "/etc/systemd/system";
const UNIT_NAME: &str = "fsmon.service";

pub fn init(ctx: &Context, explicit: Option<&Path>, args: InitArgs) -> Result<()> {
    let (path, _) = crate::config::Config::locate(&ctx.user, explicit);
    let (p, uid) = (path.clone(), ctx.user.uid);
    // The defaults shown are the ones that apply: the system's in system mode.
    let template = if ctx.user.is_system() {
        crate::config::init_template()
            .replace(
                "~/.local/share/fsmon/monitored.jsonl",
                crate::user::SYSTEM_STORE,
            )
            .replace("~/.local/state/fsmon", crate::user::SYSTEM_LOG_DIR)
            .replace("/run/fsmon/fsmon-<UID>.sock", crate::user::SYSTEM_SOCKET)
    } else {
        crate::config::init_template()
    };
    let exists = ctx.fs.run(move || std::fs::symlink_metadata(p).is_ok());
    if exists {
        eprintln!("{} already exists; left unchanged", path.display());
    } else {
        let dir = path.parent().context("config path has no directory")?;
        ctx.fs.create_dir_all(dir)?;
        let p = path.clone();
        ctx.fs.run(move || -> crate::Result<()> {
            let mut f = safefs::create_user_new(&p, uid, 0o644)?;
            std::io::Write::write_all(&mut f, template.as_bytes()).map_err(|e| Error::io(&p, e))
        })?;
        println!("wrote {}", path.display());
    }
    if args.service {
        write_service()?;
    }
    Ok(())
}

/// The systemd unit of the system service: root's daemon in system mode
/// (`/etc/fsmon`, `/var/lib/fsmon`, `/var/log/fsmon`, `/run/fsmon`, made by
/// systemd), hardened as far as fanotify and BPF allow: exposure 3.7 ("OK")
/// in `systemd-analyze security`. Not PrivateTmp: the daemon must see the
/// real /tmp to watch it. `systemctl reload` sends SIGHUP: the store is
/// read again.
pub fn service_unit(exe: &Path) -> String {
    format!(
        "[Unit]
Description=fsmon file-change monitor (system service)
Documentation=man:fsmon(1)
After=local-fs.target

[Service]
Type=notify
ExecStart={exe} daemon --system
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=2
StateDirectory=fsmon
StateDirectoryMode=0750
LogsDirectory=fsmon
LogsDirectoryMode=0750
RuntimeDirectory=fsmon
RuntimeDirectoryMode=0755
# Per-user daemons keep their sockets there too: not removed when this stops.
RuntimeDirectoryPreserve=yes
ConfigurationDirectory=fsmon
UMask=0027
# fanotify CAP_SYS_ADMIN; the eBPF tracker CAP_BPF CAP_PERFMON; file handles
# CAP_DAC_READ_SEARCH; the readers' group on its files CAP_CHOWN CAP_FOWNER;
# the descriptor limit CAP_SYS_RESOURCE.
CapabilityBoundingSet=CAP_SYS_ADMIN CAP_BPF CAP_PERFMON CAP_DAC_READ_SEARCH CAP_CHOWN CAP_FOWNER CAP_SYS_RESOURCE
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths=-/sys/fs/bpf
ProtectHome=read-only
PrivateDevices=yes
ProtectHostname=yes
ProtectClock=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RemoveIPC=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
SystemCallArchitectures=native
SystemCallFilter=@system-service @mount bpf perf_event_open fanotify_init fanotify_mark open_by_handle_at name_to_handle_at
SystemCallFilter=~@clock @cpu-emulation @module @obsolete @raw-io @reboot @swap
SystemCallErrorNumber=EPERM
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
",
        exe = exe.display(),
    )
}

fn write_service() -> Result<()> {
    let custom_dir = std::env::var_os("FSMON_SYSTEMD_DIR").filter(|d| !d.is_empty());
    let dir = custom_dir
        .clone()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| SYSTEMD_DIR.into());
    let unit = dir.join(UNIT_NAME);
    if !nix::unistd::geteuid().is_root() {
        bail!("init --service writes {}: run it with sudo", unit.display());
    }
    let exe = std::env::current_exe().context("locating the fsmon binary")?;
    let root = crate::user::TargetUser::from_uid(0)?;
    let tmp = dir.join(format!("{UNIT_NAME}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = safefs::create_new(&tmp, &root, 0o644)?;
    std::io::Write::write_all(&mut f, service_unit(&exe).as_bytes())
        .map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &unit).map_err(|e| Error::io(&unit, e))?;
    println!("wrote {}", unit.display());
    if custom_dir.is_some() {
        eprintln!("notice: FSMON_SYSTEMD_DIR is set; not running systemctl daemon-reload");
    } else if Path::new("/run/systemd/system").is_dir() {
        let status = std::process::Command::new("systemctl")
            .arg("daemon-reload")
            .status()?;
        if !status.success() {
            bail!("systemctl daemon-reload failed ({status})");
        }
        println!("ran systemctl daemon-reload; start it with: sudo systemctl enable --now fsmon");
        if crate::user::system_group().is_none() {
            println!(
                "to let users read events: sudo groupadd --system {} && sudo usermod -aG {} USER",
                crate::user::SYSTEM_GROUP,
                crate::user::SYSTEM_GROUP
            );
        }
    } else {
        eprintln!("notice: systemd is not running here; the unit is written but not loaded");
    }
    Ok(())
}

pub fn cd(ctx: &Context, args: CdArgs) -> Result<()> {
    let dir = if args.log {
        ctx.config
            .log_dir
            .clone()
            .context("file output is off ([logging] enabled = false): there is no log directory")?
    } else {
        ctx.config
            .store_path
            .parent()
            .context("store path has no directory")?
            .to_path_buf()
    };
    ctx.fs.create_dir_all(&dir)?;
    let shell = std::env::var("SHELL").unwrap_or_else(|_| "/bin/sh".into());
    eprintln!("entering {} (type exit to return)", dir.display());
    let status = std::process::Command::new(&shell)
        .current_dir(&dir)
        .status()
        .with_context(|| format!("starting {shell}"))?;
    std::process::exit(status.code().unwrap_or(0));
}

/// `fsmon completions SHELL`: the shell code that registers fsmon's
/// completions. They are computed by fsmon itself at completion time
/// (`COMPLETE=<shell> fsmon -- <words>`), so they offer the groups in the
/// store as they are then, event types and tracker names, and never the
/// internal subcommands.
pub fn completions(shell: &str) -> anyhow::Result<()> {
    use clap_complete::env::{Bash, Elvish, EnvCompleter, Fish, Powershell, Zsh};
    let completer: &dyn EnvCompleter = match shell {
        "bash" => &Bash,
        "zsh" => &Zsh,
        "fish" => &Fish,
        "elvish" => &Elvish,
        _ => &Powershell,
    };
    completer.write_registration(
        "COMPLETE",
        "fsmon",
        "fsmon",
        "fsmon",
        &mut std::io::stdout(),
    )?;
    Ok(())
}
