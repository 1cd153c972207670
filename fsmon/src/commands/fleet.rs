//! `fleet query|changes|hosts`: the events every host shipped to NATS.
use anyhow::Result;

use super::Context;
use crate::ship::fleet::{self, FleetCommand};

pub fn run(ctx: &Context, cmd: FleetCommand) -> Result<()> {
    let cfg = fleet::require_config(ctx.config.ship.as_ref())?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match cmd {
        FleetCommand::Query(args) => fleet::query(cfg, &ctx.user, args, false, &mut out),
        FleetCommand::Changes(args) => fleet::query(cfg, &ctx.user, args, true, &mut out),
        FleetCommand::Hosts => fleet::hosts(cfg, &ctx.user, &mut out),
    }
}
