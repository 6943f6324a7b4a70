//! Mitigation modes and the program flags each one sets.

use detector_common::config::{
    FLAG_COOKIES, FLAG_COOKIE_ECN, FLAG_COOKIE_TIMESTAMPS, FLAG_ENFORCE, FLAG_OFF,
};
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
    /// Kill switch: the program stays attached and passes every packet at once, before
    /// parsing; nothing is tracked, dropped or answered (lists included).
    Off,
}

impl Mode {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Monitor => "monitor",
            Mode::Drop => "drop",
            Mode::Cookie => "cookie",
            Mode::Auto => "auto",
            Mode::Off => "off",
        }
    }

    pub const ALL: [Mode; 5] = [Mode::Monitor, Mode::Drop, Mode::Cookie, Mode::Auto, Mode::Off];

    /// Whether cookies are answered given the current attack state.
    #[must_use]
    pub const fn cookies_active(self, under_attack: bool) -> bool {
        match self {
            Mode::Cookie => true,
            Mode::Auto => under_attack,
            Mode::Monitor | Mode::Drop | Mode::Off => false,
        }
    }

    /// The program's `Config::flags` for this mode and attack state.
    #[must_use]
    pub const fn flags(self, under_attack: bool, cookie_timestamps: bool, cookie_ecn: bool) -> u32 {
        let mut flags = match self {
            Mode::Off => return FLAG_OFF,
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

    #[test]
    fn off_is_the_kill_switch_alone() {
        for attack in [false, true] {
            assert_eq!(Mode::Off.flags(attack, true, true), FLAG_OFF);
            assert!(!Mode::Off.cookies_active(attack));
        }
    }
}
