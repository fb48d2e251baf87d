//! How the nodes meet at the start: node 0 listens at the master address;
//! every other node connects (retrying until node 0 is up), once for the
//! run's control messages and once per tower rank for its gradient sums,
//! and says who it is and what it runs. Node 0 refuses a node whose
//! configuration differs from its own, naming the first difference, and
//! once every node is in, hands all of them the same bytes.

use super::NodeSpec;
use super::Nodes;
use super::channel::Channel;
use crate::error::{Error, Result};
use crate::net::plan::TOWERS;
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const HELLO: &str = "alexnet-nodes 1";
const ALIVE: &dyn Fn() -> Result<()> = &|| Ok(());
/// How long node 0 gives a new connection to say who it is.
const INTRODUCTION: Duration = Duration::from_secs(10);

impl Nodes {
    /// Joins the run `spec` describes. `fingerprint` is what must be the
    /// same on every node (the configuration, one `key = value` a line);
    /// node 0 calls `handout` once every node is in and gives its bytes to
    /// all. A node waits for the others up to `join_timeout` (or until
    /// `alive` fails: a signal), and later for any message up to `timeout`.
    pub fn join(
        spec: NodeSpec,
        fingerprint: &str,
        handout: impl FnOnce() -> Result<Vec<u8>>,
        (join_timeout, timeout): (Duration, Duration),
        alive: &dyn Fn() -> Result<()>,
    ) -> Result<Nodes> {
        let deadline = Instant::now() + join_timeout;
        let (control, towers, handout) = if spec.rank == 0 {
            let (control, towers) = accept_all(&spec, fingerprint, deadline, alive)?;
            let handout = handout()?;
            let mut control = control;
            for channel in &mut control {
                channel.send(b"start", ALIVE, timeout)?;
                channel.send(&handout, ALIVE, timeout)?;
            }
            (control, towers, handout)
        } else {
            let ((control, towers), handout) =
                connect_all(&spec, fingerprint, (deadline, timeout), alive)?;
            (control, towers, handout)
        };
        Ok(Nodes {
            spec,
            control: Mutex::new(control),
            towers: Mutex::new(Some(towers)),
            handout,
            timeout,
            patience: join_timeout,
        })
    }
}

type Joined = (Vec<Channel>, [Vec<Channel>; TOWERS]);

/// Node 0: every other node's control connection and one per tower rank.
fn accept_all(
    spec: &NodeSpec,
    fingerprint: &str,
    deadline: Instant,
    alive: &dyn Fn() -> Result<()>,
) -> Result<Joined> {
    let port = spec.master.rsplit_once(':').map_or("", |(_, p)| p);
    let listener = TcpListener::bind(format!("0.0.0.0:{port}"))
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| {
            Error::Input(format!(
                "--master {}: node 0 cannot listen on port {port}: {e}",
                spec.master
            ))
        })?;
    let mut slots: Vec<[Option<Channel>; TOWERS + 1]> = (0..spec.count)
        .map(|_| std::array::from_fn(|_| None))
        .collect();
    let missing = |slots: &[[Option<Channel>; TOWERS + 1]]| -> Vec<usize> {
        (1..spec.count)
            .filter(|&n| slots[n].iter().any(Option::is_none))
            .collect()
    };
    while !missing(&slots).is_empty() {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                alive()?;
                if Instant::now() >= deadline {
                    return Err(Error::Training(format!(
                        "nodes {:?} did not join the run at {} in time (node 0 waited)",
                        missing(&slots),
                        spec.master
                    )));
                }
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => return Err(Error::Training(format!("node 0 accepting nodes: {e}"))),
        };
        // A connection that does not introduce itself properly is not a node.
        let Some((mut channel, rank, which, theirs)) = introduced(stream, spec.count) else {
            continue;
        };
        if slots[rank][which].is_some() {
            return Err(Error::Input(format!(
                "two processes say they are node {rank}: give each node its own --node-rank"
            )));
        }
        if which == 0 {
            if let Some(why) = difference(fingerprint, &theirs, rank) {
                let _ = channel.send(format!("refused: {why}").as_bytes(), ALIVE, INTRODUCTION);
                return Err(Error::Input(why));
            }
            channel.send(b"ok", ALIVE, INTRODUCTION)?;
        }
        slots[rank][which] = Some(channel);
    }
    let mut control = Vec::new();
    let mut towers: [Vec<Channel>; TOWERS] = std::array::from_fn(|_| Vec::new());
    for node in slots.into_iter().skip(1) {
        let mut node = node.into_iter().map(|c| c.expect("every slot filled"));
        control.push(node.next().expect("a control connection"));
        for (tower, channel) in towers.iter_mut().zip(node) {
            tower.push(channel);
        }
    }
    Ok((control, towers))
}

