//! The node lifecycle: its states and the one table of allowed transitions.
//! Every state change in the daemon goes through [`check_transition`]; nothing else decides.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeState {
    /// Seen on the network (DHCP, iPXE) but not registered: never installed.
    Discovered,
    /// Registered by an operator; the next network boot installs it.
    Registered,
    /// Its install script was served; Flatcar is being written to disk.
    Installing,
    /// The installer reported success and rebooted the machine.
    Installed,
    /// The installed system applied its final config and called back.
    Booted,
    /// Being joined to the Kubernetes cluster.
    Joining,
    /// Joined to the cluster.
    Joined,
    /// Joined, add-ons applied, node reported Ready.
    Ready,
    /// Was Ready, and is not now: its Node's Ready condition is not True, or (a control
    /// plane) its API server does not answer `/readyz`. Back to `ready` when both are well.
    NotReady,
    /// A phase failed; the node's `failure` says which and why.
    Failed,
}

impl NodeState {
    pub const ALL: [NodeState; 10] = [
        NodeState::Discovered,
        NodeState::Registered,
        NodeState::Installing,
        NodeState::Installed,
        NodeState::Booted,
        NodeState::Joining,
        NodeState::Joined,
        NodeState::Ready,
        NodeState::NotReady,
        NodeState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Discovered => "discovered",
            NodeState::Registered => "registered",
            NodeState::Installing => "installing",
            NodeState::Installed => "installed",
            NodeState::Booted => "booted",
            NodeState::Joining => "joining",
            NodeState::Joined => "joined",
            NodeState::Ready => "ready",
            NodeState::NotReady => "notready",
            NodeState::Failed => "failed",
        }
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NodeState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown node state {s:?}"))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a node cannot go from {from} to {to}")]
pub struct TransitionError {
    pub from: NodeState,
    pub to: NodeState,
}

/// The single table of allowed lifecycle transitions.
///
/// - the forward path `registered → installing → installed → booted → joining → joined → ready`;
/// - `ready ↔ notready` as the node's health comes and goes;
/// - `discovered → registered` when an operator adopts a machine seen on the network;
/// - any registered state → `registered` (a reinstall, which also recovers a failed node);
/// - `joining`, `joined`, `ready`, `notready` or `failed` → `booted`: a rejoin (the join loop resets the
///   node and joins it again; the API allows it from `failed` only after a failed join);
/// - any registered state but `failed` → `failed`.
///
/// A discovered machine can do nothing but be adopted: it never installs.
pub fn check_transition(from: NodeState, to: NodeState) -> Result<(), TransitionError> {
    use NodeState::*;
    let allowed = match (from, to) {
        (Discovered, Registered) => true,
        (Discovered, _) | (_, Discovered) => false,
        (Registered, Installing)
        | (Installing, Installed)
        | (Installed, Booted)
        | (Booted, Joining)
        | (Joining, Joined)
        | (Joined, Ready)
        | (Ready, NotReady)
        | (NotReady, Ready) => true,
        (Joining | Joined | Ready | NotReady | Failed, Booted) => true,
        (_, Registered) => true,
        (Failed, Failed) => false,
        (_, Failed) => true,
        _ => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(TransitionError { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::NodeState::*;
    use super::*;

    #[test]
    fn forward_path_is_allowed() {
        let path = [
            Registered, Installing, Installed, Booted, Joining, Joined, Ready,
        ];
        for pair in path.windows(2) {
            assert_eq!(check_transition(pair[0], pair[1]), Ok(()), "{pair:?}");
        }
    }

    #[test]
    fn discovered_machines_only_get_adopted() {
        assert_eq!(check_transition(Discovered, Registered), Ok(()));
        for to in NodeState::ALL {
            if to != Registered {
                assert!(
                    check_transition(Discovered, to).is_err(),
                    "discovered → {to}"
                );
            }
        }
        for from in NodeState::ALL {
            assert!(
                check_transition(from, Discovered).is_err(),
                "{from} → discovered"
            );
        }
    }

    #[test]
    fn rejoin_goes_back_to_booted_from_the_join_states() {
        for from in [Joining, Joined, Ready, NotReady, Failed] {
            assert_eq!(check_transition(from, Booted), Ok(()), "{from}");
        }
        for from in [Registered, Installing, Discovered] {
            assert!(check_transition(from, Booted).is_err(), "{from}");
        }
    }

    #[test]
    fn reinstall_from_any_registered_state() {
        for from in NodeState::ALL {
            if from != Discovered {
                assert_eq!(check_transition(from, Registered), Ok(()), "{from}");
            }
        }
    }

    #[test]
    fn no_skipping_or_going_back() {
        let rejected = [
            (Registered, Installed),
            (Registered, Booted),
            (Installing, Booted),
            (Installed, Installing),
            (Booted, Installed),
            (Ready, Joining),
            (Joined, NotReady),
            (NotReady, Joined),
            (Failed, Failed),
            (Failed, Installing),
        ];
        for (from, to) in rejected {
            assert_eq!(
                check_transition(from, to),
                Err(TransitionError { from, to }),
                "{from} → {to}"
            );
        }
    }

    #[test]
    fn readiness_comes_and_goes() {
        assert_eq!(check_transition(Ready, NotReady), Ok(()));
        assert_eq!(check_transition(NotReady, Ready), Ok(()));
        assert_eq!(check_transition(NotReady, Failed), Ok(()));
    }

    #[test]
    fn state_names_round_trip() {
        for st in NodeState::ALL {
            assert_eq!(st.as_str().parse::<NodeState>(), Ok(st));
        }
        assert!("Ready".parse::<NodeState>().is_err());
    }
}
