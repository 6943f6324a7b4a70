//! Mitigation modes and the program flags each one sets.

use detector_common::config::{FLAG_COOKIES, FLAG_COOKIE_ECN, FLAG_COOKIE_TIMESTAMPS, FLAG_ENFORCE};
use serde::Deserialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Decide and count what would happen; always pass.
    Monitor,
    /// Per-source blocks only.
    Drop,
    /// Always answer SYNs to local listeners with cookies from XDP (and block sources).
    Cookie,
    /// Pass while calm, answer with cookies while under attack (and block sources).
    #[default]
    Auto,
}

impl Mode {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Monitor => "monitor",
            Mode::Drop => "drop",
            Mode::Cookie => "cookie",
            Mode::Auto => "auto",
        }
    }

    pub const ALL: [Mode; 4] = [Mode::Monitor, Mode::Drop, Mode::Cookie, Mode::Auto];

    /// Whether cookies are answered given the current attack state.
    #[must_use]
    pub const fn cookies_active(self, under_attack: bool) -> bool {
        match self {
            Mode::Cookie => true,
            Mode::Auto => under_attack,
            Mode::Monitor | Mode::Drop => false,
        }
    }

    /// The program's `Config::flags` for this mode and attack state.
    #[must_use]
    pub const fn flags(self, under_attack: bool, cookie_timestamps: bool, cookie_ecn: bool) -> u32 {
        let mut flags = match self {
            Mode::Monitor => 0,
            Mode::Drop | Mode::Cookie | Mode::Auto => FLAG_ENFORCE,
        };
        if self.cookies_active(under_attack) {
            flags |= FLAG_COOKIES;
            if cookie_timestamps {
                flags |= FLAG_COOKIE_TIMESTAMPS;
                if cookie_ecn {
                    flags |= FLAG_COOKIE_ECN;
                }
            }
        }
        flags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_never_enforces_or_answers() {
        for attack in [false, true] {
            assert_eq!(Mode::Monitor.flags(attack, true, true), 0);
        }
    }

    #[test]
    fn auto_answers_only_under_attack() {
        assert_eq!(Mode::Auto.flags(false, true, true), FLAG_ENFORCE);
        assert_eq!(
            Mode::Auto.flags(true, true, true),
            FLAG_ENFORCE | FLAG_COOKIES | FLAG_COOKIE_TIMESTAMPS | FLAG_COOKIE_ECN
        );
        assert_eq!(Mode::Cookie.flags(false, false, true), FLAG_ENFORCE | FLAG_COOKIES);
        assert_eq!(Mode::Drop.flags(true, true, true), FLAG_ENFORCE);
    }
}
