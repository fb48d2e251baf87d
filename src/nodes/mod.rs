//! One run across several hosts ("nodes"), each running the same
//! `alexnet train` with its own replicas of the pair: node 0 listens at the
//! master address, checks that every node runs the same configuration and
//! hands out what all must share (NCCL's unique ids); each node reads only
//! its part of every batch; the gradients of tower r are summed over the
//! nodes after each layer ([`sum::NodeSum`]); only node 0 writes.
//!
//! Every wait on another node is a [`channel::Channel`] wait: a node that
//! leaves or stops answering is an error naming it on every other node.

pub mod channel;
mod join;
pub mod sum;

use crate::error::{Error, Result};
use crate::net::plan::TOWERS;
use channel::{Channel, Width, from_bytes, to_bytes};
use std::sync::Mutex;
use std::time::Duration;
use sum::NodeSum;

/// Where this process stands in a run of several nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// Nodes in the run (two or more).
    pub count: usize,
    /// This node's rank, 0 to `count - 1`; node 0 listens and writes.
    pub rank: usize,
    /// `HOST:PORT` where node 0 listens.
    pub master: String,
}

impl NodeSpec {
    /// Whether this node writes the run folder (node 0 alone does).
    pub fn writes(&self) -> bool {
        self.rank == 0
    }

    /// The run's nodes from `--nodes`, `--node-rank` and `--master`, or
    /// else from torchrun's `WORLD_SIZE`, `RANK`, `MASTER_ADDR` and
    /// `MASTER_PORT` (read through `env`); `None` for a run on one node.
    pub fn resolve(
        nodes: Option<u32>,
        rank: Option<u32>,
        master: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<NodeSpec>> {
        if nodes.is_some() || rank.is_some() || master.is_some() {
            let count = nodes
                .ok_or_else(|| Error::Input("--node-rank and --master need --nodes N".into()))?
                as usize;
            if count < 2 {
                return Ok(None);
            }
            let rank = rank
                .ok_or_else(|| Error::Input(format!("--nodes {count} needs --node-rank")))?
                as usize;
            let master = master
                .ok_or_else(|| Error::Input(format!("--nodes {count} needs --master HOST:PORT")))?;
            return NodeSpec::checked(count, rank, master, "--node-rank", "--master");
        }
        let Some(world) = env("WORLD_SIZE") else {
            return Ok(None);
        };
        let count = number(&world, "WORLD_SIZE")?;
        if count < 2 {
            return Ok(None);
        }
        if let Some(local) = env("LOCAL_WORLD_SIZE").filter(|l| l != "1") {
            return Err(Error::Input(format!(
                "LOCAL_WORLD_SIZE={local}: run one alexnet process per host (torchrun --nproc-per-node 1); \
                 it drives every GPU of its host"
            )));
        }
        let var = |name: &str| {
            env(name)
                .ok_or_else(|| Error::Input(format!("WORLD_SIZE={world} is set but {name} is not")))
        };
        let rank = number(&var("RANK")?, "RANK")?;
        let master = format!("{}:{}", var("MASTER_ADDR")?, var("MASTER_PORT")?);
        NodeSpec::checked(count, rank, &master, "RANK", "MASTER_ADDR:MASTER_PORT")
    }

    fn checked(
        count: usize,
        rank: usize,
        master: &str,
        rank_name: &str,
        master_name: &str,
    ) -> Result<Option<NodeSpec>> {
        if rank >= count {
            return Err(Error::Input(format!(
                "{rank_name} {rank}: the ranks of {count} nodes are 0 to {}",
                count - 1
            )));
        }
        let port = master.rsplit_once(':').and_then(|(host, port)| {
            (!host.is_empty())
                .then(|| port.parse::<u16>().ok())
                .flatten()
        });
        if port.is_none_or(|p| p == 0) {
            return Err(Error::Input(format!(
                "{master_name} {master}: give the host and port where node 0 listens, e.g. node0:29500"
            )));
        }
        Ok(Some(NodeSpec {
            count,
            rank,
            master: master.to_string(),
        }))
    }
}

fn number(text: &str, name: &str) -> Result<usize> {
    text.trim()
        .parse()
        .map_err(|_| Error::Input(format!("{name}={text}: not a whole number")))
}

/// The joined run: the connections to the other nodes and what node 0
/// handed out.
pub struct Nodes {
    spec: NodeSpec,
    /// Node 0: one to each other node, in node order; another node: one to node 0.
    control: Mutex<Vec<Channel>>,
    /// The connections of tower r's gradient sum, taken once by [`Nodes::sums`].
    towers: Mutex<Option<[Vec<Channel>; TOWERS]>>,
    handout: Vec<u8>,
    timeout: Duration,
    /// How long a node waits for node 0's checkpoint and for the start.
    patience: Duration,
}

const ALIVE: &dyn Fn() -> Result<()> = &|| Ok(());

impl Nodes {
    /// How many nodes the run has.
    pub fn count(&self) -> usize {
        self.spec.count
    }

    /// This node's rank.
    pub fn rank(&self) -> usize {
        self.spec.rank
    }

    /// Whether this node writes the run folder (node 0 alone does).
    pub fn writes(&self) -> bool {
        self.spec.writes()
    }

    /// What node 0 handed out at the start (the same bytes on every node).
    pub fn handout(&self) -> &[u8] {
        &self.handout
    }

