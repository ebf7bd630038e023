//! leaktrace: out-of-process leak tracing with eBPF.
//!
//! Data flows one way: probes (kernel) → [`probes`] → [`session`] (the pump) →
//! [`model`] → [`report`] with [`verdict`]s → views ([`report`] text, JSON,
//! [`pprof`], [`flamegraph`], the live [`top`]), written by [`output`].
pub mod allocator;
pub mod btf;
pub mod cli;
pub mod elf;
pub mod escape;
pub mod flamegraph;
pub mod golang;
pub mod handles;
pub mod limits;
pub mod model;
pub mod output;
pub mod placement;
pub mod pprof;
pub mod preflight;
pub mod probes;
pub mod procmaps;
pub mod reach;
pub mod report;
pub mod series;
pub mod session;
pub mod stepcost;
pub mod symbolize;
pub mod target;
pub mod top;
pub mod unwind;
pub mod verdict;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod testrng;
