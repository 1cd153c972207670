//! fsmon: a Linux file-change monitor. fanotify (FID mode) tells us what
//! happened to which file; an eBPF process tracker tells us who did it.
pub mod error;
pub mod process;

pub use error::{Error, Result};
