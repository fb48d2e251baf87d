//! One TCP connection between two nodes, carrying length-prefixed frames.
//! Every wait is cut into short slices: between them the caller's `alive`
//! check runs (so a tower that fails on this host ends the wait at once),
//! and a peer that closes its end or stays silent past the timeout is an
//! error naming it, never a hang.

use crate::error::{Error, Result};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// How long one read or write blocks before the `alive` check runs again.
const SLICE: Duration = Duration::from_millis(20);
/// The largest frame accepted: the gradients of a tower many times the paper's.
const MAX_FRAME: u64 = 1 << 34;

/// A connection to node `peer`.
pub struct Channel {
    stream: TcpStream,
    peer: usize,
}

impl Channel {
    /// Wraps a connected `stream` to node `peer`.
    pub fn new(stream: TcpStream, peer: usize) -> Result<Channel> {
        let setup = || -> std::io::Result<()> {
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(SLICE))?;
            stream.set_write_timeout(Some(SLICE))
        };
        setup().map_err(|e| Error::Training(format!("the connection to node {peer}: {e}")))?;
        Ok(Channel { stream, peer })
    }

    /// The node at the other end.
    pub fn peer(&self) -> usize {
        self.peer
    }

    /// The same connection, now known to lead to node `peer`.
    pub fn to_node(self, peer: usize) -> Channel {
        Channel { peer, ..self }
    }

    /// Sends one frame; fails when `alive` does, when the peer has gone, or
    /// when it takes no bytes for `timeout`.
    pub fn send(
        &mut self,
        frame: &[u8],
        alive: &dyn Fn() -> Result<()>,
        timeout: Duration,
    ) -> Result<()> {
        let header = (frame.len() as u64).to_le_bytes();
        self.write_all(&header, alive, timeout)?;
        self.write_all(frame, alive, timeout)
    }

    /// Receives one frame, with the same failures as [`Channel::send`].
    pub fn recv(&mut self, alive: &dyn Fn() -> Result<()>, timeout: Duration) -> Result<Vec<u8>> {
        let mut header = [0u8; 8];
        self.read_exact(&mut header, alive, timeout)?;
        let len = u64::from_le_bytes(header);
        if len > MAX_FRAME {
            return Err(Error::Training(format!(
                "node {} sent a frame of {len} bytes: is it an alexnet of the same version?",
                self.peer
            )));
        }
        let mut frame = vec![0u8; len as usize];
        self.read_exact(&mut frame, alive, timeout)?;
        Ok(frame)
    }

    fn write_all(
        &mut self,
        mut bytes: &[u8],
        alive: &dyn Fn() -> Result<()>,
        timeout: Duration,
    ) -> Result<()> {
        let mut last = Instant::now();
        while !bytes.is_empty() {
            match self.stream.write(bytes) {
                Ok(0) => return Err(self.closed()),
                Ok(n) => {
                    bytes = &bytes[n..];
                    last = Instant::now();
                }
                Err(e) => self.waited(e, last, alive, timeout)?,
            }
        }
        Ok(())
    }

    fn read_exact(
        &mut self,
        buf: &mut [u8],
        alive: &dyn Fn() -> Result<()>,
        timeout: Duration,
    ) -> Result<()> {
        let mut got = 0;
        let mut last = Instant::now();
        while got < buf.len() {
            match self.stream.read(&mut buf[got..]) {
                Ok(0) => return Err(self.closed()),
                Ok(n) => {
                    got += n;
                    last = Instant::now();
                }
                Err(e) => self.waited(e, last, alive, timeout)?,
            }
        }
        Ok(())
    }

    /// After a read or write that did not go through: a slice that ran out
    /// is fine while `alive` holds and the peer moved within `timeout`.
    fn waited(
        &self,
        e: std::io::Error,
        last: Instant,
        alive: &dyn Fn() -> Result<()>,
        timeout: Duration,
    ) -> Result<()> {
        match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted => {
                alive()?;
                if last.elapsed() >= timeout {
                    return Err(Error::Training(format!(
                        "node {} did not answer within {} s (set ALEXNET_TOWER_TIMEOUT_S to wait longer)",
                        self.peer,
                        timeout.as_secs_f64()
                    )));
                }
                Ok(())
            }
            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::UnexpectedEof => {
                Err(self.closed())
            }
            _ => Err(Error::Training(format!(
                "the connection to node {}: {e}",
                self.peer
            ))),
        }
    }

    fn closed(&self) -> Error {
        Error::Training(format!(
            "node {} left the run (it closed its connection): see that node's output for why",
            self.peer
        ))
    }
}

