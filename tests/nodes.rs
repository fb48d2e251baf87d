//! A run over several nodes, here two processes on this host talking over
//! TCP: two nodes of one replica each train bit for bit as two replicas in
//! one process (which the replica tests hold to one pair on the whole
//! batch), node 1 writes nothing, a resumed two-node run equals an unbroken
//! one, a node with other flags is refused by name, and a node that dies
//! stops the other at once with a message naming it.

mod common;

use common::{alexnet, scratch};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The small preset on a small synthetic set, at a constant rate.
const RUN: [&str; 10] = [
    "train",
    "--cpu",
    "--batch",
    "16",
    "--train-images",
    "64",
    "--val-images",
    "24",
    "--schedule",
    "constant",
];

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

/// Node `rank` of two, started; node 1 is told where node 0 is through
/// torchrun's variables, node 0 through the flags.
fn node(rank: usize, port: u16, args: &[&str]) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_alexnet"));
    command.args(RUN).args(args).arg("--quiet");
    if rank == 0 {
        command.args(["--nodes", "2", "--node-rank", "0"]);
        command.args(["--master", &format!("127.0.0.1:{port}")]);
    } else {
        command.envs([
            ("WORLD_SIZE", "2"),
            ("RANK", "1"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", &port.to_string()),
        ]);
    }
    command
        .env("ALEXNET_TOWER_TIMEOUT_S", "10")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts")
}

