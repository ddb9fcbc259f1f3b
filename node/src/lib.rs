//! statenode: a Raft-replicated key/value state cluster.
//!
//! Layout (see ARCHITECTURE.md): `kv` is the deterministic state machine, `raft` the
//! openraft glue and membership, `store` keeps the state machine and the Raft log (redb or
//! memory), `handle` is the one narrow API the front doors (`http`, `grpc`) use, speaking
//! `api`'s types; `dapr` is Dapr's state API over it; `node` wires everything together.

pub mod api;
pub mod auth;
pub mod config;
pub mod dapr;
pub mod error;
pub mod grpc;
pub mod handle;
pub mod http;
pub mod io;
pub mod kv;
pub mod metrics;
pub mod mqtt;
pub mod node;
pub mod pattern;
pub mod raft;
pub mod store;
pub mod tls;
pub mod watch;

pub use config::Config;
pub use error::Error;
pub use handle::NodeHandle;
pub use node::{Listeners, Node, Role};
