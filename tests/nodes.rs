//! ironlb as a user's cluster runs it: `deploy/` applied unchanged on three
//! real nodes (network namespaces running containerd, kubelet and
//! kube-proxy: `support::nodes`), its image built from the binary under
//! test, Services whose endpoints are real Pods. Needs root and the local
//! control plane (`.ci/run` starts it); without them it skips and says why,
//! with `CI=true` it fails instead. See docs/testing.md.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::cluster::{Cluster, PATIENCE};
use support::netns::in_netns;
use support::nodes::{ECHO_IMAGE, Nodes};
use support::tenancy;

/// The client on the nodes' segment.
const CLIENT: &str = "10.77.0.2";

/// The pool: one address per Service.
const POOL: &str = "10.77.0.100-10.77.0.101";

/// The namespace the backends and their Services live in: one per run, as
/// the last run's may still be terminating.
fn app_namespace() -> String {
    format!("echo-{}", std::process::id())
}

/// What the test adds to a cluster running `deploy/`: a pool announced from
/// nodes 1 and 2 only (so losing the owner never loses the backends), two
/// echo Pods on node 3, and two LoadBalancer Services in front of them —
/// one forwarded by kube-proxy, one by ironlb's forwarder with PROXY v2.
fn app(nodes: &Nodes) -> String {
    let (n1, n2, n3) = (&nodes.names[0], &nodes.names[1], &nodes.names[2]);
    let app = app_namespace();
    format!(
        r#"apiVersion: ironlb.dev/v1alpha1
kind: IPAddressPool
metadata: {{name: lab-nodes}}
spec: {{addresses: ["{POOL}"]}}
---
apiVersion: ironlb.dev/v1alpha1
kind: L2Advertisement
metadata: {{name: lab-nodes}}
spec:
  ipAddressPools: [lab-nodes]
  interfaces: [eth0]
  nodeSelectors:
    - matchExpressions:
        - {{key: kubernetes.io/hostname, operator: In, values: ["{n1}", "{n2}"]}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: {app}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: echo, namespace: {app}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: echo}}}}
  template:
    metadata: {{labels: {{app: echo}}}}
    spec:
      nodeSelector: {{kubernetes.io/hostname: "{n3}"}}
      containers:
        - name: echo
          image: {ECHO_IMAGE}
          imagePullPolicy: Never
          readinessProbe:
            tcpSocket: {{port: 8080}}
            periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {{name: by-kube-proxy, namespace: {app}}}
spec:
  type: LoadBalancer
  selector: {{app: echo}}
  ports: [{{name: tcp, port: 80, targetPort: 8080, protocol: TCP}}]
---
apiVersion: v1
kind: Service
metadata:
  name: by-ironlb
  namespace: {app}
  annotations:
    ironlb.dev/forwarding: embedded
    ironlb.dev/proxy-protocol: v2
spec:
  type: LoadBalancer
  selector: {{app: echo}}
  ports:
    - {{name: tcp, port: 80, targetPort: 8080, protocol: TCP}}
    - {{name: udp, port: 80, targetPort: 8080, protocol: UDP}}
"#
    )
}

