//! openraft glue: type config, network, peer server, forwarding, read barrier, membership.

pub mod types;
