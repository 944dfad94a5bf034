//! The join benchmark (`bench/join.sh`): in the cluster lab, how long the daemon takes from
//! `booted` to Ready for the first control plane, for one worker, and for several workers
//! booted at once; a bare `kubeadm join` run by hand on a node of the same lab as the
//! baseline; and the daemon's memory. Run as root. Prints figures, asserts nothing.

use std::time::{Duration, Instant};

use clap::Parser;
use lacave_integration_tests::DaemonProcess;
use lacave_integration_tests::k8slab::{
    Api, Lab, TestNode, assert_servers_inside, booted_to_ready, kubectl, phases, wait_for,
};

#[derive(Parser)]
struct Args {
    /// Workers booted at once in the parallel round.
    #[arg(long, default_value_t = 3)]
    workers: u8,
}

fn wait_ready(
    api: &Api,
    lan: &lacave_integration_tests::netns::Netns,
    name: &str,
    daemon: &DaemonProcess,
) {
    wait_for(
        &format!("{name} ready"),
        600,
        || daemon.log(),
        || match api.node(lan, name)["state"].as_str() {
            Some("ready") => Some(()),
            Some("failed") => panic!("{name} failed: {}", api.node(lan, name)["failure"]),
            _ => None,
        },
    );
}

fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

fn main() {
    let args = Args::parse();
    lacave_integration_tests::netns::require_root("the join benchmark");
    let lab = Lab::start();
    let (lan, api, daemon, bin, state) = (&lab.lan, &lab.api, &lab.daemon, &lab.bin, &lab.state);

    // The first control plane: kubeadm init.
    let cp1 = lab.node(1, "cp1", true);
    lab.register(&cp1, "control-plane", serde_json::json!({}));
    cp1.boot(&cp1.host_key());
    wait_ready(api, lan, "cp1", daemon);
    let control_plane = booted_to_ready(api, lan, "cp1");

    // The first worker, right after kubeadm init: the new control plane is still settling
    // (its controller-manager must sign cluster-info for the token before discovery works).
    let w0 = lab.node(2, "w0", false);
    lab.register(&w0, "worker", serde_json::json!({}));
    w0.boot(&w0.host_key());
    wait_ready(api, lan, "w0", daemon);
    let first = booted_to_ready(api, lan, "w0");
    let first_phases = phases(api, lan, "w0");

    // The baseline: a bare `kubeadm join` typed on a node of the same lab, with a token made
    // on the control plane, timed to the Node's Ready.
    let bare = lab.node(3, "bare1", false);
    let join = cp1.exec(
        "kubeadm token create --kubeconfig /etc/kubernetes/admin.conf --ttl 1h --print-join-command",
    );
    let word_after = |flag: &str| {
        let words: Vec<&str> = join.split_whitespace().collect();
        let i = words
            .iter()
            .position(|w| *w == flag)
            .expect("a join command");
        words[i + 1].to_string()
    };
    let (token, hash) = (
        word_after("--token"),
        word_after("--discovery-token-ca-cert-hash"),
    );
    let join_config = format!(
        "apiVersion: kubeadm.k8s.io/v1beta4\nkind: JoinConfiguration\ndiscovery:\n  bootstrapToken:\n    apiServerEndpoint: kube.lacave:6443\n    token: {token}\n    caCertHashes: [\"{hash}\"]\n  tlsBootstrapToken: {token}\nnodeRegistration:\n  name: bare1\n  kubeletExtraArgs: [{{name: node-ip, value: {ip}}}]\n  ignorePreflightErrors: [\"SystemVerification\", \"ImagePull\", \"Swap\", \"FileExisting-crictl\"]\n",
        ip = bare.ip
    );
    std::fs::write(bare.dir.path().join("join.yaml"), join_config).unwrap();
    let kubeconfig = state.path().join("bench.kubeconfig");
    let text = std::fs::read_to_string(state.path().join("cluster/lacave.kubeconfig"))
        .unwrap()
        .replace("https://kube.lacave:6443", "https://10.123.0.11:6443");
    assert_servers_inside("the benchmark's kubeconfig", &text);
    std::fs::write(&kubeconfig, text).unwrap();
    let started = Instant::now();
    let out = bare.exec(&format!(
        "kubeadm join --config {}/join.yaml 2>&1; echo rc=$?",
        bare.dir.path().display()
    ));
    assert!(out.contains("rc=0"), "bare kubeadm join: {out}");
    let joined = started.elapsed();
    wait_for(
        "bare1 Ready",
        300,
        || daemon.log(),
        || {
            let (_, out) = kubectl(
                lan,
                &kubeconfig,
                &["get", "node", "bare1", "--no-headers"],
                bin,
            );
            out.contains(" Ready ").then_some(())
        },
    );
    let bare_ready = started.elapsed();

    // One worker alone, in the same settled cluster as the bare join.
    let w1 = lab.node(4, "w1", false);
    lab.register(&w1, "worker", serde_json::json!({}));
    w1.boot(&w1.host_key());
    wait_ready(api, lan, "w1", daemon);
    let single = booted_to_ready(api, lan, "w1");
    let where_it_goes = phases(api, lan, "w1");

    // Several workers booted at once.
    let workers: Vec<TestNode> = (0..args.workers)
        .map(|i| {
            let name = format!("p{}", i + 1);
            lab.node(10 + i, &name, false)
        })
        .collect();
    for w in &workers {
        lab.register(w, "worker", serde_json::json!({}));
    }
    let round = Instant::now();
    for w in &workers {
        w.boot(&w.host_key());
    }
    for w in &workers {
        wait_ready(api, lan, &w.name, daemon);
    }
    let round_wall = round.elapsed();
    let parallel: Vec<f64> = workers
        .iter()
        .map(|w| booted_to_ready(api, lan, &w.name))
        .collect();
    let slowest = parallel.iter().cloned().fold(0.0, f64::max);
    let (rss, peak) = memory(daemon.child.id());

    println!(
        "join benchmark ({} parallel workers), this machine:",
        args.workers
    );
    println!(
        "  first control plane, booted → ready (kubeadm init):  {control_plane:6.1} s   (target ≤ 90 s)"
    );
    println!("  first worker right after init, booted → ready:        {first:6.1} s");
    println!(
        "    (w0, seconds after booted: {})",
        first_phases
            .iter()
            .map(|(what, t)| format!("{what} {t:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  one worker, settled cluster, booted → ready:          {single:6.1} s   (target ≤ 30 s)"
    );
    println!(
        "    (w1, seconds after booted: {})",
        where_it_goes
            .iter()
            .map(|(what, t)| format!("{what} {t:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  bare kubeadm join by hand: join {:.1} s, Node Ready    {:6.1} s   → lacave/bare = {:.2}",
        joined.as_secs_f64(),
        bare_ready.as_secs_f64(),
        single / bare_ready.as_secs_f64()
    );
    println!(
        "  {} workers at once, slowest booted → ready:           {slowest:6.1} s   (all: {}; wall {:.1} s) → {:.2}× one worker (target ≤ 2×)",
        args.workers,
        parallel
            .iter()
            .map(|t| format!("{t:.1}"))
            .collect::<Vec<_>>()
            .join(", "),
        round_wall.as_secs_f64(),
        slowest / single
    );
    println!(
        "  daemon memory: RSS {:.1} MB now, peak {:.1} MB (target < 60 MB)",
        rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    drop(workers);
    drop(bare);
    drop(w1);
    drop(w0);
    drop(cp1);
    drop(lab);
    std::thread::sleep(Duration::from_millis(100));
}
