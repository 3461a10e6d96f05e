//! [`Proxy`]: a TCP forwarder between the agent and the broker that a test
//! can cut and restore, to cut the network without stopping either side.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Forwards every connection made to `127.0.0.1:port()` to an upstream
/// address. [`Proxy::cut`] closes every connection and closes each new one
/// at once, until [`Proxy::restore`]. Dropping it stops it.
pub struct Proxy {
    port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct State {
    cut: bool,
    /// Both ends of every open connection, so a cut can close them.
    open: Vec<TcpStream>,
    /// Connections accepted, and closed at once because of a cut.
    refused: u64,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`
    /// (`host:port`), which need not be listening yet.
    pub fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind 127.0.0.1:0");
        let port = listener
            .local_addr()
            .expect("bound socket has an address")
            .port();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (state, stop, upstream) = (state.clone(), stop.clone(), upstream.to_owned());
            std::thread::Builder::new()
                .name(format!("proxy-{port}"))
                .spawn(move || accept(&listener, &upstream, &state, &stop))
                .expect("cannot start the proxy thread")
        };
        Proxy {
            port,
            state,
            stop,
            acceptor: Some(acceptor),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The value for `bootstrap.servers`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Closes every forwarded connection; new ones are closed as soon as
    /// they are accepted.
    pub fn cut(&self) {
        let mut state = lock(&self.state);
        state.cut = true;
        for stream in state.open.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        lock(&self.state).cut = false;
    }

    pub fn is_cut(&self) -> bool {
        lock(&self.state).cut
    }

    /// How many connections were closed at once because of a cut; shows
    /// that a client tried to reconnect while it was cut.
    pub fn refused(&self) -> u64 {
        lock(&self.state).refused
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
        // Wakes the acceptor, which then sees the stop flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn accept(listener: &TcpListener, upstream: &str, state: &Mutex<State>, stop: &AtomicBool) {
    for client in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        // Deciding and registering under the lock: a cut either sees this
        // connection in `open` or this connection sees the cut.
        let mut st = lock(state);
        if st.cut {
            st.refused += 1;
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(server) = TcpStream::connect(upstream) else {
            // Upstream down: the client sees a closed connection, as it
            // would from a stopped broker.
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
            client.try_clone(),
            server.try_clone(),
            client.try_clone(),
            server.try_clone(),
        ) else {
            continue;
        };
        st.open.push(c3);
        st.open.push(s3);
        drop(st);
        std::thread::spawn(move || pipe(client, s2));
        std::thread::spawn(move || pipe(server, c2));
    }
}

/// Copies `from` to `to` until either side closes, then closes both.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
