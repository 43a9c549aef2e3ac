//! What the tests on the real API server share: the gossip Secret, lab
//! speakers with their ServiceAccount, announced pools and the Gateway API
//! CRDs.

use std::path::Path;

use ironlb::api::{L2Advertisement, L2AdvertisementSpec};
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::{Api, Client};

use super::cluster::{Cluster, PATIENCE};
use super::netns::Lab;
use super::{create_pool, pool, wait_for};

pub fn gossip_secret_file(dir: &Path, secret: &k8s_openapi::ByteString) -> std::path::PathBuf {
    let file = dir.join("gossip-secret");
    std::fs::write(&file, &secret.0).expect("write the gossip secret");
    file
}

/// Waits for the gossip Secret the controller creates, and returns its key.
pub async fn gossip_secret(client: &Client) -> k8s_openapi::ByteString {
    wait_for(
        "the controller to create the gossip Secret",
        PATIENCE,
        || async {
            Api::<Secret>::namespaced(client.clone(), "ironlb-system")
                .get_opt("ironlb-gossip")
                .await
                .ok()
                .flatten()
                .and_then(|s| s.data)
                .and_then(|d| d.get(ironlb::controller::GOSSIP_SECRET_KEY).cloned())
        },
    )
    .await
}

/// Creates pool `pool_name` holding `addresses` and an L2Advertisement of it on
/// the lab nodes' `eth0`, named `ad_name`.
pub async fn announced_pool(client: &Client, pool_name: &str, ad_name: &str, addresses: &[&str]) {
    create_pool(client, pool(pool_name, addresses)).await;
    let ad = L2Advertisement::new(
        ad_name,
        L2AdvertisementSpec {
            ip_address_pools: vec![pool_name.to_string()],
            interfaces: vec!["eth0".into()],
            ..Default::default()
        },
    );
    Api::<L2Advertisement>::all(client.clone())
        .create(&PostParams::default(), &ad)
        .await
        .expect("create L2Advertisement");
}

/// Starts a speaker as node `node` in namespace `node_ns` (whose `eth0` is
/// `address`), with the speaker ServiceAccount's kubeconfig, gossiping on
/// port 7947 with `seeds`; logs to `log`. With `gateway`, it forwards
/// Gateways' routes (as `deploy/overlays/gateway` runs it). Returns its
/// index in the lab.
#[allow(clippy::too_many_arguments)]
pub fn spawn_speaker(
    lab: &mut Lab,
    node_ns: &str,
    node: &str,
    address: &str,
    kubeconfig: &Path,
    secret_file: &Path,
    seeds: &[String],
    log: &Path,
    gateway: bool,
) -> usize {
    let listen = format!("{address}:7947");
    let seeds = seeds.join(",");
    let mut args = vec![
        "speaker",
        "--kubeconfig",
        kubeconfig.to_str().expect("utf-8 path"),
        "--node",
        node,
        "--default-class=false",
        "--metrics-addr",
        "127.0.0.1:9121",
        "--gossip-listen",
        &listen,
        "--gossip-secret-file",
        secret_file.to_str().expect("utf-8 path"),
        if gateway {
            "--gateway=true"
        } else {
            "--gateway=false"
        },
    ];
    if !seeds.is_empty() {
        args.extend(["--gossip-seeds", &seeds]);
    }
    lab.spawn(node_ns, env!("CARGO_BIN_EXE_ironlb"), &args, log)
}

/// Applies the upstream Gateway API CRDs server-side (left installed:
/// deleting them would delete every Gateway object of the cluster) and waits
/// until they serve.
pub fn install_gateway_crds(cluster: &Cluster) {
    let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/gateway-api/v1.6.1");
    cluster.kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", crds]);
    cluster.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/gateways.gateway.networking.k8s.io",
        "crd/tcproutes.gateway.networking.k8s.io",
        "crd/udproutes.gateway.networking.k8s.io",
        "crd/tlsroutes.gateway.networking.k8s.io",
        "crd/referencegrants.gateway.networking.k8s.io",
    ]);
}