/// Both nodes of a run with `args` (and `zero`, `one` for node 0 or 1
/// alone), to their ends.
fn two_nodes(args: &[&str], (zero, one): (&[&str], &[&str])) -> [Output; 2] {
    let port = free_port();
    let node1 = node(1, port, &[args, one].concat());
    let node0 = node(0, port, &[args, zero].concat());
    [node0, node1].map(|c| c.wait_with_output().expect("the node ends"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn checkpoint_bytes(run: &Path, step: usize) -> Vec<u8> {
    let folder = run.join(format!("checkpoints/step-{step:08}"));
    ["weights.safetensors", "state.safetensors"]
        .iter()
        .flat_map(|f| std::fs::read(folder.join(f)).expect("the checkpoint is there"))
        .collect()
}

#[test]
fn two_nodes_train_as_two_replicas_in_one_process_and_only_node_0_writes() {
    let dir = scratch("nodes-same");
    let (at0, at1, here) = (dir.join("node0"), dir.join("node1"), dir.join("replicas"));
    let steps = ["--steps", "10"];
    let [out0, out1] = two_nodes(
        &steps,
        (
            &["--run-dir", at0.to_str().unwrap()],
            &["--run-dir", at1.to_str().unwrap()],
        ),
    );
    assert!(out0.status.success(), "{}", text(&out0));
    assert!(out1.status.success(), "{}", text(&out1));
    assert!(text(&out1).contains("checkpoint none"), "{}", text(&out1));
    assert!(!at1.exists(), "node 1 wrote {}", at1.display());
    let one = alexnet(
        &[
            &RUN[..],
            &steps,
            &[
                "--replicas",
                "2",
                "--quiet",
                "--run-dir",
                here.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    assert!(one.status.success(), "{}", text(&one));
    assert!(
        checkpoint_bytes(&at0, 10) == checkpoint_bytes(&here, 10),
        "two nodes and two replicas in one process saved different checkpoints"
    );
    // Validation counts are summed over the nodes' halves of the set.
    let val = |out: &Output| {
        text(out)
            .lines()
            .filter(|l| l.starts_with("validation after"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(val(&out0), val(&one));
    assert_eq!(
        val(&out1),
        val(&one),
        "every node reports the whole validation"
    );
    assert!(
        val(&one).iter().all(|l| l.ends_with("(24 images)")),
        "{:?}",
        val(&one)
    );
}

#[test]
fn a_resumed_two_node_run_equals_an_unbroken_one() {
    let dir = scratch("nodes-resume");
    let (broken, unbroken) = (dir.join("broken"), dir.join("unbroken"));
    let b = broken.to_str().unwrap();
    let [first0, first1] = two_nodes(&["--steps", "6", "--run-dir", b], (&[], &[]));
    assert!(
        first0.status.success() && first1.status.success(),
        "{}",
        text(&first1)
    );
    // Node 1 resumes from the same folder (a shared file system).
    let [then0, then1] = two_nodes(&["--resume", b, "--steps", "12"], (&[], &[]));
    assert!(then0.status.success(), "{}", text(&then0));
    assert!(then1.status.success(), "{}", text(&then1));
    let [whole0, whole1] = two_nodes(
        &["--steps", "12", "--run-dir", unbroken.to_str().unwrap()],
        (&[], &[]),
    );
    assert!(
        whole0.status.success() && whole1.status.success(),
        "{}",
        text(&whole0)
    );
    assert!(
        checkpoint_bytes(&broken, 12) == checkpoint_bytes(&unbroken, 12),
        "the resumed run differs from the unbroken one"
    );
}

#[test]
fn a_node_with_other_flags_is_refused_naming_the_difference() {
    let dir = scratch("nodes-refused");
    let run = dir.join("run");
    let [out0, out1] = two_nodes(
        &["--steps", "4", "--run-dir", run.to_str().unwrap()],
        (&[], &["--seed", "2"]),
    );
    for out in [&out0, &out1] {
        assert_eq!(out.status.code(), Some(2), "{}", text(out));
        assert!(
            text(out).contains("`seed = 1` on node 0, `seed = 2` on node 1"),
            "{}",
            text(out)
        );
    }
    assert!(
        !run.join("checkpoints").exists(),
        "a refused run saved nothing"
    );
}

#[test]
fn a_node_that_dies_stops_the_other_at_once_naming_it() {
    let dir = scratch("nodes-dies");
    let port = free_port();
    let run = ["--steps", "100000", "--log-every", "1"];
    let mut node1 = node(1, port, &run);
    let node0 = node(
        0,
        port,
        &[&run[..], &["--run-dir", dir.join("run").to_str().unwrap()]].concat(),
    );
    // Node 1 says it is in once it joined; then it trains a moment and dies.
    let stdout = node1.stdout.take().expect("node 1's output");
    let joined = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.starts_with("node 1 of 2: 1 replica"));
    assert!(joined, "node 1 joined the run");
    std::thread::sleep(Duration::from_millis(500));
    node1.kill().expect("node 1 is killed");
    let killed = Instant::now();
    let out0 = node0.wait_with_output().expect("node 0 ends");
    assert!(
        killed.elapsed() < Duration::from_secs(20),
        "node 0 took {:?} to notice",
        killed.elapsed()
    );
    assert_eq!(out0.status.code(), Some(1), "{}", text(&out0));
    assert!(
        text(&out0).contains("node 1 left the run"),
        "{}",
        text(&out0)
    );
    let _ = node1.wait();
}

#[test]
fn a_signal_on_any_node_stops_every_node_at_the_same_step_and_node_0_saves() {
    let dir = scratch("nodes-signal");
    let port = free_port();
    let run = dir.join("run");
    let steps = ["--steps", "100000", "--log-every", "1"];
    let mut node1 = node(1, port, &steps);
    let node0 = node(
        0,
        port,
        &[&steps[..], &["--run-dir", run.to_str().unwrap()]].concat(),
    );
    let stdout = node1.stdout.take().expect("node 1's output");
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    assert!(
        lines.any(|l| l.starts_with("node 1 of 2: 1 replica")),
        "node 1 joined the run"
    );
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: a plain signal to a child this test started and still owns.
    let sent = unsafe { libc::kill(node1.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(sent, 0, "SIGTERM reaches node 1");
    let rest: Vec<String> = lines.collect();
    let out0 = node0.wait_with_output().expect("node 0 ends");
    let status1 = node1.wait().expect("node 1 ends");
    assert!(out0.status.success(), "{}", text(&out0));
    assert!(status1.success(), "{rest:?}");
    let stopped = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("stopped by a signal after step "))
            .and_then(|l| l.split_whitespace().next())
            .map(str::to_string)
    };
    let at0 = stopped(&text(&out0)).expect("node 0 says where it stopped");
    let at1 = stopped(&rest.join("\n")).expect("node 1 says where it stopped");
    assert_eq!(at0, at1, "both nodes stop after the same step");
    let step: usize = at0.parse().expect("a step number");
    assert!(
        run.join(format!("checkpoints/step-{step:08}")).is_dir(),
        "node 0 saved step {step}"
    );
}
