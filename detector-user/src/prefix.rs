//! Address prefixes in the form the policy maps use: IPv4 mapped into IPv6
//! (`::ffff:a.b.c.d`, network order), so an IPv4 /n is a /96+n.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr},
    str::FromStr,
};

/// An address in the policy maps' key form.
pub fn mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address a mapped key stands for (IPv4 when it is IPv4-mapped).
pub fn unmapped(key: [u8; 16]) -> IpAddr {
    Ipv6Addr::from(key).to_canonical()
}

/// A prefix over the mapped form; host bits are always zero, so equal prefixes compare
/// equal however they were written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    addr: [u8; 16],
    /// In mapped bits: 96..=128 for IPv4, 0..=128 for IPv6.
    len: u8,
}

impl Prefix {
    /// `len` counts the family's own bits (0..=32 for IPv4); `None` when it is too long.
    pub fn new(ip: IpAddr, len: u8) -> Option<Self> {
        let mapped_len = match ip {
            IpAddr::V4(_) if len <= 32 => len + 96,
            IpAddr::V6(_) if len <= 128 => len,
            _ => return None,
        };
        Some(Self::from_mapped(mapped(ip), mapped_len))
    }

    /// A single address (/32 or /128).
    #[cfg(test)]
    pub fn host(ip: IpAddr) -> Self {
        Self::from_mapped(mapped(ip), 128)
    }

    /// From a map key; `len` (in mapped bits) is clamped to 128 and host bits are cleared.
    pub fn from_mapped(mut addr: [u8; 16], len: u8) -> Self {
        let len = len.min(128);
        for (i, byte) in addr.iter_mut().enumerate() {
            let first_bit = u8::try_from(i * 8).unwrap_or(u8::MAX);
            let keep = len.saturating_sub(first_bit).min(8);
            *byte &= if keep == 0 { 0 } else { 0xff << (8 - keep) };
        }
        Self { addr, len }
    }

    pub fn addr(&self) -> [u8; 16] {
        self.addr
    }

    /// Length in mapped bits (what the LPM trie key holds).
    pub fn mapped_len(&self) -> u8 {
        self.len
    }

    #[cfg(test)]
    /// Whether this prefix covers `key` (a mapped address).
    pub fn contains(&self, key: [u8; 16]) -> bool {
        Self::from_mapped(key, self.len).addr == self.addr
    }

    pub fn is_v4(&self) -> bool {
        self.len >= 96 && Ipv6Addr::from(self.addr).to_ipv4_mapped().is_some()
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_v4() {
            write!(f, "{}/{}", unmapped(self.addr), self.len - 96)
        } else {
            write!(f, "{}/{}", Ipv6Addr::from(self.addr), self.len)
        }
    }
}

/// Why a string is not a prefix.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an address or a CIDR prefix (a.b.c.d/n or x:y::/n)")]
pub struct BadPrefix(pub String);

impl FromStr for Prefix {
    type Err = BadPrefix;

    /// `a.b.c.d`, `a.b.c.d/n`, `x::y`, `x::/n`. An IPv4-mapped IPv6 address stays IPv6
    /// spelling but means the same key.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadPrefix(s.to_owned());
        let (ip, len) = match s.trim().split_once('/') {
            Some((ip, len)) => (ip, Some(len.parse::<u8>().map_err(|_| bad())?)),
            None => (s.trim(), None),
        };
        let ip: IpAddr = ip.parse().map_err(|_| bad())?;
        let len = len.unwrap_or(if ip.is_ipv4() { 32 } else { 128 });
        Self::new(ip, len).ok_or_else(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_prefixes_are_mapped_and_masked() {
        let p: Prefix = "198.18.7.9/16".parse().unwrap();
        assert_eq!(p.mapped_len(), 112);
        assert_eq!(p, "198.18.0.0/16".parse().unwrap());
        assert_eq!(p.to_string(), "198.18.0.0/16");
        assert!(p.contains(mapped("198.18.200.1".parse().unwrap())));
        assert!(!p.contains(mapped("198.19.0.1".parse().unwrap())));
        assert_eq!(p.addr()[10..12], [0xff, 0xff]);
    }

    #[test]
    fn ipv6_prefixes_and_hosts() {
        let p: Prefix = "2001:2::1/48".parse().unwrap();
        assert_eq!((p.to_string(), p.mapped_len()), ("2001:2::/48".to_owned(), 48));
        let h: Prefix = "2001:2::1".parse().unwrap();
        assert_eq!(h.mapped_len(), 128);
        assert_eq!(Prefix::host("198.18.0.1".parse().unwrap()).to_string(), "198.18.0.1/32");
        assert_eq!(unmapped(mapped("198.18.0.1".parse().unwrap())).to_string(), "198.18.0.1");
    }

    #[test]
    fn bad_prefixes_are_refused() {
        for s in ["", "198.18.0.0/33", "2001:2::/129", "198.18.0/24", "x/8", "198.18.0.0/-1"] {
            assert!(s.parse::<Prefix>().is_err(), "{s}");
        }
    }
}
