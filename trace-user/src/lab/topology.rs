//! The lab's addresses and the `ip`/`sysctl` steps that build the docker port-mapping
//! topology inside three namespaces (peer — node — ctr). Nothing here touches the root
//! namespace: every command runs with `ip -n NS` or `ip netns exec NS`.

use crate::netns::{self, NetnsError};

/// "Another node" that connects to the published port.
pub const PEER_IP: &str = "192.168.64.5";
/// The docker host's address on the peer link.
pub const NODE_IP: &str = "192.168.64.4";
/// The user-defined docker network's bridge (name as docker derives it from the network id).
pub const BRIDGE: &str = "br-00ea7870520a";
pub const BRIDGE_IP: &str = "172.19.0.1";
/// Docker's default bridge: present, no ports, as on a real host.
pub const DOCKER0: &str = "docker0";
pub const DOCKER0_SUBNET: &str = "172.17.0.0/16";
/// The container's address, subnet and service port.
pub const CTR_IP: &str = "172.19.0.9";
pub const CTR_SUBNET: &str = "172.19.0.0/16";
pub const CTR_PORT: u16 = 80;
/// The host port published by docker (`-p 10000:80`).
pub const HOST_PORT: u16 = 10000;
/// The node-side end of the container's veth (a bridge port).
pub const CTR_VETH: &str = "veth0ctr";

/// Names of the three namespaces of one lab.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NsNames {
    pub peer: String,
    pub node: String,
    pub ctr: String,
}

impl NsNames {
    /// `NAME-peer`, `NAME-node`, `NAME-ctr`.
    pub fn for_lab(lab: &str) -> Self {
        NsNames {
            peer: format!("{lab}-peer"),
            node: format!("{lab}-node"),
            ctr: format!("{lab}-ctr"),
        }
    }
    pub fn all(&self) -> [&str; 3] {
        [&self.peer, &self.node, &self.ctr]
    }
}

/// What the node namespace's sysctls turned out to be (br_netfilter's may be absent).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct NodeSysctls {
    /// None when /proc/sys/net/bridge does not exist in the node namespace (no br_netfilter):
    /// bridged packets then skip iptables.
    pub bridge_nf_call_iptables: Option<bool>,
}

/// Disables IPv6 in a freshly created namespace (before its links exist, so none gets an
/// address or sends router solicitations into the captures).
pub fn disable_ipv6(ns: &str) -> Result<(), NetnsError> {
    netns::exec(
        ns,
        &[
            "sysctl",
            "-q",
            "-w",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ],
    )
    .map(drop)
}

/// ip_forward=1, and bridge-nf-call-iptables=1 when br_netfilter is there. Both are
/// per-namespace sysctls on 6.18 (checked: setting them in a netns leaves the root's alone).
pub fn node_sysctls(node: &str) -> Result<NodeSysctls, NetnsError> {
    netns::exec(node, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
    let has_br_nf = netns::exec(
        node,
        &["test", "-e", "/proc/sys/net/bridge/bridge-nf-call-iptables"],
    )
    .is_ok();
    if !has_br_nf {
        eprintln!("iptrace lab: warning: net.bridge.bridge-nf-call-iptables absent (no br_netfilter): bridged traffic skips iptables");
        return Ok(NodeSysctls {
            bridge_nf_call_iptables: None,
        });
    }
    netns::exec(
        node,
        &["sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1"],
    )?;
    Ok(NodeSysctls {
        bridge_nf_call_iptables: Some(true),
    })
}

/// Links, addresses and routes, as `ip` argument lists, each run in the given namespace.
pub fn link_steps(n: &NsNames) -> Vec<(String, Vec<String>)> {
    let (peer, node, ctr) = (n.peer.as_str(), n.node.as_str(), n.ctr.as_str());
    let steps: Vec<(&str, String)> = vec![
        // peer <-> node: both ends are eth0 (created in node, one end moved to peer).
        (
            node,
            format!("link add eth0 type veth peer name eth0 netns {peer}"),
        ),
        (peer, format!("addr add {PEER_IP}/24 dev eth0")),
        (peer, "link set eth0 up".into()),
        (node, format!("addr add {NODE_IP}/24 dev eth0")),
        (node, "link set eth0 up".into()),
        // the user-defined network's bridge with the container's veth as its only port
        (node, format!("link add {BRIDGE} type bridge")),
        (node, format!("addr add {BRIDGE_IP}/16 dev {BRIDGE}")),
        (
            node,
            format!("link add {CTR_VETH} type veth peer name eth0 netns {ctr}"),
        ),
        (node, format!("link set {CTR_VETH} master {BRIDGE}")),
        (node, format!("link set {CTR_VETH} up")),
        (node, format!("link set {BRIDGE} up")),
        // docker0: no ports (NO-CARRIER), as on a real docker host
        (node, format!("link add {DOCKER0} type bridge")),
        (node, format!("addr add 172.17.0.1/16 dev {DOCKER0}")),
        (node, format!("link set {DOCKER0} up")),
        (ctr, format!("addr add {CTR_IP}/16 dev eth0")),
        (ctr, "link set eth0 up".into()),
        (ctr, format!("route add default via {BRIDGE_IP}")),
    ];
    steps
        .into_iter()
        .map(|(ns, args)| (ns.to_string(), args.split(' ').map(String::from).collect()))
        .collect()
}

/// Runs [`link_steps`] with `ip -n NS ...`.
pub fn build_links(n: &NsNames) -> Result<(), NetnsError> {
    for (ns, args) in link_steps(n) {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["-n", &ns]).args(&args);
        netns::run_checked(&mut cmd)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_lab_name() {
        let n = NsNames::for_lab("lab-1-0");
        assert_eq!(n.all(), ["lab-1-0-peer", "lab-1-0-node", "lab-1-0-ctr"]);
    }

    #[test]
    fn every_step_runs_in_a_lab_namespace() {
        let n = NsNames::for_lab("x");
        let steps = link_steps(&n);
        assert!(steps.iter().all(|(ns, _)| n.all().contains(&ns.as_str())));
        // the container veth is a bridge port, and the container routes via the bridge
        assert!(steps
            .iter()
            .any(|(_, a)| a.join(" ") == "link set veth0ctr master br-00ea7870520a"));
        assert!(steps
            .iter()
            .any(|(ns, a)| ns == "x-ctr" && a.join(" ") == "route add default via 172.19.0.1"));
    }
}
