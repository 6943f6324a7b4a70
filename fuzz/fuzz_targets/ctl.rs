//! The control socket's request parser over any bytes: never panics, and every request it
//! accepts says the same thing when written back as JSON and parsed again (so the agent
//! acts on what the client meant), and its check never panics either.
//!
//! The agent is a binary crate, so the parser's files are compiled in here at the module
//! paths they use (`crate::mode`, `crate::prefix`, `crate::lists::List`).
#![no_main]

#[path = "../../detector-user/src/mode.rs"]
#[allow(dead_code)]
mod mode;
#[path = "../../detector-user/src/prefix.rs"]
#[allow(dead_code)]
mod prefix;
#[path = "../../detector-user/src/lists/list.rs"]
#[allow(dead_code)]
mod list;
mod lists {
    pub use super::list::List;
}
#[path = "../../detector-user/src/ctl/protocol.rs"]
#[allow(dead_code)]
mod protocol;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = protocol::parse(data) else { return };
    let _ = request.check();
    let text = serde_json::to_string(&request).expect("an accepted request serialises");
    assert_eq!(protocol::parse(text.as_bytes()).as_ref(), Ok(&request), "the round trip changed it: {text}");
});
