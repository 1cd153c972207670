//! The commands behind each CLI verb. Each returns `anyhow::Result`; `main`
//! prints an error as one line and exits non-zero.
mod admin;
mod fleet;
mod logs;
mod paths;

use std::path::Path;

use anyhow::Result;
use clap::CommandFactory;

use crate::{
    cli::{Cli, Command},
    config::Config,
    user::TargetUser,
};

/// What every command needs: who we work for and the resolved config.
pub struct Context {
    pub user: TargetUser,
    pub config: Config,
}

impl Context {
    pub fn load(explicit: Option<&Path>) -> Result<Self> {
        let user = TargetUser::resolve()?;
        let path = Config::locate(&user, explicit);
        let config = Config::load(&user, &path)?;
        Ok(Self { user, config })
    }
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "fsmon", &mut std::io::stdout());
            return Ok(());
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            return Ok(());
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
    let mut ctx = Context::load(cli.config.as_deref())?;
    match cli.command {
        Command::Daemon(args) => admin::daemon(&mut ctx, *args),
        Command::Add(args) => paths::add(&ctx, args),
        Command::Remove(args) => paths::remove(&ctx, args),
        Command::Monitored => paths::monitored(&ctx),
        Command::Query(args) => logs::query(&ctx, args, false),
        Command::Changes(args) => logs::query(&ctx, args, true),
        Command::Clean(args) => logs::clean(&ctx, args),
        Command::Health => admin::health(&ctx),
        Command::Fleet(cmd) => fleet::run(&ctx, cmd),
        Command::Init(args) => admin::init(&ctx, cli.config.as_deref(), args),
        Command::Cd(args) => admin::cd(&ctx, args),
        Command::Completions { .. } | Command::Man | Command::EbpfLoader { .. } => unreachable!(),
    }
}
