//! A loopback port in front of a server a test runs: it forwards every connection until it
//! is closed, then hangs up on every new one, and keeps its port until it is dropped.
//!
//! A test that stops a dependency to see the outage must not let the freed port go to
//! whatever binds port 0 next in the same process (another test's listener would answer
//! in its place, with a 404 instead of a failed connection). Callers address the door,
//! which holds the port for as long as the test does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct Door {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    accepting: JoinHandle<()>,
}

impl Door {
    /// Opens a door on a free loopback port to `server`.
    pub async fn open(server: SocketAddr) -> Door {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free loopback port for the door");
        let addr = listener.local_addr().expect("the door's address");
        let open = Arc::new(AtomicBool::new(true));
        let accepting = tokio::spawn(accept(listener, server, open.clone()));
        Door {
            addr,
            open,
            accepting,
        }
    }

    /// Where callers connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on every new connection is closed as soon as it is accepted. Connections
    /// already forwarded last as long as the server keeps them.
    pub fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
    }
}

impl Drop for Door {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

async fn accept(listener: TcpListener, server: SocketAddr, open: Arc<AtomicBool>) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        if !open.load(Ordering::SeqCst) {
            // Dropped unread: the caller's connection ends before any answer.
            continue;
        }
        tokio::spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(server).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::Door;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    #[tokio::test]
    async fn a_door_forwards_until_closed_then_hangs_up_and_keeps_its_port() {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server_addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = server.accept().await {
                let _ = stream.write_all(b"hello").await;
            }
        });
        let door = Door::open(server_addr).await;

        let mut through = TcpStream::connect(door.addr()).await.unwrap();
        let mut answer = [0; 5];
        through.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"hello");

        door.close();
        let mut refused = TcpStream::connect(door.addr()).await.unwrap();
        let mut rest = Vec::new();
        let read = refused.read_to_end(&mut rest).await;
        assert!(
            read.is_err() || rest.is_empty(),
            "answered after closing: {rest:?}"
        );
        assert!(
            TcpListener::bind(door.addr()).await.is_err(),
            "the closed door still holds its port"
        );
    }
}
