//! Tests of `config`.

use super::*;

fn parse(text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse { path: "test.toml".into(), message: e.to_string() })
}

fn with_lo(text: &str) -> FileConfig {
    let mut f = parse(text).unwrap();
    f.interfaces = vec!["lo".into()];
    f
}

fn key_of(e: ConfigError) -> &'static str {
    match e {
        ConfigError::Invalid { key, .. } => key,
        other => panic!("not a validation error: {other}"),
    }
}

#[test]
fn the_example_file_parses_and_validates() {
    let text = include_str!("../../config/syndetector.example.toml");
    let mut f = parse(text).unwrap();
    f.interfaces = vec!["lo".into()];
    validate(&f).unwrap();
}

#[test]
fn defaults_are_valid_and_listen_on_loopback() {
    let f = with_lo("");
    validate(&f).unwrap();
    assert!(f.metrics_addr.ip().is_loopback(), "metrics stay local unless configured");
}

#[test]
fn unknown_keys_are_refused_by_name() {
    let e = parse("[thresholds]\nsyn_rate = 5\n").unwrap_err().to_string();
    assert!(e.contains("syn_rate"), "{e}");
}

#[test]
fn each_bad_value_names_its_key() {
    let cases: &[(&str, &str)] = &[
        ("poll_interval_ms = 5", "poll_interval_ms"),
        ("sysctl_dir = \"proc/sys\"", "sysctl_dir"),
        ("sysctl_dir = \"/tmp\"", "sysctl_dir"),
        ("[thresholds]\nblock_ttl_secs = 0", "thresholds.block_ttl_secs"),
        ("[thresholds]\nhandshake_timeout_ms = 1", "thresholds.handshake_timeout_ms"),
        ("[detection]\nexit_syn_rate = 9000.0", "detection.exit_syn_rate"),
        ("[detection]\nexit_half_open = 9000", "detection.exit_half_open"),
        ("[detection]\nexit_half_open = 0", "detection.exit_half_open"),
        ("[detection]\nexit_syn_rate = 0.0", "detection.exit_syn_rate"),
        ("[detection]\nexit_syn_rate = 0.5", "detection.exit_syn_rate"),
        ("[detection]\nenter_syn_rate = 0.5\nexit_syn_rate = 0.5", "detection.enter_syn_rate"),
        ("[detection]\nexit_syn_rate = nan", "detection.exit_syn_rate"),
        ("[cookies]\ntimestamps = false\necn = true", "cookies.ecn"),
        ("[maps]\nsketch_width = 1000", "maps.sketch_width"),
        ("[maps]\nsources = 10", "maps.sources"),
        ("[policy]\nanswer_ports = [0]", "policy.answer_ports"),
        ("[policy]\nanswer_ports = [65536]", "policy.answer_ports"),
        ("[policy]\nkernel_ports = [70000]", "policy.kernel_ports"),
        ("[policy]\nanswer_ports = [443]\nkernel_ports = [80, 443]", "policy.kernel_ports"),
        ("[policy]\nkernel_destinations = [\"198.18.0.0/33\"]", "policy.kernel_destinations"),
        ("[policy]\nkernel_destinations = [\"not-an-address\"]", "policy.kernel_destinations"),
        ("[policy]\nkernel_destinations = [\"2001:2::/129\"]", "policy.kernel_destinations"),
    ];
    for (text, key) in cases {
        assert_eq!(key_of(validate(&with_lo(text)).unwrap_err()), *key, "{text}");
    }
}

#[test]
fn missing_or_duplicate_interfaces_are_refused() {
    let mut f = parse("").unwrap();
    assert_eq!(key_of(validate(&f).unwrap_err()), "interfaces");
    f.interfaces = vec!["sd-no-such-if".into()];
    assert_eq!(key_of(validate(&f).unwrap_err()), "interfaces");
    f.interfaces = vec!["lo".into(), "lo".into()];
    assert_eq!(key_of(validate(&f).unwrap_err()), "interfaces");
}

