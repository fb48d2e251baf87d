//! Tower r's gradient sum over the nodes: node 0 receives every other
//! node's values in node order, adds them to its own, and sends the sum
//! back to each; the result is the same on every node and does not depend
//! on which node was first. Values travel in their own width (f32 as 4
//! bytes), which is exact.

use super::channel::{Channel, Width, from_bytes, to_bytes};
use crate::device::cpu::Real;
use crate::error::Result;
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

fn encode<T: Real>(values: &[T]) -> Vec<u8> {
    to_bytes(values.iter().map(|v| v.wide()), Width::of::<T>())
}

fn decode<T: Real>(frame: &[u8], expected: usize, peer: usize) -> Result<Vec<T>> {
    let values = from_bytes(frame, expected, Width::of::<T>(), peer)?;
    Ok(values.into_iter().map(T::of).collect())
}