    /// How long a node waits for another.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The ends of the gradient sums over the nodes, one per tower rank;
    /// `None` after the first call.
    pub fn sums(&self) -> Option<[NodeSum; TOWERS]> {
        let towers = self.towers.lock().ok()?.take()?;
        let (rank, timeout) = (self.spec.rank, self.timeout);
        Some(towers.map(|peers| NodeSum::new(rank, peers, timeout)))
    }

    /// Every node's `mine` (all of one length), in node order, on every node.
    pub fn all_gather(&self, mine: &[f64]) -> Result<Vec<Vec<f64>>> {
        self.all_gather_within(mine, self.timeout)
    }

    /// Waits until every node is here, as long as node 0 may take to
    /// write a checkpoint.
    pub fn barrier(&self) -> Result<()> {
        self.all_gather_within(&[], self.patience).map(drop)
    }

    /// Whether any node asks to stop (`here`: this one does).
    pub fn any(&self, here: bool) -> Result<bool> {
        let all = self.all_gather(&[f64::from(u8::from(here))])?;
        Ok(all.iter().any(|node| node[0] != 0.0))
    }

    fn all_gather_within(&self, mine: &[f64], timeout: Duration) -> Result<Vec<Vec<f64>>> {
        let mut control = self.control.lock().map_err(|_| {
            Error::Training("a thread failed while talking to the other nodes".into())
        })?;
        let n = mine.len();
        if self.spec.rank == 0 {
            let mut all = vec![mine.to_vec()];
            for channel in control.iter_mut() {
                let frame = channel.recv(ALIVE, timeout)?;
                all.push(from_bytes(&frame, n, Width::F64, channel.peer())?);
            }
            let frame = to_bytes(all.iter().flatten().copied(), Width::F64);
            for channel in control.iter_mut() {
                channel.send(&frame, ALIVE, timeout)?;
            }
            Ok(all)
        } else {
            let to_zero = &mut control[0];
            to_zero.send(&to_bytes(mine.iter().copied(), Width::F64), ALIVE, timeout)?;
            let frame = to_zero.recv(ALIVE, timeout)?;
            let flat = from_bytes(&frame, n * self.spec.count, Width::F64, 0)?;
            Ok(flat.chunks(n.max(1)).map(<[f64]>::to_vec).collect())
        }
    }

    /// `values` summed over the nodes (in node order), on every node.
    pub fn sum(&self, values: &mut [f64]) -> Result<()> {
        let all = self.all_gather(values)?;
        for (i, v) in values.iter_mut().enumerate() {
            *v = all.iter().map(|node| node[i]).sum();
        }
        Ok(())
    }

    /// Where this node's `images` of a batch stand in the whole batch: the
    /// index of its first image (the nodes' parts follow each other in node
    /// order) and the batch's images over all nodes.
    pub fn place(&self, images: usize) -> Result<(usize, usize)> {
        let all = self.all_gather(&[images as f64])?;
        let counts: Vec<usize> = all.iter().map(|c| c[0] as usize).collect();
        let first = counts[..self.spec.rank].iter().sum();
        Ok((first, counts.iter().sum()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn flags_or_torchrun_variables_name_the_nodes() {
        let none = env(&[]);
        assert_eq!(NodeSpec::resolve(None, None, None, &none).unwrap(), None);
        let flags = NodeSpec::resolve(Some(2), Some(1), Some("host:29500"), &none).unwrap();
        let expected = NodeSpec {
            count: 2,
            rank: 1,
            master: "host:29500".into(),
        };
        assert_eq!(flags, Some(expected.clone()));
        let torchrun = env(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "1"),
            ("MASTER_ADDR", "host"),
            ("MASTER_PORT", "29500"),
            ("LOCAL_WORLD_SIZE", "1"),
        ]);
        assert_eq!(
            NodeSpec::resolve(None, None, None, &torchrun).unwrap(),
            Some(expected)
        );
        let one = NodeSpec::resolve(Some(1), None, None, &torchrun).unwrap();
        assert_eq!(one, None, "the flags win over the variables");
    }

    #[test]
    fn each_missing_or_wrong_value_is_named() {
        let none = env(&[]);
        type Case<'a> = (Option<u32>, Option<u32>, Option<&'a str>, &'a str);
        let cases: [Case; 5] = [
            (None, Some(0), None, "--node-rank and --master need --nodes"),
            (Some(2), None, Some("h:1"), "--nodes 2 needs --node-rank"),
            (Some(2), Some(0), None, "--nodes 2 needs --master"),
            (
                Some(2),
                Some(2),
                Some("h:1"),
                "--node-rank 2: the ranks of 2 nodes are 0 to 1",
            ),
            (
                Some(2),
                Some(0),
                Some("h"),
                "--master h: give the host and port",
            ),
        ];
        for (nodes, rank, master, said) in cases {
            let e = NodeSpec::resolve(nodes, rank, master, &none).unwrap_err();
            assert!(e.to_string().contains(said), "{e}");
        }
        let partial = env(&[("WORLD_SIZE", "4"), ("RANK", "1")]);
        let e = NodeSpec::resolve(None, None, None, &partial).unwrap_err();
        assert!(e.to_string().contains("MASTER_ADDR is not"), "{e}");
        let per_gpu = env(&[("WORLD_SIZE", "8"), ("LOCAL_WORLD_SIZE", "4")]);
        let e = NodeSpec::resolve(None, None, None, &per_gpu).unwrap_err();
        assert!(e.to_string().contains("--nproc-per-node 1"), "{e}");
        let bad = env(&[("WORLD_SIZE", "two")]);
        let e = NodeSpec::resolve(None, None, None, &bad).unwrap_err();
        assert!(e.to_string().contains("WORLD_SIZE=two"), "{e}");
    }
}