/// How wide each value of a frame travels: f32 data as 4 bytes (which is
/// exact for it), the rest as 8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    F32,
    F64,
}

impl Width {
    /// The width of `T`'s values.
    pub fn of<T>() -> Width {
        if std::mem::size_of::<T>() == 4 {
            Width::F32
        } else {
            Width::F64
        }
    }

    fn bytes(self) -> usize {
        match self {
            Width::F32 => 4,
            Width::F64 => 8,
        }
    }
}

/// `values` as little-endian bytes of `width`, for a frame.
pub fn to_bytes(values: impl Iterator<Item = f64>, width: Width) -> Vec<u8> {
    match width {
        Width::F32 => values.flat_map(|v| (v as f32).to_le_bytes()).collect(),
        Width::F64 => values.flat_map(f64::to_le_bytes).collect(),
    }
}

/// A frame of little-endian values of `width` from node `peer`, `expected` of them.
pub fn from_bytes(frame: &[u8], expected: usize, width: Width, peer: usize) -> Result<Vec<f64>> {
    let size = width.bytes();
    if frame.len() != size * expected {
        return Err(Error::Training(format!(
            "node {peer} sent {} values where {expected} were due: do all nodes run the same net?",
            frame.len() / size
        )));
    }
    Ok(frame
        .chunks_exact(size)
        .map(|c| match width {
            Width::F32 => f64::from(f32::from_le_bytes(c.try_into().expect("chunks of 4"))),
            Width::F64 => f64::from_le_bytes(c.try_into().expect("chunks of 8")),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair() -> (Channel, Channel) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        (
            Channel::new(server, 1).unwrap(),
            Channel::new(client, 0).unwrap(),
        )
    }

    const OK: &dyn Fn() -> Result<()> = &|| Ok(());

    #[test]
    fn frames_arrive_whole_and_in_order() {
        let (mut a, mut b) = pair();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let sender = std::thread::spawn(move || {
            b.send(b"first", OK, Duration::from_secs(5)).unwrap();
            b.send(&big, OK, Duration::from_secs(5)).unwrap();
            big
        });
        assert_eq!(a.recv(OK, Duration::from_secs(5)).unwrap(), b"first");
        let got = a.recv(OK, Duration::from_secs(5)).unwrap();
        assert_eq!(got, sender.join().unwrap());
    }

    #[test]
    fn a_peer_that_leaves_or_stays_silent_is_an_error_naming_it() {
        let (mut a, b) = pair();
        let silent = a.recv(OK, Duration::from_millis(100)).unwrap_err();
        assert!(
            silent.to_string().contains("node 1 did not answer"),
            "{silent}"
        );
        drop(b);
        let gone = a.recv(OK, Duration::from_secs(5)).unwrap_err();
        assert!(gone.to_string().contains("node 1 left the run"), "{gone}");
    }

    #[test]
    fn a_failure_here_ends_the_wait_at_once() {
        let (mut a, _b) = pair();
        let failing = || Err(Error::Training("tower 1 failed".into()));
        let start = Instant::now();
        let e = a.recv(&failing, Duration::from_secs(60)).unwrap_err();
        assert!(e.to_string().contains("tower 1 failed"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn values_round_trip_and_a_wrong_count_is_refused() {
        let values = [1.5, -0.0, f64::MAX, 1e-300];
        let frame = to_bytes(values.iter().copied(), Width::F64);
        assert_eq!(from_bytes(&frame, 4, Width::F64, 2).unwrap(), values);
        let narrow = [1.5, -0.0, f64::from(f32::MAX), f64::from(f32::MIN_POSITIVE)];
        let frame = to_bytes(narrow.iter().copied(), Width::F32);
        assert_eq!(frame.len(), 16);
        assert_eq!(from_bytes(&frame, 4, Width::F32, 2).unwrap(), narrow);
        let frame = to_bytes(values.iter().copied(), Width::F64);
        let e = from_bytes(&frame, 5, Width::F64, 2).unwrap_err();
        assert!(
            e.to_string().contains("node 2 sent 4 values where 5"),
            "{e}"
        );
    }
}