/// Reads a new connection's introduction: its node rank, which of its
/// connections it is (0 control, 1 + r tower r), and its fingerprint.
fn introduced(stream: TcpStream, count: usize) -> Option<(Channel, usize, usize, String)> {
    stream.set_nonblocking(false).ok()?;
    let mut channel = Channel::new(stream, count).ok()?;
    let frame = channel.recv(ALIVE, INTRODUCTION).ok()?;
    let text = String::from_utf8(frame).ok()?;
    let mut lines = text.splitn(4, '\n');
    (lines.next()? == HELLO).then_some(())?;
    let rank: usize = lines.next()?.strip_prefix("node ")?.parse().ok()?;
    let which: usize = lines.next()?.strip_prefix("connection ")?.parse().ok()?;
    let fingerprint = lines.next().unwrap_or("").to_string();
    (rank >= 1 && rank < count && which <= TOWERS)
        .then(|| (channel.to_node(rank), rank, which, fingerprint))
}

/// The first line where node `rank`'s configuration differs from node 0's.
fn difference(ours: &str, theirs: &str, rank: usize) -> Option<String> {
    if ours == theirs {
        return None;
    }
    let (mut a, mut b) = (ours.lines(), theirs.lines());
    loop {
        match (a.next(), b.next()) {
            (Some(x), Some(y)) if x == y => continue,
            (x, y) => {
                return Some(format!(
                    "node {rank} runs another configuration than node 0: `{}` on node 0, `{}` on node {rank} \
                     (give every node the same flags and data)",
                    x.unwrap_or("(nothing)"),
                    y.unwrap_or("(nothing)")
                ));
            }
        }
    }
}

/// Another node: its connections to node 0, and what node 0 handed out.
fn connect_all(
    spec: &NodeSpec,
    fingerprint: &str,
    (deadline, timeout): (Instant, Duration),
    alive: &dyn Fn() -> Result<()>,
) -> Result<(Joined, Vec<u8>)> {
    let wait = deadline.saturating_duration_since(Instant::now());
    let introduce = |which: usize, text: &str| -> Result<Channel> {
        let mut channel = Channel::new(connect(spec, deadline, alive)?, 0)?;
        let hello = format!("{HELLO}\nnode {}\nconnection {which}\n{text}", spec.rank);
        channel.send(hello.as_bytes(), alive, wait)?;
        Ok(channel)
    };
    let mut control = introduce(0, fingerprint)?;
    let answer = control.recv(alive, wait)?;
    if answer != b"ok" {
        let text = String::from_utf8_lossy(&answer);
        return Err(Error::Input(
            text.strip_prefix("refused: ").unwrap_or(&text).to_string(),
        ));
    }
    let mut towers: [Vec<Channel>; TOWERS] = std::array::from_fn(|_| Vec::new());
    for (r, tower) in towers.iter_mut().enumerate() {
        tower.push(introduce(1 + r, "")?);
    }
    let start = control.recv(alive, wait.max(timeout))?;
    if start != b"start" {
        return Err(Error::Training(
            "node 0 answered the start with something else: do all nodes run the same alexnet?"
                .into(),
        ));
    }
    let handout = control.recv(alive, timeout)?;
    Ok(((vec![control], towers), handout))
}

