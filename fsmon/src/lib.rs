//! fsmon: a Linux file-change monitor. fanotify (FID mode) tells us what
//! happened to which file; an eBPF process tracker tells us who did it.
pub mod error;
pub mod escape;
pub mod process;

pub use error::{Error, Result};
pub mod archive;
pub mod cli;
pub mod clients;
pub mod commands;
pub mod config;
pub mod control;
pub mod daemon;
pub mod event;
pub mod fanotify;
pub mod filters;
pub mod logfile;
pub mod marks;
pub mod metrics;
pub mod output;
pub mod pipeline;
pub mod residency;
pub mod retention;
pub mod safefs;
pub mod ship;
pub mod sockpath;
pub mod store;
pub mod system;
pub mod user;
pub mod userfs;
