//! The commands behind each CLI verb. Each returns `anyhow::Result`; `main`
//! prints an error as one line and exits non-zero.
mod admin;
mod fleet;
mod logs;
mod man;
mod paths;
mod tail;

use std::path::Path;

use anyhow::Result;

use crate::{
    cli::{Cli, Command},
    config::Config,
    user::TargetUser,
    userfs::UserFs,
};

/// What every command needs: who we work for, the way to touch that
/// user's files (with the user's credentials, also under sudo), and the
/// resolved config.
pub struct Context {
    pub user: TargetUser,
    pub fs: UserFs,
    pub config: Config,
}

impl Context {
    /// `system`: the `--system` flag. `may_be_absent`: an explicit config
    /// that does not exist is not an error (for `init`, which writes it).
    pub fn load(explicit: Option<&Path>, system: bool, may_be_absent: bool) -> Result<Self> {
        let user = if crate::user::system_mode(system, explicit.is_some())? {
            TargetUser::system()?
        } else {
            TargetUser::resolve()?
        };
        // In system mode the files are root's; a reader (group fsmon) reads
        // them with its own credentials, so no thread changes them.
        let fs = if user.is_system() {
            UserFs::direct(user.clone())
        } else {
            UserFs::new(&user)?
        };
        let (path, explicit) = Config::locate(&user, explicit);
        let config = Config::load_located(&fs, &path, explicit && !may_be_absent)?;
        Ok(Self { user, fs, config })
    }

    /// Connects to the daemon: checked to be root's or the user's, within
    /// the configured timeout.
    pub fn connect(&self) -> crate::Result<crate::control::Client> {
        let peer = crate::control::Peer {
            uid: self.user.uid,
            name: self.user.name.clone(),
        };
        crate::control::Client::connect(&self.config.socket_path, &peer, self.config.socket_timeout)
    }
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Completions { shell } => {
            return admin::completions(&shell);
        }
        Command::Man { dir } => {
            return match dir {
                Some(dir) => man::write_all(&dir),
                None => man::render_main(&mut std::io::stdout()),
            };
        }
        Command::EbpfLoader {
            dir,
            capacity,
            debug,
        } => {
            crate::process::run_loader(&dir, capacity, debug)?;
            return Ok(());
        }
        _ => {}
    }
    let init = matches!(cli.command, Command::Init(_));
    // `init --service` sets up the system service: its config is the system's.
    let system = cli.system || matches!(&cli.command, Command::Init(a) if a.service);
    let mut ctx = Context::load(cli.config.as_deref(), system, init)?;
    match cli.command {
        Command::Daemon(args) => admin::daemon(&mut ctx, *args),
        Command::Add(args) => paths::add(&ctx, args),
        Command::Remove(args) => paths::remove(&ctx, args),
        Command::Monitored(out) => paths::monitored(&ctx, out.mode()),
        Command::Query(args) => logs::query(&ctx, args, false),
        Command::Changes(args) => logs::query(&ctx, args, true),
        Command::Clean(args) => logs::clean(&ctx, args),
        Command::Tail(args) => tail::tail(&ctx, args),
        Command::Health(out) => admin::health(&ctx, out.mode()),
        Command::Fleet(cmd) => fleet::run(&ctx, cmd),
        Command::Init(args) => admin::init(&ctx, cli.config.as_deref(), args),
        Command::Cd(args) => admin::cd(&ctx, args),
        Command::Completions { .. } | Command::Man { .. } | Command::EbpfLoader { .. } => {
            unreachable!()
        }
    }
}