/// `deploy/` unchanged becomes Ready on three nodes; a client reaches
/// Services backed by real Pods through kube-proxy and through the
/// forwarder (the Pod reads the client's address from the PROXY header);
/// a rolling update of the speakers resets no connection while a TCP
/// transfer and a UDP exchange run; losing the owner's node (every process
/// on it killed) moves the address, and the client is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_runs_as_real_pods_and_survives_an_upgrade_and_a_node_loss() {
    let test = "deploy_runs_as_real_pods_and_survives_an_upgrade_and_a_node_loss";
    let Some(cluster) = Cluster::lock(test).await else {
        return;
    };
    let started = Instant::now();
    let Some(mut nodes) = Nodes::start(&cluster, test, 3) else {
        return;
    };
    println!(
        "three nodes Ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let _installed = cluster.install();
    let app_file = nodes.lab.dir().join("app.yaml");
    std::fs::write(&app_file, app(&nodes)).expect("write app.yaml");
    let _app = Applied {
        cluster: &cluster,
        file: &app_file,
    };
    for what in ["deployment/ironlb-controller", "daemonset/ironlb-speaker"] {
        rollout(&cluster, &nodes, what);
    }
    let speakers = cluster.kubectl_ok(&[
        "get", "pods", "-n", "ironlb-system", "-l", "app.kubernetes.io/component=speaker",
        "-o", "jsonpath={range .items[*]}{.spec.nodeName} {.status.containerStatuses[0].ready}{\"\\n\"}{end}",
    ]);
    for name in &nodes.names {
        assert!(
            speakers.lines().any(|l| l == format!("{name} true")),
            "no ready speaker on {name}:\n{speakers}"
        );
    }
    cluster.kubectl_ok(&["apply", "-f", app_file.to_str().expect("utf-8 path")]);
    rollout_in(&cluster, &nodes, &app_namespace(), "deployment/echo");
    let client = nodes.lab.namespace("client");
    let switch = nodes.switch.clone();
    nodes
        .lab
        .plug(&switch, &client, "pc", &[&format!("{CLIENT}/24")]);

    let proxied = address_of(&cluster, "by-kube-proxy").await;
    let forwarded = address_of(&cluster, "by-ironlb").await;
    println!("addresses: by-kube-proxy {proxied}, by-ironlb {forwarded}");
    let tcp = |vip: &str| SocketAddr::new(vip.parse().expect("address"), 80);

    // Through kube-proxy: the owner's kube-proxy sends it on to a Pod on
    // node 3, masqueraded (the Service's policy is Cluster).
    let said = wait_for_answer(&nodes, &client, || {
        ask_tcp(&client, tcp(&proxied), b"hello\n")
    });
    assert!(said.starts_with("pod echo-"), "{said}");
    assert!(said.ends_with("hello\n"), "{said}");

    // Through ironlb's forwarder: over TCP the Pod reads the client's
    // address in the PROXY v2 header; over UDP (no header) it sees the
    // owner's.
    let said = wait_for_answer(&nodes, &client, || {
        ask_tcp(&client, tcp(&forwarded), b"hello\n")
    });
    assert_eq!(
        proxy_v2_source(said.as_bytes()),
        Some(CLIENT.parse().expect("ip")),
        "{said:?}"
    );
    let said = ask_udp(&client, tcp(&forwarded), b"hello").expect("a UDP answer");
    let said = String::from_utf8_lossy(&said);
    let owner = owner(&nodes, &client, tcp(&forwarded));
    assert!(
        said.starts_with("pod echo-")
            && said.contains(&format!(" from {}:", nodes.address(owner)))
            && said.ends_with("hello"),
        "{said}"
    );

    upgrade_resets_nothing(&cluster, &nodes, &client, tcp(&forwarded));
    let lost = node_loss_moves_the_address(&nodes, &client, tcp(&forwarded), tcp(&proxied));
    nodes.remove(lost);
}

/// The speakers' DaemonSet rolls (its template changes, `maxSurge: 1`)
/// while transfers, back-to-back short connections and a UDP exchange run
/// through the forwarder: none is reset, refused or left unanswered. A new
/// transfer starts every [`TRANSFER_EVERY`] and lasts [`TRANSFER_FOR`], so
/// each speaker's hand-over happens in the middle of several, and each
/// ends well within the old speaker's drain period (30 s): a connection
/// longer than that is cut by design (docs/forwarder.md).
fn upgrade_resets_nothing(cluster: &Cluster, nodes: &Nodes, client: &str, vip: SocketAddr) {
    let stop = Arc::new(AtomicBool::new(false));
    let spawn = |work: fn(&str, SocketAddr, &AtomicBool) -> Outcome| {
        let (client, stop) = (client.to_string(), stop.clone());
        std::thread::spawn(move || work(&client, vip, &stop))
    };
    let threads = [
        spawn(transfers),
        spawn(short_connections),
        spawn(udp_exchange),
    ];
    std::thread::sleep(TRANSFER_EVERY);
    let started = Instant::now();
    cluster.kubectl_ok(&[
        "set",
        "env",
        "-n",
        "ironlb-system",
        "daemonset/ironlb-speaker",
        &format!("IRONLB_LAB_ROLLOUT={}", std::process::id()),
    ]);
    rollout(cluster, nodes, "daemonset/ironlb-speaker");
    let rolled = started.elapsed();
    std::thread::sleep(TRANSFER_EVERY);
    stop.store(true, Ordering::Relaxed);
    let [transfers, short, udp] = threads.map(|t| t.join().expect("a traffic thread"));
    println!(
        "rolling update of {} speakers in {:.1} s: {transfers}; {short}; {udp}",
        nodes.names.len(),
        rolled.as_secs_f64(),
    );
    for outcome in [transfers, short, udp] {
        assert!(outcome.ok > 0, "{outcome}");
        assert!(
            outcome.failed.is_empty(),
            "during the upgrade, {outcome}: {:?}",
            outcome.failed
        );
    }
}

