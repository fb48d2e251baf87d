//! The link of a tower that holds both towers (the grouped network on one
//! GPU): its layers read only what it holds, so there is nothing to
//! exchange, and an exchange asked of it is a bug.

use super::Link;
use crate::error::{Error, Result};

/// The only tower's end of a link to nobody.
#[derive(Debug, Default)]
pub struct SoloLink;

fn nobody() -> Error {
    Error::Training("the grouped network has no other tower to exchange with".into())
}

impl<B> Link<B> for SoloLink {
    fn rank(&self) -> usize {
        0
    }
    fn all_gather(&mut self, _local: &B, _gathered: &mut B) -> Result<()> {
        Err(nobody())
    }
    fn reduce_scatter(&mut self, _full: &B, _local: &mut B) -> Result<()> {
        Err(nobody())
    }
    /// Nothing was started.
    fn land(&mut self) -> Result<()> {
        Ok(())
    }
    /// The one tower uploads the whole batch.
    fn splits_input(&self) -> bool {
        false
    }
    /// Nobody else reads this tower's buffers.
    fn end_pass(&mut self) -> Result<()> {
        Ok(())
    }
}