/// A connection to node 0, tried again until `deadline` (node 0 may start later).
fn connect(
    spec: &NodeSpec,
    deadline: Instant,
    alive: &dyn Fn() -> Result<()>,
) -> Result<TcpStream> {
    loop {
        alive()?;
        let tried = spec.master.to_socket_addrs().map(|addrs| {
            addrs
                .into_iter()
                .find_map(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).ok())
        });
        match tried {
            Ok(Some(stream)) => return Ok(stream),
            Ok(None) | Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(None) => {
                return Err(Error::Training(format!(
                    "--master {}: node 0 did not answer in time (node {} waited)",
                    spec.master, spec.rank
                )));
            }
            Err(e) => {
                return Err(Error::Input(format!("--master {}: {e}", spec.master)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(rank: usize, port: u16) -> NodeSpec {
        NodeSpec {
            count: 3,
            rank,
            master: format!("127.0.0.1:{port}"),
        }
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn join(
        rank: usize,
        port: u16,
        fingerprint: &'static str,
    ) -> std::thread::JoinHandle<Result<Nodes>> {
        let t = Duration::from_secs(20);
        std::thread::spawn(move || {
            Nodes::join(
                spec(rank, port),
                fingerprint,
                || Ok(b"ids".to_vec()),
                (t, t),
                ALIVE,
            )
        })
    }

    #[test]
    fn three_nodes_join_share_the_handout_and_sum_in_node_order() {
        let port = free_port();
        // The others start first: they retry until node 0 listens.
        let others = [join(2, port, "batch = 8\n"), join(1, port, "batch = 8\n")];
        std::thread::sleep(Duration::from_millis(200));
        let zero = join(0, port, "batch = 8\n");
        let mut nodes: Vec<Nodes> = std::iter::once(zero)
            .chain(others)
            .map(|j| j.join().unwrap().unwrap())
            .collect();
        nodes.sort_by_key(|n| n.rank());
        assert!(nodes.iter().all(|n| n.handout() == b"ids"));
        let summed: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = nodes
                .iter()
                .map(|n| {
                    s.spawn(move || {
                        let place = n.place(n.rank() + 1).unwrap();
                        let mut v = [n.rank() as f64, 1.0];
                        n.sum(&mut v).unwrap();
                        (place, v)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // Node r has r + 1 images: node 0 from 0, node 1 from 1, node 2 from 3; 6 in all.
        assert_eq!(summed[0], ((0, 6), [3.0, 3.0]));
        assert_eq!(summed[1], ((1, 6), [3.0, 3.0]));
        assert_eq!(summed[2], ((3, 6), [3.0, 3.0]));
    }

    #[test]
    fn a_node_with_another_configuration_is_refused_by_name() {
        let port = free_port();
        let one = join(1, port, "batch = 8\nseed = 2\n");
        let zero = join(0, port, "batch = 8\nseed = 1\n");
        let at_one = one.join().unwrap().err().expect("node 1 is refused");
        let at_zero = zero.join().unwrap().err().expect("node 0 stops too");
        for e in [at_one, at_zero] {
            let text = e.to_string();
            assert!(
                text.contains("`seed = 1` on node 0, `seed = 2` on node 1"),
                "{text}"
            );
        }
    }

    #[test]
    fn a_node_that_never_comes_is_named() {
        let port = free_port();
        let t = Duration::from_millis(300);
        let s = NodeSpec {
            count: 2,
            ..spec(0, port)
        };
        let e = Nodes::join(s, "", || Ok(Vec::new()), (t, t), ALIVE)
            .err()
            .unwrap();
        assert!(e.to_string().contains("nodes [1] did not join"), "{e}");
    }
}
