//! The self-contained demo: a lab, the agent, a flood, and what the agent saw.
