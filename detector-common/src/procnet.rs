//! The kernel's SNMP-style counters as /proc/net/netstat and /proc/net/snmp print them
//! ("Section: names" then "Section: values" lines). User space only (`user` feature).

use std::{borrow::ToOwned, string::String};

/// Adds every (section, field) → value pair of `text` to `into`. Fields that are not
/// unsigned numbers (Tcp MaxConn is -1) are left out.
pub fn parse(text: &str, into: &mut impl Extend<((String, String), u64)>) {
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        let (Some((section, names)), Some((section2, values))) =
            (names.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        if section != section2 {
            continue;
        }
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(v) = value.parse::<u64>() {
                into.extend(std::iter::once(((section.to_owned(), name.to_owned()), v)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn parses_pairs_of_lines() {
        let text = "TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows\nTcpExt: 1 22 333\n\
                    Tcp: RtoAlgorithm MaxConn\nTcp: 1 -1\n";
        let mut m = HashMap::new();
        parse(text, &mut m);
        assert_eq!(m[&("TcpExt".into(), "SyncookiesRecv".into())], 22);
        assert_eq!(m[&("Tcp".into(), "RtoAlgorithm".into())], 1);
        assert!(!m.contains_key(&("Tcp".into(), "MaxConn".into())), "signed fields are left out");
    }
}
