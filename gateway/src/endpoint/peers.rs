//! The cluster's other nodes as admission and `terminate` see them: the
//! sessions an identity holds there, and ending them, so that
//! `max_sessions_per_identity` holds cluster-wide (the newest replaces
//! the oldest, wherever it is) and `terminate` reaches any node.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// A session another node holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteSession {
    /// The node holding it.
    pub node: String,
    /// Its connection id.
    pub connection_id: String,
    /// When it started (Unix nanoseconds).
    pub started_ns: i128,
}

/// The other nodes of a cluster. Errors say why the store could not
/// answer.
pub trait OtherNodes: Send + Sync {
    /// The sessions `identity` holds on other nodes.
    fn sessions_of<'a>(
        &'a self,
        identity: &'a str,
    ) -> BoxFuture<'a, Result<Vec<RemoteSession>, String>>;
    /// Asks the nodes holding `sessions` to end them with `reason`.
    fn terminate<'a>(
        &'a self,
        sessions: &'a [RemoteSession],
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// The sessions a new one of the same identity replaces: the oldest of
/// them all, here (`local`, with their start in Unix nanoseconds) or
/// elsewhere (`remote`), beyond the `keep` newest.
pub fn replaced<L: Clone>(
    local: &[(i128, L)],
    remote: &[RemoteSession],
    keep: usize,
) -> (Vec<L>, Vec<RemoteSession>) {
    let mut all: Vec<(i128, Result<L, RemoteSession>)> = local
        .iter()
        .map(|(t, l)| (*t, Ok(l.clone())))
        .chain(remote.iter().map(|r| (r.started_ns, Err(r.clone()))))
        .collect();
    all.sort_by_key(|(t, _)| *t);
    let excess = all.len().saturating_sub(keep);
    let (mut here, mut there) = (Vec::new(), Vec::new());
    for (_, s) in all.into_iter().take(excess) {
        match s {
            Ok(l) => here.push(l),
            Err(r) => there.push(r),
        }
    }
    (here, there)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(node: &str, id: &str, t: i128) -> RemoteSession {
        RemoteSession {
            node: node.into(),
            connection_id: id.into(),
            started_ns: t,
        }
    }

    #[test]
    fn the_oldest_go_wherever_they_are() {
        let local = [(20, "here-20"), (40, "here-40")];
        let others = [remote("b", "b-10", 10), remote("c", "c-30", 30)];
        // One session per identity: every existing one goes.
        let (here, there) = replaced(&local, &others, 0);
        assert_eq!(here, vec!["here-20", "here-40"]);
        assert_eq!(there, others.to_vec());
        // Two: the newest existing one stays, wherever it is.
        let (here, there) = replaced(&local, &others, 1);
        assert_eq!(here, vec!["here-20"]);
        assert_eq!(there, others.to_vec());
        let (here, there) = replaced(&local, &others, 2);
        assert_eq!(here, vec!["here-20"]);
        assert_eq!(there, vec![remote("b", "b-10", 10)]);
        // Room for all: none goes.
        let (here, there) = replaced(&local, &others, 4);
        assert!(here.is_empty() && there.is_empty());
    }
}
