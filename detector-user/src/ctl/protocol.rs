//! The control protocol: one JSON request per connection, on one line, and one JSON
//! reply line. Requests are checked here, before anything acts on them: size, UTF-8, JSON,
//! a known command with exactly its fields, a valid prefix, a known mode, a TTL in range.

use serde::{Deserialize, Serialize};

use crate::{mode::Mode, prefix::Prefix};

/// A request larger than this is refused unread past it.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// The longest `block --ttl`: 30 days (beyond that, a deny entry says what is meant).
pub const MAX_TTL_SECS: u64 = 30 * 86_400;

/// Every `command` label value (bounded; `invalid` for requests that did not parse).
pub const COMMANDS: [&str; 12] = [
    "status",
    "block",
    "unblock",
    "allow_add",
    "allow_del",
    "allow_list",
    "deny_add",
    "deny_del",
    "deny_list",
    "mode",
    "reload",
    "invalid",
];
// `result` label values: "ok", "error" (bad input, or it failed), "forbidden" (peer not
// permitted; always with command "invalid", as its request is never read).

/// A request as sent: `{"command": "block", "cidr": "198.18.0.9", "ttl_secs": 60}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status {},
    Block {
        cidr: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_secs: Option<u64>,
    },
    Unblock {
        cidr: String,
    },
    AllowAdd {
        cidr: String,
    },
    AllowDel {
        cidr: String,
    },
    AllowList {},
    DenyAdd {
        cidr: String,
    },
    DenyDel {
        cidr: String,
    },
    DenyList {},
    Mode {
        mode: String,
    },
    Reload {},
}

/// A request once checked: prefixes parsed, mode known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checked {
    Status,
    Block { prefix: Prefix, ttl_secs: Option<u64> },
    Unblock(Prefix),
    Change { list: crate::lists::List, prefix: Prefix, add: bool },
    List(crate::lists::List),
    Mode(Mode),
    Reload,
}

/// The reply: `ok`, a sentence for the operator, and data for `status` and the lists.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl Reply {
    pub fn ok(message: impl Into<String>) -> Self {
        Self { ok: true, message: message.into(), data: None }
    }
    pub fn error(message: impl Into<String>) -> Self {
        Self { ok: false, message: message.into(), data: None }
    }
}

impl Request {
    /// The `command` label.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Status {} => "status",
            Request::Block { .. } => "block",
            Request::Unblock { .. } => "unblock",
            Request::AllowAdd { .. } => "allow_add",
            Request::AllowDel { .. } => "allow_del",
            Request::AllowList {} => "allow_list",
            Request::DenyAdd { .. } => "deny_add",
            Request::DenyDel { .. } => "deny_del",
            Request::DenyList {} => "deny_list",
            Request::Mode { .. } => "mode",
            Request::Reload {} => "reload",
        }
    }

    /// Validates the fields.
    pub fn check(&self) -> Result<Checked, String> {
        use crate::lists::List::{Allow, Deny};
        let prefix = |s: &str| s.parse::<Prefix>().map_err(|e| e.to_string());
        Ok(match self {
            Request::Status {} => Checked::Status,
            Request::Block { cidr, ttl_secs } => {
                if let Some(ttl) = ttl_secs {
                    if !(1..=MAX_TTL_SECS).contains(ttl) {
                        return Err(format!("ttl_secs {ttl} is outside 1..={MAX_TTL_SECS}"));
                    }
                }
                Checked::Block { prefix: prefix(cidr)?, ttl_secs: *ttl_secs }
            }
            Request::Unblock { cidr } => Checked::Unblock(prefix(cidr)?),
            Request::AllowAdd { cidr } => Checked::Change { list: Allow, prefix: prefix(cidr)?, add: true },
            Request::AllowDel { cidr } => Checked::Change { list: Allow, prefix: prefix(cidr)?, add: false },
            Request::DenyAdd { cidr } => Checked::Change { list: Deny, prefix: prefix(cidr)?, add: true },
            Request::DenyDel { cidr } => Checked::Change { list: Deny, prefix: prefix(cidr)?, add: false },
            Request::AllowList {} => Checked::List(Allow),
            Request::DenyList {} => Checked::List(Deny),
            Request::Mode { mode } => {
                Checked::Mode(Mode::ALL.into_iter().find(|m| m.as_str() == mode).ok_or_else(|| {
                    let known: Vec<&str> = Mode::ALL.iter().map(|m| m.as_str()).collect();
                    format!("unknown mode {mode:?} (one of {})", known.join(", "))
                })?)
            }
            Request::Reload {} => Checked::Reload,
        })
    }
}

