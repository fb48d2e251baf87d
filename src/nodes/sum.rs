//! Tower r's gradient sum over the nodes: node 0 receives every other
//! node's values in node order, adds them to its own, and sends the sum
//! back to each; the result is the same on every node and does not depend
//! on which node was first. Values travel in their own width (f32 as 4
//! bytes), which is exact.

use super::channel::{Channel, from_bytes, to_bytes};
use crate::device::cpu::Real;
use crate::error::{Error, Result};
use std::time::Duration;

/// One tower rank's end of the sum over the nodes.
pub struct NodeSum {
    rank: usize,
    /// Node 0: one per other node, in node order; another node: node 0's.
    peers: Vec<Channel>,
    timeout: Duration,
}

impl NodeSum {
    /// Node `rank`'s end, over `peers`.
    pub fn new(rank: usize, peers: Vec<Channel>, timeout: Duration) -> NodeSum {
        NodeSum {
            rank,
            peers,
            timeout,
        }
    }

    /// Replaces `values` with their sum over the nodes; every wait runs
    /// `alive` between its slices, so a failure on this node ends it.
    pub fn sum<T: Real>(&mut self, values: &mut [T], alive: &dyn Fn() -> Result<()>) -> Result<()> {
        let n = values.len();
        if self.rank == 0 {
            for peer in &mut self.peers {
                let frame = peer.recv(alive, self.timeout)?;
                for (v, theirs) in values.iter_mut().zip(decode::<T>(&frame, n, peer.peer())?) {
                    *v += theirs;
                }
            }
            let frame = encode(values);
            for peer in &mut self.peers {
                peer.send(&frame, alive, self.timeout)?;
            }
        } else {
            let zero = &mut self.peers[0];
            zero.send(&encode(values), alive, self.timeout)?;
            let frame = zero.recv(alive, self.timeout)?;
            values.copy_from_slice(&decode::<T>(&frame, n, 0)?);
        }
        Ok(())
    }
}

/// Whether `T` travels as 4-byte f32 (else as 8-byte f64).
fn narrow<T>() -> bool {
    std::mem::size_of::<T>() == 4
}

fn encode<T: Real>(values: &[T]) -> Vec<u8> {
    if narrow::<T>() {
        values
            .iter()
            .flat_map(|v| (v.wide() as f32).to_le_bytes())
            .collect()
    } else {
        to_bytes(values.iter().map(|v| v.wide()))
    }
}

fn decode<T: Real>(frame: &[u8], expected: usize, peer: usize) -> Result<Vec<T>> {
    if !narrow::<T>() {
        return Ok(from_bytes(frame, expected, peer)?
            .into_iter()
            .map(T::of)
            .collect());
    }
    if frame.len() != 4 * expected {
        return Err(Error::Training(format!(
            "node {peer} sent {} gradients where {expected} were due: do all nodes run the same net?",
            frame.len() / 4
        )));
    }
    Ok(frame
        .chunks_exact(4)
        .map(|c| {
            T::of(f64::from(f32::from_le_bytes(
                c.try_into().expect("chunks of 4"),
            )))
        })
        .collect())
}
