//! `fleet query|changes|hosts`: the events every host shipped to NATS.
use anyhow::Result;

use super::Context;
use crate::output::EventSink;
use crate::ship::fleet::{self, FleetCommand};

pub fn run(ctx: &Context, cmd: FleetCommand) -> Result<()> {
    let cfg = fleet::require_config(ctx.config.ship.as_ref())?;
    let (args, changes) = match cmd {
        FleetCommand::Query(args) => (args, false),
        FleetCommand::Changes(args) => (args, true),
        FleetCommand::Hosts => return fleet::hosts(cfg, &ctx.user, &mut std::io::stdout().lock()),
    };
    // JSON lines as the stream holds them, or (on a terminal) one readable
    // line each, with its host and group.
    let mut out = EventSink::new(std::io::stdout().lock(), args.output.mode(), true);
    let result = fleet::query(cfg, &ctx.user, args, changes, &mut out);
    let _ = out.finish();
    result
}
