//! `cargo xtask bench --compare A,B,...`: the detector's cases timed on several builds of
//! the object at once, interleaved packet by packet. Every fresh packet goes through each
//! object's program in turn (which one goes first turns with each packet) and through the
//! trivial XDP_PASS, so a load change on this shared machine moves them all alike; whole
//! runs one after another (`--object`) moved the same baseline by up to 50 % between runs
//! (docs/hotpaths.md). Each program evicts the others' maps from the cache, so the figures
//! are higher than a single object's (closer to a flood from many sources than the plain
//! bench); the differences between the objects are what it is for. Prints ns per packet
//! minus PASS per object and against the first; writes no report.

use std::{path::PathBuf, time::Duration};

use anyhow::{ensure, Context, Result};
use aya::{programs::Xdp, Ebpf, EbpfLoader};
use detector_common::names;

use crate::bench_cases::{case_template, load_case, set_source, timed_run, Case};

/// Times every detector case of `cases` on each of `objects` (the programs from the test
/// object are the baselines and are skipped, except the trivial XDP_PASS, `cases[0]`), or
/// with `only`, the cases whose names contain one of its strings, baselines included.
pub fn main(
    objects: &[PathBuf],
    test_object: &[u8],
    cases: &[Case],
    only: &[String],
    packets: u32,
) -> Result<()> {
    let bytes = objects
        .iter()
        .map(|o| std::fs::read(o).with_context(|| format!("reading {}", o.display())))
        .collect::<Result<Vec<_>>>()?;
    let pass_case = cases.first().context("no cases")?;
    let mut pass = EbpfLoader::new().load(test_object).context("loading the test object")?;
    let prog: &mut Xdp = pass.program_mut(pass_case.program).context("no trivial XDP_PASS")?.try_into()?;
    prog.load()?;
    println!(
        "{packets} fresh packets per case, each through every object in turn (the first turning with each \
         packet) and the trivial XDP_PASS"
    );
    println!("objects: {}", objects.iter().map(|o| o.display().to_string()).collect::<Vec<_>>().join(", "));
    let label = |i: usize| format!("#{}", i + 1);
    print!("\n{:<44} {:>9}", "path (ns/packet minus PASS)", "PASS");
    for i in 0..objects.len() {
        print!(" {:>9}", label(i));
    }
    for i in 1..objects.len() {
        print!(" {:>9}", format!("{} / #1", label(i)));
    }
    println!();
    let chosen = |c: &&Case| {
        if only.is_empty() {
            c.program == names::PROGRAM
        } else {
            c.name != cases[0].name && only.iter().any(|o| c.name.contains(o.as_str()))
        }
    };
    for case in cases.iter().filter(chosen) {
        // An object of another map layout may not take a case's preparation (the busy
        // server's closed filter, say): that case is skipped, the others still compare.
        let instances = match bytes.iter().map(|b| load_case(b, case)).collect::<Result<Vec<Ebpf>>>() {
            Ok(instances) => instances,
            Err(e) => {
                println!("{:<44} skipped: {e:#}", case.name);
                continue;
            }
        };
        let (ns, pass_ns) = interleave(&instances, &pass, pass_case, case, packets.max(case.sources))?;
        print!("{:<44} {pass_ns:>9.1}", case.name);
        for x in &ns {
            print!(" {:>9.1}", x - pass_ns);
        }
        for x in ns.iter().skip(1) {
            print!(" {:>9.2}", (x - pass_ns) / (ns[0] - pass_ns).max(0.1));
        }
        println!();
    }
    Ok(())
}

/// Mean ns per packet of each instance's program, and of the trivial XDP_PASS, over the
/// same `packets` fresh packets, one after another on each packet.
fn interleave(
    instances: &[Ebpf],
    pass: &Ebpf,
    pass_case: &Case,
    case: &Case,
    packets: u32,
) -> Result<(Vec<f64>, f64)> {
    let progs = instances
        .iter()
        .map(|e| -> Result<&Xdp> { Ok(e.program(case.program).context("program")?.try_into()?) })
        .collect::<Result<Vec<_>>>()?;
    let pass: &Xdp = pass.program(pass_case.program).context("program")?.try_into()?;
    let mut totals = vec![Duration::ZERO; progs.len() + 1];
    let (mut template, mut out) = (case_template(case), vec![0u8; 256]);
    for i in 0..packets {
        set_source(&mut template, case.family, i % case.sources);
        // The order turns with each packet: in a fixed order, the same object twice read up
        // to 14 % apart by its place alone (docs/hotpaths.md, "The order in `bench
        // --compare`").
        for step in 0..progs.len() {
            let k = (i as usize + step) % progs.len();
            let what = format_args!("{}: object #{} on packet {i}", case.name, k + 1);
            totals[k] += timed_run(progs[k], &template, &mut out, case.verdict, &what)?;
        }
        totals[progs.len()] += timed_run(pass, &template, &mut out, pass_case.verdict, &pass_case.name)?;
    }
    ensure!(packets > 0, "no packets");
    #[allow(clippy::cast_precision_loss, reason = "a duration in ns, far below 2^52")]
    let ns: Vec<f64> = totals.iter().map(|t| t.as_nanos() as f64 / f64::from(packets)).collect();
    let pass_ns = ns[progs.len()];
    Ok((ns[..progs.len()].to_vec(), pass_ns))
}
