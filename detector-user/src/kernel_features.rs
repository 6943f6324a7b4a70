//! What a kernel too old for the program lacks, read from the verifier's refusal.
//!
//! A kernel that does not offer a helper to XDP programs refuses the load with
//! `unknown func NAME#ID` (it knows the helper, not for this program type) or
//! `invalid func unknown#ID` (the ID is newer than the kernel). Either way the operator
//! should read which helper and which Linux release brings it, not a verifier log.

/// The oldest Linux release the shipped program loads on: the raw cookie helpers (the
/// cookie fast path and the ACK shield) came in 6.0. README states the same.
pub const MINIMUM_KERNEL: &str = "6.0";

/// Helper ID, name, and the release that made it available to XDP programs: every
/// helper the program calls (bpf.h's numbering; the releases from the kernel's history).
const HELPERS: &[(u32, &str, &str)] = &[
    (1, "bpf_map_lookup_elem", "3.19"),
    (2, "bpf_map_update_elem", "3.19"),
    (3, "bpf_map_delete_elem", "3.19"),
    (5, "bpf_ktime_get_ns", "4.1"),
    (7, "bpf_get_prandom_u32", "4.1"),
    (65, "bpf_xdp_adjust_tail", "4.18"),
    (86, "bpf_sk_release", "4.20"),
    (99, "bpf_skc_lookup_tcp", "5.2"),
    (100, "bpf_tcp_check_syncookie", "5.2"),
    (110, "bpf_tcp_gen_syncookie", "5.3"),
    (118, "bpf_jiffies64", "5.6"),
    (130, "bpf_ringbuf_output", "5.8"),
    (131, "bpf_ringbuf_reserve", "5.8"),
    (132, "bpf_ringbuf_submit", "5.8"),
    (133, "bpf_ringbuf_discard", "5.8"),
    (160, "bpf_ktime_get_coarse_ns", "5.11"),
    (188, "bpf_xdp_get_buff_len", "5.18"),
    (189, "bpf_xdp_load_bytes", "5.18"),
    (204, "bpf_tcp_raw_gen_syncookie_ipv4", "6.0"),
    (205, "bpf_tcp_raw_gen_syncookie_ipv6", "6.0"),
    (206, "bpf_tcp_raw_check_syncookie_ipv4", "6.0"),
    (207, "bpf_tcp_raw_check_syncookie_ipv6", "6.0"),
];

/// "this kernel lacks NAME (Linux X+) ..." when `log` is a refusal for a missing helper.
#[must_use]
pub fn missing_helper(log: &str) -> Option<String> {
    let id = log.lines().find_map(helper_id_of_refusal)?;
    let (name, since) = HELPERS
        .iter()
        .find(|(known, ..)| *known == id)
        .map_or(("an unknown helper", "?"), |&(_, name, since)| (name, since));
    Some(format!(
        "this kernel lacks the BPF helper {name} (#{id}, Linux {since}+) for XDP programs; \
         syndetector needs Linux {MINIMUM_KERNEL} or later"
    ))
}

/// The helper ID in an `unknown func NAME#ID` or `invalid func NAME#ID` line.
fn helper_id_of_refusal(line: &str) -> Option<u32> {
    let rest =
        line.trim().strip_prefix("unknown func ").or_else(|| line.trim().strip_prefix("invalid func "))?;
    rest.rsplit_once('#')?.1.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_helper_this_kernel_does_not_know_is_named_with_its_release() {
        let log = "0: R1=ctx() R10=fp0\n12: (85) call unknown#188\ninvalid func unknown#188\n\
                   processed 12 insns (limit 1000000)";
        let msg = missing_helper(log).unwrap();
        assert!(msg.contains("bpf_xdp_get_buff_len") && msg.contains("Linux 5.18+"), "{msg}");
        assert!(msg.contains(&format!("needs Linux {MINIMUM_KERNEL}")), "{msg}");
    }

    #[test]
    fn a_helper_not_offered_to_xdp_is_named() {
        let msg = missing_helper(
            "34: (85) call bpf_tcp_gen_syncookie#110\nunknown func bpf_tcp_gen_syncookie#110\n",
        )
        .unwrap();
        assert!(msg.contains("bpf_tcp_gen_syncookie (#110, Linux 5.3+)"), "{msg}");
    }

    #[test]
    fn an_id_outside_the_table_still_says_a_helper_is_missing() {
        let msg = missing_helper("invalid func unknown#250").unwrap();
        assert!(msg.contains("an unknown helper (#250"), "{msg}");
    }

    #[test]
    fn other_refusals_are_not_explained_as_old_kernels() {
        assert_eq!(missing_helper("R2 invalid mem access 'scalar'\nprocessed 99 insns"), None);
        assert_eq!(missing_helper(""), None);
    }

    #[test]
    fn every_helper_the_shipped_object_calls_is_listed_and_the_minimum_is_the_newest() {
        let object = aya_obj::Object::parse(crate::loader::OBJECT).expect("the embedded object parses");
        let mut called: Vec<u32> = object
            .functions
            .values()
            .flat_map(|f| f.instructions.iter())
            // BPF_JMP | BPF_CALL with src_reg 0: a helper call, its ID in imm.
            .filter(|insn| insn.code == 0x85 && insn.src_reg() == 0)
            .map(|insn| u32::try_from(insn.imm).expect("helper IDs are positive"))
            .collect();
        called.sort_unstable();
        called.dedup();
        assert!(called.contains(&188), "the object no longer calls bpf_xdp_get_buff_len: {called:?}");
        let version = |v: &str| v.split('.').map(|p| p.parse::<u32>().unwrap()).collect::<Vec<_>>();
        let mut newest = "0.0";
        for id in &called {
            let Some(&(_, name, since)) = HELPERS.iter().find(|(known, ..)| known == id) else {
                panic!(
                    "the program calls helper #{id}, which HELPERS does not list: add it with its release"
                );
            };
            if version(since) > version(newest) {
                newest = since;
            }
            assert!(!name.is_empty());
        }
        assert_eq!(
            newest, MINIMUM_KERNEL,
            "MINIMUM_KERNEL (and README) must follow the newest helper called"
        );
    }
}
