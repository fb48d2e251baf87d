//! What the network is: the layer table, its checked shapes and counts,
//! named parameters, initialization and the tower's buffer table.

pub mod buffers;
pub mod init;
pub mod params;
pub mod plan;
pub mod spec;
