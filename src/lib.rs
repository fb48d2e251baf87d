//! `alexnet`: the network of Krizhevsky, Sutskever and Hinton (2012) as they
//! ran it, split into two towers that meet only at conv3 and the fully
//! connected layers.
//!
//! - [`net`]: what the network is (layer table, shapes, parameters, init).
//! - [`device`]: how one tower's layers run on one device.
//! - [`link`]: how the towers meet.
//! - [`tower`] and [`towers`]: one tower's dataflow, and both on their threads.
//! - [`train`], [`bench`], [`data`]: the jobs the binary runs.

pub mod bench;
pub mod bench_pytorch;
pub mod data;
pub mod device;
pub mod error;
pub mod infer;
pub mod limits;
pub mod link;
pub mod net;
pub mod nodes;
pub mod npy;
pub mod output;
pub mod placement;
pub mod plot;
pub mod progress;
pub mod reduce;
pub mod replicas;
pub mod rng;
pub mod summary;
pub mod tensorboard;
pub mod tower;
pub mod towers;
pub mod train;
pub mod watch;
