//! Where batches come from. For now the built-in synthetic set.

pub mod augment;
pub mod decode;
pub mod sets;
pub mod stats;
pub mod synthetic;