#[test]
fn flags_override_the_file() {
    let mut f = with_lo("mode = \"drop\"\n[thresholds]\nsyn_rate_limit = 10\n");
    let args = RunArgs {
        limits: LimitArgs { syn_rate_limit: Some(99), ..LimitArgs::default() },
        mode: Some(Mode::Cookie),
        ..RunArgs::default()
    };
    apply_overrides(&mut f, &args);
    assert_eq!(f.thresholds.syn_rate_limit, 99);
    assert_eq!(f.mode, Mode::Cookie);
    assert_eq!(f.thresholds.half_open_limit, 100, "untouched keys keep the file's value");
}

#[test]
fn the_policy_section_converts() {
    let text = "[policy]\nanswer_ports = [443, 80]\nkernel_ports = [8080]\n\
                kernel_destinations = [\"198.18.4.7/24\", \"2001:2::1\"]\ndetect_nat = false\n";
    let cfg = Config { file: with_lo(text) };
    validate(&cfg.file).unwrap();
    let p = cfg.policy();
    assert_eq!(p.answer_ports.into_iter().collect::<Vec<_>>(), vec![80, 443]);
    assert_eq!(p.kernel_ports.into_iter().collect::<Vec<_>>(), vec![8080]);
    let dests: Vec<String> = p.kernel_destinations.iter().map(ToString::to_string).collect();
    assert_eq!(dests, vec!["198.18.4.0/24", "2001:2::1/128"], "IPv4-mapped keys sort first");
    assert!(!p.detect_nat);
    assert!(Config { file: with_lo("") }.policy().detect_nat, "NAT detection is on by default");
}

#[test]
fn negative_ports_are_refused_while_parsing() {
    let e = parse("[policy]\nkernel_ports = [-1]\n").unwrap_err().to_string();
    assert!(e.contains("kernel_ports"), "{e}");
}

#[test]
fn kernel_config_converts_units() {
    let cfg = Config { file: with_lo("[thresholds]\nblock_ttl_secs = 5\nhandshake_timeout_ms = 3000") };
    let k = cfg.kernel_config();
    assert_eq!(k.block_ttl_ns, 5_000_000_000);
    assert_eq!(k.handshake_timeout_ns, 3_000_000_000);
    assert!(k.is_usable());
}

#[test]
fn a_bad_list_file_line_refuses_the_config_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deny.txt");
    std::fs::write(&path, "# lab\n198.18.0.0/16\n198.18.300.0/24\n").unwrap();
    let f = with_lo(&format!("[lists]\ndeny_files = [{:?}]\n", path.to_str().unwrap()));
    let e = validate(&f).unwrap_err();
    let text = e.to_string();
    assert!(text.contains(&format!("{}:3:", path.display())), "{text}");
    assert_eq!(key_of(e), "lists");
    std::fs::write(&path, "198.18.0.0/16 # fine\n").unwrap();
    validate(&f).unwrap();
    let f =
        with_lo(&format!("[lists]\nallow_files = [{:?}]\n", dir.path().join("missing").to_str().unwrap()));
    assert_eq!(key_of(validate(&f).unwrap_err()), "lists");
    let f = with_lo("control_socket = \"relative.sock\"\n");
    assert_eq!(key_of(validate(&f).unwrap_err()), "control_socket");
}

#[test]
fn sketch_admission_is_off_by_default_and_sets_its_program_flag() {
    use detector_common::config::FLAG_SKETCH_ADMISSION;
    let off = with_lo("");
    assert!(!off.thresholds.sketch_admission);
    let on = with_lo("[thresholds]\nsketch_admission = true\n");
    validate(&on).unwrap();
    assert!(on.thresholds.sketch_admission);
    let plan = reload::decide(&off, &on).unwrap();
    assert_eq!(plan.changed, ["thresholds.sketch_admission"], "reloadable, applied by name");
    assert_eq!(Config { file: off }.config_flags(), 0);
    assert_eq!(Config { file: on }.config_flags(), FLAG_SKETCH_ADMISSION);
}