/// Parses one request line (without or with its newline). The error is the reply's text.
pub fn parse(bytes: &[u8]) -> Result<Request, String> {
    if bytes.len() > MAX_REQUEST_BYTES {
        return Err(format!("request larger than {MAX_REQUEST_BYTES} bytes"));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "request is not UTF-8".to_owned())?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    if text.trim().is_empty() {
        return Err("empty request".into());
    }
    serde_json::from_str(text).map_err(|e| format!("bad request: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lists::List;

    #[test]
    fn requests_parse_and_check() {
        let r = parse(b"{\"command\":\"block\",\"cidr\":\"198.18.0.9\",\"ttl_secs\":60}\n").unwrap();
        assert_eq!(r.name(), "block");
        assert_eq!(
            r.check().unwrap(),
            Checked::Block { prefix: "198.18.0.9/32".parse().unwrap(), ttl_secs: Some(60) }
        );
        let r = parse(b"{\"command\":\"deny_del\",\"cidr\":\"2001:2::/48\"}").unwrap();
        assert_eq!(
            r.check().unwrap(),
            Checked::Change { list: List::Deny, prefix: "2001:2::/48".parse().unwrap(), add: false }
        );
        assert_eq!(
            parse(b"{\"command\":\"mode\",\"mode\":\"off\"}").unwrap().check(),
            Ok(Checked::Mode(Mode::Off))
        );
        assert_eq!(parse(b"{\"command\":\"status\"}").unwrap(), Request::Status {});
        // What the client sends parses back to itself.
        let sent =
            serde_json::to_string(&Request::Block { cidr: "198.18.0.0/24".into(), ttl_secs: None }).unwrap();
        assert_eq!(sent, "{\"command\":\"block\",\"cidr\":\"198.18.0.0/24\"}");
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        for (bytes, why) in [
            (&b"garbage"[..], "bad request"),
            (b"", "empty request"),
            (b"\xff\xfe", "not UTF-8"),
            (b"{\"command\":\"format_disk\"}", "unknown variant"),
            (b"{\"cidr\":\"198.18.0.1\"}", "missing field `command`"),
            (b"{\"command\":\"block\"}", "missing field `cidr`"),
            (b"{\"command\":\"status\",\"extra\":1}", "unknown field"),
            (b"{\"command\":\"block\",\"cidr\":7}", "invalid type"),
        ] {
            let e = parse(bytes).unwrap_err();
            assert!(e.contains(why), "{bytes:?}: {e}");
        }
        let big = vec![b' '; MAX_REQUEST_BYTES + 1];
        assert!(parse(&big).unwrap_err().contains("larger than"));
    }

    #[test]
    fn bad_fields_are_refused_by_check() {
        for (json, why) in [
            ("{\"command\":\"allow_add\",\"cidr\":\"198.18.0.0/33\"}", "not an address or a CIDR"),
            ("{\"command\":\"unblock\",\"cidr\":\"example.com\"}", "not an address or a CIDR"),
            ("{\"command\":\"block\",\"cidr\":\"198.18.0.1\",\"ttl_secs\":0}", "outside 1..="),
            ("{\"command\":\"block\",\"cidr\":\"198.18.0.1\",\"ttl_secs\":99999999}", "outside 1..="),
            ("{\"command\":\"mode\",\"mode\":\"panic\"}", "unknown mode \"panic\""),
        ] {
            let e = parse(json.as_bytes()).unwrap().check().unwrap_err();
            assert!(e.contains(why), "{json}: {e}");
        }
    }
}