/// How often a transfer starts during the upgrade, and how long each lasts.
const TRANSFER_EVERY: Duration = Duration::from_secs(2);
const TRANSFER_FOR: Duration = Duration::from_secs(10);

/// What one kind of traffic met.
struct Outcome {
    what: &'static str,
    ok: u64,
    failed: Vec<String>,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} ok, {} failed",
            self.what,
            self.ok,
            self.failed.len()
        )
    }
}

/// The owner of `vip` loses power; the other announcing node takes the
/// address over and the client is served again, through the forwarder and
/// through kube-proxy. Returns the node lost.
fn node_loss_moves_the_address(
    nodes: &Nodes,
    client: &str,
    vip: SocketAddr,
    proxied: SocketAddr,
) -> usize {
    let owner = owner(nodes, client, vip);
    assert!(
        owner <= 2,
        "only nodes 1 and 2 announce, yet node {owner} does"
    );
    let killed = Instant::now();
    nodes.power_off(owner);
    let served = loop {
        // Tried every 20 ms, each giving up after 100 ms: the figure is
        // within about 100 ms of when the new owner first answers.
        let said = ask_tcp_within(client, vip, b"again\n", Duration::from_millis(100));
        if said.is_ok_and(|s| s.ends_with("again\n")) {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < PATIENCE,
            "no answer after node {owner} lost power:\n{}",
            speaker_logs(nodes)
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let now_owner = owner_of(nodes, client, vip);
    println!(
        "node {owner} lost power; served again after {} ms by node {now_owner:?}",
        served.as_millis()
    );
    assert_eq!(
        now_owner,
        Some(3 - owner),
        "the other announcing node took over"
    );
    let said = wait_for_answer(nodes, client, || ask_tcp(client, proxied, b"still\n"));
    assert!(said.ends_with("still\n"), "{said}");
    owner
}

/// A transfer starting every [`TRANSFER_EVERY`] until `stop`, each
/// echoing for [`TRANSFER_FOR`].
fn transfers(client: &str, vip: SocketAddr, stop: &AtomicBool) -> Outcome {
    let mut running = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let client = client.to_string();
        running.push(std::thread::spawn(move || transfer(&client, vip)));
        std::thread::sleep(TRANSFER_EVERY);
    }
    let mut outcome = Outcome {
        what: "transfers",
        ok: 0,
        failed: Vec::new(),
    };
    for (n, t) in running.into_iter().enumerate() {
        match t.join().expect("a transfer's thread") {
            Ok(()) => outcome.ok += 1,
            Err(e) => outcome.failed.push(format!("#{n}: {e}")),
        }
    }
    outcome
}

/// One connection writing 16 KiB every 50 ms for [`TRANSFER_FOR`], each
/// chunk read back intact.
fn transfer(client: &str, vip: SocketAddr) -> Result<(), String> {
    let started = Instant::now();
    let failed = |e: std::io::Error| format!("{e} after {} ms", started.elapsed().as_millis());
    let mut stream = in_netns(client, || {
        TcpStream::connect_timeout(&vip, Duration::from_secs(1))
    })
    .map_err(failed)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(failed)?;
    // The greeting and the PROXY header come back first: read up to a
    // line of ours.
    stream.write_all(b"start\n").map_err(failed)?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"start\n") {
        stream.read_exact(&mut byte).map_err(failed)?;
        head.push(byte[0]);
    }
    let chunk: Vec<u8> = (0..16 * 1024).map(|i| (i % 251) as u8).collect();
    let mut back = vec![0u8; chunk.len()];
    while started.elapsed() < TRANSFER_FOR {
        stream.write_all(&chunk).map_err(failed)?;
        stream.read_exact(&mut back).map_err(failed)?;
        if back != chunk {
            return Err("the echo differs from what was sent".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Back-to-back connections, each sending a line and reading it back, until
/// `stop`.
fn short_connections(client: &str, vip: SocketAddr, stop: &AtomicBool) -> Outcome {
    let mut outcome = Outcome {
        what: "short connections",
        ok: 0,
        failed: Vec::new(),
    };
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let line = format!("short {n}\n");
        match ask_tcp(client, vip, line.as_bytes()) {
            Ok(said) if said.ends_with(&line) => outcome.ok += 1,
            Ok(said) => outcome.failed.push(format!("#{n}: answered {said:?}")),
            Err(e) => outcome.failed.push(format!("#{n}: {e}")),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    outcome
}

/// A datagram every 20 ms on one socket until `stop`, each waiting for its
/// answer (1 s).
fn udp_exchange(client: &str, vip: SocketAddr, stop: &AtomicBool) -> Outcome {
    let socket = in_netns(client, || UdpSocket::bind("0.0.0.0:0")).expect("a UDP socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let mut outcome = Outcome {
        what: "UDP datagrams",
        ok: 0,
        failed: Vec::new(),
    };
    let mut buf = [0u8; 2048];
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let payload = format!("datagram {n}");
        socket.send_to(payload.as_bytes(), vip).expect("send");
        // Late answers to earlier datagrams are skipped, not counted twice.
        loop {
            match socket.recv_from(&mut buf) {
                Ok((len, _)) if buf[..len].ends_with(payload.as_bytes()) => {
                    outcome.ok += 1;
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    outcome.failed.push(format!("#{n}: {e}"));
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    outcome
}

/// Connects from `client` to `vip`, sends `line` and reads until it comes
/// back (the echo Pod's greeting first, with any PROXY header).
fn ask_tcp(client: &str, vip: SocketAddr, line: &[u8]) -> std::io::Result<String> {
    ask_tcp_within(client, vip, line, Duration::from_millis(500))
}

/// [`ask_tcp`], giving up on connecting after `patience`.
fn ask_tcp_within(
    client: &str,
    vip: SocketAddr,
    line: &[u8],
    patience: Duration,
) -> std::io::Result<String> {
    let mut stream = in_netns(client, || TcpStream::connect_timeout(&vip, patience))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(line)?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(line) {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("closed after {:?}", String::from_utf8_lossy(&got)),
            ));
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&got).into_owned())
}

/// One datagram from `client` to `vip`, and its answer.
fn ask_udp(client: &str, vip: SocketAddr, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let socket = in_netns(client, || UdpSocket::bind("0.0.0.0:0"))?;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    socket.send_to(payload, vip)?;
    let mut buf = [0u8; 2048];
    let (n, _) = socket.recv_from(&mut buf)?;
    Ok(buf[..n].to_vec())
}

/// The source address of the PROXY v2 header inside `said` (IPv4).
fn proxy_v2_source(said: &[u8]) -> Option<std::net::Ipv4Addr> {
    const SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
    let at = said.windows(SIGNATURE.len()).position(|w| w == SIGNATURE)?;
    let header = said.get(at..at + 20)?;
    // Version 2, PROXY command; TCP or UDP over IPv4.
    if header[12] != 0x21 || (header[13] != 0x11 && header[13] != 0x12) {
        return None;
    }
    Some(std::net::Ipv4Addr::new(
        header[16], header[17], header[18], header[19],
    ))
}

/// Asks until an answer comes (the address is being announced, kube-proxy
/// syncing), within [`PATIENCE`].
fn wait_for_answer(
    nodes: &Nodes,
    client: &str,
    mut ask: impl FnMut() -> std::io::Result<String>,
) -> String {
    let started = Instant::now();
    loop {
        match ask() {
            Ok(said) => return said,
            Err(e) if started.elapsed() > PATIENCE => {
                if std::env::var_os("HOLD").is_some() {
                    std::thread::sleep(Duration::from_secs(400));
                }
                panic!(
                    "no answer from {client}: {e}\n{}\n{}",
                    nodes.logs(1, "kube-proxy"),
                    nodes.logs(2, "kube-proxy")
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The node (1-based) whose `eth0` answers ARP for `vip` at `client`: the
/// client's neighbour entry, which a connection makes or refreshes.
fn owner_of(nodes: &Nodes, client: &str, vip: SocketAddr) -> Option<usize> {
    let _ = ask_tcp(client, vip, b"who\n");
    let ip = vip.ip().to_string();
    let neigh = nodes
        .lab
        .exec_ok(client, &["ip", "neigh", "show", "to", &ip]);
    let mac = neigh
        .split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)?;
    (1..=nodes.names.len()).find(|i| {
        let own = nodes
            .lab
            .exec_ok(&nodes.names[i - 1], &["cat", "/sys/class/net/eth0/address"]);
        own.trim() == mac
    })
}

fn owner(nodes: &Nodes, client: &str, vip: SocketAddr) -> usize {
    owner_of(nodes, client, vip).unwrap_or_else(|| panic!("no node answers ARP for {vip}"))
}

/// The address Service `name` of [`app_namespace`] was given.
async fn address_of(cluster: &Cluster, name: &str) -> String {
    let client = cluster.client().await;
    support::wait_for(
        &format!("{}/{name} to get an address", app_namespace()),
        PATIENCE,
        || async {
            support::ingress_ips(&client, &app_namespace(), name)
                .await
                .and_then(|ips| ips.into_iter().next())
        },
    )
    .await
}

fn rollout(cluster: &Cluster, nodes: &Nodes, what: &str) {
    rollout_in(cluster, nodes, "ironlb-system", what);
}

/// Waits until `what` in `namespace` is rolled out; says why not, with the
/// Pods, events and node logs, when it is not in time.
fn rollout_in(cluster: &Cluster, nodes: &Nodes, namespace: &str, what: &str) {
    let out = cluster.kubectl(&["rollout", "status", "-n", namespace, what, "--timeout=90s"]);
    if !out.status.success() {
        let pods = cluster.kubectl(&["get", "pods", "-A", "-o", "wide"]);
        let events = cluster.kubectl(&["get", "events", "-n", namespace]);
        panic!(
            "{what} did not roll out: {}\n{}\n{}\n{}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&pods.stdout),
            String::from_utf8_lossy(&events.stdout),
            speaker_logs(nodes),
            nodes.logs(1, "kubelet"),
            nodes.logs(1, "containerd")
        );
    }
}

fn speaker_logs(nodes: &Nodes) -> String {
    nodes.pod_logs("ironlb-system_ironlb-speaker-", 20)
}

/// What the test applied on top of `deploy/`, deleted when it ends.
struct Applied<'a> {
    cluster: &'a Cluster,
    file: &'a std::path::Path,
}

impl Drop for Applied<'_> {
    fn drop(&mut self) {
        let _ = self.cluster.kubectl(&[
            "delete",
            "-f",
            self.file.to_str().unwrap_or_default(),
            "--ignore-not-found",
            "--wait=false",
        ]);
    }
}

/// A tenant who holds only `edit` in its namespace (and the Gateway API
/// kinds there) tries to reach another team's Pods through ironlb, on real
/// nodes with `deploy/overlays/gateway`: a Service that claims to be a
/// Gateway's (owned by a real Gateway of another class, with a hand-written
/// route table naming the team's internal Service), a route of its own
/// ironlb Gateway to that Service without a ReferenceGrant, and the team's
/// shared address with the team's sharing key. None reaches the team's
/// internal Pod or takes its address; a ReferenceGrant the team writes
/// opens the route (the refusal was the rule, not a broken path), and the
/// team's database answers throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_reach_no_other_namespaces_pods_on_real_nodes() {
    let test = "tenants_reach_no_other_namespaces_pods_on_real_nodes";
    let Some(cluster) = Cluster::lock(test).await else {
        return;
    };
    let Some(mut nodes) = Nodes::start(&cluster, test, 2) else {
        return;
    };
    support::cluster_lab::install_gateway_crds(&cluster);
    let _installed = cluster.install_with_gateway();
    for what in ["deployment/ironlb-controller", "daemonset/ironlb-speaker"] {
        rollout(&cluster, &nodes, what);
    }
    let dir = nodes.lab.dir().to_path_buf();
    let (team, tenant) = (
        format!("team-{}", std::process::id()),
        format!("tenant-{}", std::process::id()),
    );
    let class = format!("ironlb-{}", std::process::id());
    let other_class = format!("other-{}", std::process::id());
    let team_file = dir.join("team.yaml");
    std::fs::write(
        &team_file,
        team_objects(&team, &tenant, &class, &other_class),
    )
    .expect("write team.yaml");
    let _team = Applied {
        cluster: &cluster,
        file: &team_file,
    };
    cluster.kubectl_ok(&["apply", "-f", team_file.to_str().expect("utf-8 path")]);
    for what in ["deployment/db", "deployment/secret"] {
        rollout_in(&cluster, &nodes, &team, what);
    }
    let client = nodes.lab.namespace("client");
    let switch = nodes.switch.clone();
    nodes
        .lab
        .plug(&switch, &client, "pc", &[&format!("{CLIENT}/24")]);
    let kube = cluster.client().await;
    let address = |ns: &str, name: &str| {
        let (kube, ns, name) = (kube.clone(), ns.to_string(), name.to_string());
        async move {
            support::ingress_ips(&kube, &ns, &name)
                .await?
                .into_iter()
                .next()
        }
    };
    let db = SocketAddr::new(TEAM_ADDRESS.parse().expect("ip"), 5432);
    let said = wait_for_answer(&nodes, &client, || ask_tcp(&client, db, b"team\n"));
    assert!(said.starts_with("pod db-"), "{said}");

    let tenant_kubeconfig = cluster.service_account_kubeconfig(&tenant, "tenant", &dir, None);
    let as_tenant = |name: &str, yaml: String| {
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, yaml).expect("write the tenant's manifest");
        let out = cluster.kubectl_as(
            &tenant_kubeconfig,
            &["apply", "-f", path.to_str().expect("utf-8 path")],
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let never_the_secret = |at: SocketAddr, what: &str| {
        for _ in 0..10 {
            if let Ok(said) = ask_tcp(&client, at, b"steal\n") {
                assert!(
                    !said.contains("pod secret-"),
                    "{what}: the team's internal Pod answered at {at}: {said}"
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    // 1. A Service claiming to be a Gateway's: owned by a real Gateway of
    // another class, its route table written by hand.
    let (ok, text) = as_tenant(
        "other-gateway",
        tenancy::gateway(&tenant, "edge", &other_class),
    );
    assert!(ok, "{text}");
    let uid = cluster.kubectl_ok(&[
        "get",
        "gateway",
        "edge",
        "-n",
        &tenant,
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    let (ok, text) = as_tenant(
        "forged",
        tenancy::forged_gateway_service(&tenant, &team, uid.trim(), None),
    );
    assert!(ok, "the tenant may write Services: {text}");
    let forged = ironlb::gateway::service_name("edge");
    let ip = support::wait_for("the forged Service's address", PATIENCE, || {
        address(&tenant, &forged)
    })
    .await;
    never_the_secret(
        SocketAddr::new(ip.parse().expect("ip"), 8080),
        "a forged route table",
    );

    // 2. A route of the tenant's own ironlb Gateway to the team's internal
    // Service, without a ReferenceGrant; then the team grants it.
    let (ok, text) = as_tenant("steal", tenancy::steal_route(&tenant, &team, &class));
    assert!(ok, "{text}");
    let ip = support::wait_for("the tenant Gateway's address", PATIENCE, || {
        address(&tenant, &ironlb::gateway::service_name("gw"))
    })
    .await;
    let gw = SocketAddr::new(ip.parse().expect("ip"), 8080);
    never_the_secret(gw, "a route without a ReferenceGrant");
    let grant = tenancy::reference_grant(&team, &tenant);
    let (ok, text) = as_tenant("grant", grant.clone());
    assert!(
        !ok && text.contains("forbidden"),
        "the tenant cannot grant itself: {text}"
    );
    let grant_file = dir.join("team-grant.yaml");
    std::fs::write(&grant_file, grant).expect("write the grant");
    cluster.kubectl_ok(&["apply", "-f", grant_file.to_str().expect("utf-8 path")]);
    let said = wait_for_answer(&nodes, &client, || {
        ask_tcp(&client, gw, b"granted\n").and_then(|said| {
            said.contains("pod secret-")
                .then_some(said.clone())
                .ok_or_else(|| std::io::Error::other(format!("answered {said:?}")))
        })
    });
    assert!(said.ends_with("granted\n"), "{said}");
    cluster.kubectl_ok(&["delete", "-f", grant_file.to_str().expect("utf-8 path")]);
    support::wait_for(
        "the withdrawn grant to close the route",
        PATIENCE,
        || async {
            (!ask_tcp(&client, gw, b"closed?\n").is_ok_and(|s| s.contains("pod secret-")))
                .then_some(())
        },
    )
    .await;
    never_the_secret(gw, "the grant withdrawn");

    // 3. The team's address, with the team's sharing key.
    let (ok, text) = as_tenant("squat", squat(&tenant));
    assert!(ok, "{text}");
    let note = support::wait_for_event(&kube, &tenant, "squat", "AddressInUse").await;
    assert!(
        note.contains(&format!(
            "{TEAM_ADDRESS} is held by a Service in another namespace"
        )),
        "{note}"
    );
    assert!(
        !note.contains(&team),
        "the event names the team's namespace: {note}"
    );
    assert_eq!(address(&tenant, "squat").await, None);

    let said = ask_tcp(&client, db, b"still ours\n").expect("the team's database");
    assert!(said.starts_with("pod db-"), "{said}");
}

/// The team's database's address.
const TEAM_ADDRESS: &str = "10.77.0.100";

/// A pool and its announcement; the team's namespace with its database (a
/// LoadBalancer Service with a sharing key, forwarded by ironlb) and an
/// internal Service no client may reach, each in front of echo Pods; the
/// tenant's namespace with `edit` and the Gateway API kinds for its
/// ServiceAccount; an ironlb GatewayClass and another.
fn team_objects(team: &str, tenant: &str, class: &str, other_class: &str) -> String {
    let deployment = |name: &str| {
        format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {team}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
        - {{name: echo, image: "{ECHO_IMAGE}", imagePullPolicy: Never,
            readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}}}
---
"#
        )
    };
    format!(
        r#"apiVersion: ironlb.dev/v1alpha1
kind: IPAddressPool
metadata: {{name: lab-tenancy}}
spec: {{addresses: ["10.77.0.100-10.77.0.104"]}}
---
apiVersion: ironlb.dev/v1alpha1
kind: L2Advertisement
metadata: {{name: lab-tenancy}}
spec: {{ipAddressPools: [lab-tenancy], interfaces: [eth0]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: {class}}}
spec: {{controllerName: ironlb.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: {other_class}}}
spec: {{controllerName: example.com/other}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: {team}}}
---
{db}{secret}apiVersion: v1
kind: Service
metadata:
  name: db
  namespace: {team}
  annotations:
    ironlb.dev/forwarding: embedded
    ironlb.dev/allow-shared-ip: team-secret-key
    ironlb.dev/load-balancer-ips: {TEAM_ADDRESS}
spec:
  type: LoadBalancer
  selector: {{app: db}}
  ports: [{{port: 5432, targetPort: 8080, protocol: TCP}}]
---
apiVersion: v1
kind: Service
metadata: {{name: secret-db, namespace: {team}}}
spec:
  selector: {{app: secret}}
  ports: [{{port: 8080, protocol: TCP}}]
---
apiVersion: v1
kind: Namespace
metadata: {{name: {tenant}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: tenant, namespace: {tenant}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: tenant-edit, namespace: {tenant}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit}}
subjects: [{{kind: ServiceAccount, name: tenant, namespace: {tenant}}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: gateway-api, namespace: {tenant}}}
rules: [{{apiGroups: [gateway.networking.k8s.io], resources: [gateways, tcproutes, referencegrants], verbs: ["*"]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: tenant-gateway-api, namespace: {tenant}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: gateway-api}}
subjects: [{{kind: ServiceAccount, name: tenant, namespace: {tenant}}}]
"#,
        db = deployment("db"),
        secret = deployment("secret"),
    )
}

/// A tenant Service asking for the team's address with the team's key.
fn squat(tenant: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: squat\n  namespace: {tenant}\n  annotations:\n    \
         ironlb.dev/allow-shared-ip: team-secret-key\n    ironlb.dev/load-balancer-ips: {TEAM_ADDRESS}\n\
         spec:\n  type: LoadBalancer\n  ports: [{{port: 9999, protocol: TCP}}]\n"
    )
}
