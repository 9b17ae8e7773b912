//! Authorization rules, as the managed service documents them: the most
//! specific rule CIDR containing the destination decides alone; rules with
//! that same CIDR are a union; no rule: denied.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::Lpm;
use crate::config::Rule;

/// A set of groups as bits; group indices are assigned at compile time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupMask(u128);

pub const MAX_GROUPS: usize = 128;

#[derive(Debug, thiserror::Error)]
#[error("authorization_rules name {0} distinct access groups; at most {MAX_GROUPS} are supported")]
pub struct TooManyGroups(pub usize);

#[derive(Clone, Copy, Debug, Default)]
struct RuleSet {
    all_users: bool,
    groups: GroupMask,
}

#[derive(Clone, Debug, Default)]
pub struct AuthRules {
    lpm: Lpm<RuleSet>,
    group_bits: HashMap<String, u32>,
}

impl AuthRules {
    pub fn compile(rules: &[Rule]) -> Result<AuthRules, TooManyGroups> {
        let mut group_bits = HashMap::new();
        for g in rules.iter().filter_map(|r| r.access_group.as_ref()) {
            let next = group_bits.len() as u32;
            group_bits.entry(g.clone()).or_insert(next);
        }
        if group_bits.len() > MAX_GROUPS {
            return Err(TooManyGroups(group_bits.len()));
        }
        let mut lpm = Lpm::default();
        for r in rules {
            let set: &mut RuleSet = lpm.entry_or_insert_with(r.destination, RuleSet::default);
            match &r.access_group {
                None => set.all_users = true,
                Some(g) => set.groups.0 |= 1u128 << group_bits[g],
            }
        }
        Ok(AuthRules { lpm, group_bits })
    }

    /// The bits of the groups that appear in some rule; others never match.
    pub fn mask_of(&self, groups: &[String]) -> GroupMask {
        GroupMask(
            groups
                .iter()
                .filter_map(|g| self.group_bits.get(g))
                .fold(0, |m, b| m | 1u128 << b),
        )
    }

    #[inline]
    pub fn allows(&self, dst: Ipv4Addr, groups: GroupMask) -> bool {
        match self.lpm.lookup(dst) {
            Some((_, set)) => set.all_users || set.groups.0 & groups.0 != 0,
            None => false,
        }
    }
}
