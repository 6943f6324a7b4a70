//! `syndetector top`: the top SYN sources of a running agent, from its `/top` endpoint.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::ExitCode,
    time::Duration,
};

use serde::Deserialize;

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// The agent's metrics address.
    #[arg(long, default_value = "127.0.0.1:9787")]
    pub metrics_addr: SocketAddr,
    /// Print the JSON the agent returned.
    #[arg(long)]
    pub json: bool,
}

#[derive(Deserialize)]
struct TopSource {
    source: String,
    syns_per_second: f64,
    blocked: bool,
}

pub fn main(args: &TopArgs) -> ExitCode {
    match fetch(args.metrics_addr) {
        Ok(body) if args.json => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        Ok(body) => match serde_json::from_str::<Vec<TopSource>>(&body) {
            Ok(top) => {
                print_table(&top);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("syndetector top: unexpected answer from the agent: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("syndetector top: cannot reach the agent at {}: {e}", args.metrics_addr);
            ExitCode::FAILURE
        }
    }
}

fn print_table(top: &[TopSource]) {
    if top.is_empty() {
        println!("no SYNs from any source during the last poll");
        return;
    }
    println!("{:>4}  {:<40} {:>12}  state", "rank", "source", "SYN/s");
    for (i, t) in top.iter().enumerate() {
        println!(
            "{:>4}  {:<40} {:>12.1}  {}",
            i + 1,
            t.source,
            t.syns_per_second,
            if t.blocked { "blocked" } else { "" }
        );
    }
}

/// A plain HTTP/1.0 GET: one request to a local agent needs no HTTP client library.
fn fetch(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    write!(stream, "GET /top HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(head.lines().next().unwrap_or("no status line").to_owned()));
    }
    Ok(body.to_owned())
}
