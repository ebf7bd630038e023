//! leaktrace: out-of-process leak tracing with eBPF.
//!
//! Data flows one way: probes (kernel) → `probes` → [`session`] (typed events
//! → the core's ingest) → `model` → [`report`] with `verdict`s → views
//! ([`report`] text, JSON, [`pprof`], `flamegraph`, the live [`top`]), written
//! by `output`. Public: what the command (main.rs) and the tests use.
pub mod agent;
mod allocator;
mod btf;
pub mod cli;
mod elf;
mod escape;
mod flamegraph;
mod golang;
mod handles;
mod limits;
mod model;
mod output;
mod placement;
pub mod pprof;
pub mod preflight;
mod probes;
mod procmaps;
mod reach;
pub mod report;
mod sampling;
mod series;
pub mod session;
mod stepcost;
mod survival;
mod symbolize;
mod target;
pub mod top;
mod unwind;
mod verdict;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod testrng;
