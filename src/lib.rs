//! `alexnet`: the network of Krizhevsky, Sutskever and Hinton (2012) as they
//! ran it, split into two towers that meet only at conv3 and the fully
//! connected layers.

pub mod device;
pub mod error;
pub mod link;
pub mod net;
pub mod rng;
pub mod tower;
pub mod towers;
