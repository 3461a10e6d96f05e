//! The tailrace daemon: command line, config, pipeline runtime, and the
//! on-disk store for checkpoints and the spool, and the admin endpoint.
//!
//! It wires plugins together but contains none: sources and sinks live in
//! `plugins/` and are reached only through the registry and the contract
//! crate. Only `store` knows sled; only `admin` knows HTTP.

pub mod admin;
pub mod check;
pub mod cli;
pub mod config;
pub mod notify;
pub mod ops;
pub mod registry;
pub mod runtime;
pub mod store;
pub mod watchdog;
