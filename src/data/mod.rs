//! Where batches come from. For now the built-in synthetic set.

pub mod augment;
pub mod decode;
pub mod synthetic;
