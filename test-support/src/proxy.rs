//! A TCP proxy in front of the broker that can hold what clients send, so
//! a test can make a request the client has given up on land later, after
//! newer ones: the unknown outcome of a send (docs/scale-out.md §2).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Connections are numbered as accepted; a hold covers every connection
/// numbered below its mark (those open when it began). Later connections
/// pass, as a client's fresh connections after a timeout would.
#[derive(Debug)]
pub struct HoldingProxy {
    pub port: u16,
    hold_below: watch::Sender<u64>,
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl HoldingProxy {
    /// Listens on `port` and forwards to 127.0.0.1:`target`.
    pub async fn start(port: u16, target: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("proxy listen");
        let (hold_below, holds) = watch::channel(0);
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let id = counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(forward(client, target, id, holds.clone()));
            }
        });
        Self { port, hold_below, accepted, task }
    }

    /// Holds, from now on, everything sent on the connections open now.
    pub fn hold_open_connections(&self) {
        self.hold_below.send_replace(self.accepted.load(Ordering::SeqCst));
    }

    /// Delivers what was held, in order, and holds nothing more.
    pub fn release(&self) {
        self.hold_below.send_replace(0);
    }
}

impl Drop for HoldingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(client: TcpStream, target: u16, id: u64, mut holds: watch::Receiver<u64>) {
    let Ok(broker) = TcpStream::connect(("127.0.0.1", target)).await else { return };
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_broker, mut to_broker) = broker.into_split();
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_broker, &mut to_client).await;
    });
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = from_client.read(&mut buffer).await.unwrap_or(0);
        // Held bytes wait here, even when the client has gone meanwhile:
        // the broker still gets them once released.
        while *holds.borrow_and_update() > id {
            if holds.changed().await.is_err() {
                return;
            }
        }
        if read == 0 || to_broker.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
    // Give the broker time to act on the last request before the
    // connection closes.
    tokio::time::sleep(Duration::from_secs(5)).await;
}
