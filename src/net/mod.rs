//! What the network is: the layer table, its checked shapes and counts,
//! named parameters, initialization and the `summary` report.

pub mod init;
pub mod params;
pub mod plan;
pub mod spec;
pub mod summary;
