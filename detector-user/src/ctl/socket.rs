//! The control socket: a Unix stream socket, private from its creation (a umask around
//! `bind`) and then set to 0600, that only root and the agent's own uid may use
//! (SO_PEERCRED), one request per connection with a size cap and a deadline, removed on
//! exit.
//!
//! A path already there is handled without following symlinks: a symlink or a non-socket
//! is refused (the operator must look at it), a socket some live agent answers on is
//! refused, a stale socket (nobody answers) is replaced.

use std::{
    io,
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::Semaphore,
};
use tracing::{debug, warn};

use super::{
    handler::Handler,
    protocol::{self, Reply, MAX_REQUEST_BYTES},
};

/// A client gets this long to send its request line.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// After an oversized request: at most this much more is read and discarded, this long.
const DRAIN_BYTES: u64 = 1 << 20;
const DRAIN_DEADLINE: Duration = Duration::from_secs(1);
/// Connections served at once; more wait (a local client cannot exhaust the agent).
const MAX_CONNECTIONS: usize = 16;

/// The bound socket's path; dropping it removes the file if it is still ours.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds `path` (0600), replacing only a stale socket.
pub fn bind(path: &Path) -> io::Result<(UnixListener, SocketFile)> {
    let ctx = |what: &'static str| {
        move |e: io::Error| io::Error::new(e.kind(), format!("{}: {what}: {e}", path.display()))
    };
    if let Some(parent) = path.parent() {
        if std::fs::symlink_metadata(parent).is_err() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(ctx("creating its directory"))?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ctx("checking what is there")(e)),
        Ok(m) if m.file_type().is_symlink() => {
            return Err(io::Error::other(format!(
                "{}: is a symlink; refusing to replace it",
                path.display()
            )));
        }
        Ok(m) if !m.file_type().is_socket() => {
            return Err(io::Error::other(format!(
                "{}: exists and is not a socket; remove it by hand",
                path.display()
            )));
        }
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::other(format!(
                    "{}: another agent answers on this socket (give each agent its own control_socket)",
                    path.display()
                )));
            }
            std::fs::remove_file(path).map_err(ctx("removing a stale socket"))?;
        }
    }
    // umask is per process: any file or directory another thread creates meanwhile is only
    // made more private. Restored at once. Not 0o177, which gives a socket 0600 at once but
    // a directory made meanwhile 0600 too, which its owner cannot enter: two tests that
    // create 0700 directories saw that in CI. The socket comes out 0700 and is set to
    // 0600 just below.
    // SAFETY: umask cannot fail.
    let old = unsafe { libc::umask(BIND_UMASK) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(ctx("binding"))?;
    let meta = std::fs::symlink_metadata(path).map_err(ctx("checking the new socket"))?;
    let file = SocketFile { path: path.to_owned(), ino: meta.ino() };
    if meta.mode() & 0o777 != 0o600 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(ctx("chmod 0600"))?;
    }
    Ok((listener, file))
}

/// The umask held around `bind`: nothing for group or others.
const BIND_UMASK: libc::mode_t = 0o077;

/// Serves connections until the task is aborted.
pub async fn serve(listener: UnixListener, handler: Arc<Handler>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(error = %e, "control socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = connection(stream, &handler).await {
                debug!(error = %e, "control connection ended early");
            }
        });
    }
}

/// Whether a peer uid may use the socket: root, or the uid the agent runs as.
pub fn permitted(peer_uid: u32, own_uid: u32) -> bool {
    peer_uid == 0 || peer_uid == own_uid
}

