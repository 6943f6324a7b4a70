//! The self-contained demo: a lab, the agent, a flood, and what the agent saw.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {}
pub fn main(_args: &DemoArgs, _agent: &std::path::Path) -> anyhow::Result<()> { Ok(()) }
