//! Rules for certificate names and group names.

use crate::PkiError;

/// Longest name accepted: the X.520 upper bound for a common name.
pub const MAX_NAME_LEN: usize = 64;

/// A certificate name becomes a file name and a CN, so only
/// `[A-Za-z0-9._-]` is allowed, and never `.` or `..` (no path traversal).
pub fn validate_name(name: &str) -> Result<(), PkiError> {
    let bad = |why| {
        Err(PkiError::InvalidName {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("longer than 64 characters");
    }
    if name == "." || name == ".." {
        return bad("`.` and `..` are not names");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("only letters, digits, `.`, `_` and `-` are allowed");
    }
    Ok(())
}

/// Groups are Subject OU values, matched verbatim against `access_group` in
/// the endpoint's authorization rules.
pub fn validate_group(group: &str) -> Result<(), PkiError> {
    let bad = |why| {
        Err(PkiError::InvalidGroup {
            group: group.to_string(),
            why,
        })
    };
    if group.trim().is_empty() {
        return bad("empty");
    }
    if group.chars().count() > MAX_NAME_LEN {
        return bad("longer than 64 characters");
    }
    if group.chars().any(char::is_control) {
        return bad("contains a control character");
    }
    if group != group.trim() {
        return bad("leading or trailing whitespace");
    }
    Ok(())
}

/// A DNS name for a server SAN: labels of letters, digits and `-`, wildcard
/// only as the whole first label.
pub fn validate_dns(dns: &str) -> Result<(), PkiError> {
    let bad = |why: &str| {
        Err(PkiError::InvalidArgument {
            what: "--dns",
            why: format!("{dns:?}: {why}"),
        })
    };
    if dns.is_empty() || dns.len() > 253 {
        return bad("must be 1 to 253 characters");
    }
    for (i, label) in dns.split('.').enumerate() {
        let ok_chars = label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let wildcard = i == 0 && label == "*";
        if label.is_empty() || label.len() > 63 || !(ok_chars || wildcard) {
            return bad("not a DNS name");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["alice", "vpn.example.com", "a_b-c.1"] {
            validate_name(ok).unwrap();
        }
        for bad in ["", ".", "..", "../x", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn groups() {
        validate_group("engineering").unwrap();
        validate_group("Site Reliability").unwrap();
        for bad in ["", " ", "a\nb", " lead", &"g".repeat(65)] {
            assert!(validate_group(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn dns() {
        validate_dns("vpn.example.com").unwrap();
        validate_dns("*.example.com").unwrap();
        for bad in ["", "a..b", "a b", "x.*.com", "-/x"] {
            assert!(validate_dns(bad).is_err(), "{bad:?} accepted");
        }
    }
}