async fn connection(mut stream: UnixStream, handler: &Handler) -> io::Result<()> {
    let count = |command: &str, result: &str| {
        handler.metrics.control_requests.with_label_values(&[command, result]).inc();
    };
    let peer = stream.peer_cred()?;
    // SAFETY: geteuid cannot fail.
    let own = unsafe { libc::geteuid() };
    if !permitted(peer.uid(), own) {
        warn!(
            event = "control_refused",
            peer_uid = peer.uid(),
            peer_pid = peer.pid(),
            "control socket: peer not permitted"
        );
        count("invalid", "forbidden");
        let reply = Reply::error(format!(
            "permission denied: uid {} may not control this agent (root or uid {own} only)",
            peer.uid()
        ));
        return send(&mut stream, &reply).await;
    }
    let mut line = Vec::new();
    let limit = u64::try_from(MAX_REQUEST_BYTES).unwrap_or(u64::MAX) + 1;
    let read = {
        let mut reader = BufReader::new((&mut stream).take(limit));
        tokio::time::timeout(REQUEST_DEADLINE, reader.read_until(b'\n', &mut line)).await
    };
    let reply = match read {
        Err(_) => Err(format!("no complete request within {} s", REQUEST_DEADLINE.as_secs())),
        Ok(Err(e)) => Err(format!("reading the request: {e}")),
        Ok(Ok(_)) => Ok(()),
    };
    let (command, reply) = match reply.and_then(|()| protocol::parse(&line)) {
        Err(e) => ("invalid", Reply::error(e)),
        Ok(req) => match req.check() {
            Err(e) => (req.name(), Reply::error(e)),
            Ok(checked) => {
                // Blocking work (fsync, waiting on the control thread): block_in_place
                // lets the runtime move its other tasks off this worker meanwhile.
                let reply = tokio::task::block_in_place(|| handler.handle(checked));
                (req.name(), reply)
            }
        },
    };
    if !reply.ok {
        warn!(event = "control_request", command, result = "error", error = %reply.message, "control request refused");
    }
    count(command, if reply.ok { "ok" } else { "error" });
    send(&mut stream, &reply).await?;
    if line.len() > MAX_REQUEST_BYTES {
        // Closing with unread bytes makes the kernel reset the connection, and the client
        // would get ECONNRESET instead of the reply: discard (boundedly) what it still sends.
        let rest = (&mut stream).take(DRAIN_BYTES);
        let _ = tokio::time::timeout(DRAIN_DEADLINE, tokio::io::copy(&mut { rest }, &mut tokio::io::sink()))
            .await;
    }
    Ok(())
}

async fn send(stream: &mut UnixStream, reply: &Reply) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(reply).map_err(io::Error::other)?;
    bytes.push(b'\n');
    stream.write_all(&bytes).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory another thread makes (0700) while `bind` holds the umask stays 0700:
    /// searchable by its owner. With the umask it had before (0o177) it came out 0600.
    #[test]
    fn a_directory_made_while_binding_stays_searchable() {
        assert_eq!(0o700 & !BIND_UMASK, 0o700);
        assert_eq!(0o666 & !BIND_UMASK, 0o600, "and a file stays private");
    }

    #[test]
    fn only_root_and_the_agents_uid_are_permitted() {
        assert!(permitted(0, 998));
        assert!(permitted(998, 998));
        assert!(!permitted(65_534, 998));
        assert!(!permitted(1000, 0));
    }

    /// A client that never finishes its line gets an error reply after the deadline, and
    /// one that sends a good request meanwhile is served.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_client_gets_an_error_after_the_deadline() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let path = dir.path().join("ctl.sock");
        let (listener, _file) = bind(&path).unwrap();
        let handler = Handler {
            lists: Arc::default(),
            dir: crate::lock::StateDir::open(dir.path(), false).unwrap(),
            commands: std::sync::mpsc::channel().0,
            metrics: Arc::new(crate::metrics::Metrics::new()),
            interfaces: Vec::new(),
        };
        let metrics = handler.metrics.clone();
        let server = tokio::spawn(serve(listener, Arc::new(handler)));
        let mut slow = UnixStream::connect(&path).await.unwrap();
        slow.write_all(b"{\"command\":").await.unwrap();
        let mut quick = UnixStream::connect(&path).await.unwrap();
        quick.write_all(b"{\"command\":\"allow_list\"}\n").await.unwrap();
        let mut reply = String::new();
        quick.read_to_string(&mut reply).await.unwrap();
        assert!(reply.contains("\"ok\":true"), "{reply}");
        let started = std::time::Instant::now();
        let mut reply = String::new();
        slow.read_to_string(&mut reply).await.unwrap();
        assert!(reply.contains("no complete request within 5 s"), "{reply}");
        assert!(started.elapsed() >= Duration::from_secs(4), "replied before the deadline");
        let count = |c: &str, r: &str| metrics.control_requests.with_label_values(&[c, r]).get();
        assert_eq!((count("allow_list", "ok"), count("invalid", "error")), (1, 1));
        server.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_socket_is_0600_and_only_a_stale_one_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        let (live, file) = bind(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        // A live socket is not taken over.
        assert!(bind(&path).unwrap_err().to_string().contains("another agent answers"));
        drop(live);
        std::mem::forget(file); // leave the socket file behind: stale
        let (_l, file) = bind(&path).expect("a stale socket is replaced");
        drop(file);
        assert!(!path.exists(), "removed on drop");
        // A symlink or a regular file is never replaced.
        std::os::unix::fs::symlink("/etc/passwd", &path).unwrap();
        assert!(bind(&path).unwrap_err().to_string().contains("symlink"));
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "x").unwrap();
        assert!(bind(&path).unwrap_err().to_string().contains("not a socket"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "x");
    }
}
