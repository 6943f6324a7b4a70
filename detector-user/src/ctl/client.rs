//! The CLI side: `syndetector block|unblock|allow|deny|mode|reload` send one request to a
//! running agent's control socket and print its reply. Exit 0 when done, 1 when the agent
//! refused the request (the reply says why), 2 when no agent answered.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use clap::{Args, Subcommand};

use super::protocol::{Reply, Request};

pub const DEFAULT_SOCKET: &str = "/run/syndetector/control.sock";
/// Replies to `allow list` can be long; anything beyond this is cut.
const MAX_REPLY_BYTES: u64 = 16 << 20;
const TIMEOUT: Duration = Duration::from_secs(40);

#[derive(Args, Clone, Debug)]
pub struct SocketArg {
    /// The agent's control socket (`control_socket` in its configuration).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET, global = true)]
    pub socket: PathBuf,
}

/// The control commands, flattened into the top-level subcommands.
#[derive(Subcommand)]
pub enum CtlCommand {
    /// Block a source address or prefix (all its IP traffic is dropped), for `--ttl`
    /// seconds or until `unblock`.
    Block {
        cidr: String,
        #[arg(long, value_name = "SECS")]
        ttl: Option<u64>,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Remove a `block`.
    Unblock {
        cidr: String,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// The allow list: sources that are never dropped nor answered with cookies.
    Allow {
        #[command(subcommand)]
        action: ListAction,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// The deny list: sources whose every IP packet is dropped.
    Deny {
        #[command(subcommand)]
        action: ListAction,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Switch the running agent's mode until its next reload or restart (`off`: pass
    /// everything at once, still attached).
    Mode {
        #[arg(value_enum)]
        mode: crate::mode::Mode,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Re-read the configuration and the list files (what SIGHUP does), and say how it went.
    Reload {
        #[command(flatten)]
        socket: SocketArg,
    },
}

#[derive(Subcommand, Clone, Debug)]
pub enum ListAction {
    Add { cidr: String },
    Del { cidr: String },
    List,
}

pub fn main(cmd: CtlCommand) -> ExitCode {
    let (request, socket) = match cmd {
        CtlCommand::Block { cidr, ttl, socket } => (Request::Block { cidr, ttl_secs: ttl }, socket),
        CtlCommand::Unblock { cidr, socket } => (Request::Unblock { cidr }, socket),
        CtlCommand::Allow { action, socket } => (
            match action {
                ListAction::Add { cidr } => Request::AllowAdd { cidr },
                ListAction::Del { cidr } => Request::AllowDel { cidr },
                ListAction::List => Request::AllowList {},
            },
            socket,
        ),
        CtlCommand::Deny { action, socket } => (
            match action {
                ListAction::Add { cidr } => Request::DenyAdd { cidr },
                ListAction::Del { cidr } => Request::DenyDel { cidr },
                ListAction::List => Request::DenyList {},
            },
            socket,
        ),
        CtlCommand::Mode { mode, socket } => (Request::Mode { mode: mode.as_str().to_owned() }, socket),
        CtlCommand::Reload { socket } => (Request::Reload {}, socket),
    };
    match send(&socket.socket, &request) {
        Ok(reply) => {
            print_reply(&reply);
            if reply.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("syndetector: no answer on {}: {e}", socket.socket.display());
            ExitCode::from(2)
        }
    }
}

/// Sends one request and reads the reply.
pub fn send(path: &Path, request: &Request) -> std::io::Result<Reply> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut line = serde_json::to_vec(request).map_err(std::io::Error::other)?;
    line.push(b'\n');
    // The agent may answer and close before reading (a refused peer): the write then fails
    // (EPIPE) but its reply is already here to read; report the write error only without one.
    let written = stream.write_all(&line);
    let mut reply = Vec::new();
    let read = BufReader::new(stream.take(MAX_REPLY_BYTES)).read_until(b'\n', &mut reply);
    if reply.is_empty() {
        written?;
        read?;
    }
    serde_json::from_slice(&reply).map_err(|e| std::io::Error::other(format!("unreadable reply: {e}")))
}

fn print_reply(reply: &Reply) {
    if reply.ok {
        println!("{}", reply.message);
    } else {
        eprintln!("syndetector: {}", reply.message);
    }
    match &reply.data {
        Some(serde_json::Value::Array(entries)) => {
            for e in entries {
                let prefix = e.get("prefix").and_then(|v| v.as_str()).unwrap_or("?");
                let from = e.get("from").and_then(|v| v.as_str()).unwrap_or("?");
                println!("  {prefix}\t({from})");
            }
        }
        Some(serde_json::Value::Object(fields)) => {
            for (k, v) in fields {
                println!("  {k}: {v}");
            }
        }
        _ => {}
    }
}

/// For `syndetector status`: the live agent's answer, printed, or why there is none.
pub fn print_live_status(path: &Path) {
    match send(path, &Request::Status {}) {
        Ok(reply) => {
            println!("live agent ({}):", path.display());
            print_reply(&reply);
        }
        Err(e) => println!("live agent: no answer on {} ({e})", path.display()),
    }
}
