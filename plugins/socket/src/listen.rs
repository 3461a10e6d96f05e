//! Binding, accepting and reading.
//!
//! Streams: one task accepts, holding a semaphore permit per connection
//! (`max_connections`), and one task per connection reads a chunk, cuts
//! it, and sends the records as one batch, waiting while the channel is
//! full (the socket is not read meanwhile: TCP backpressure). Datagrams:
//! one task drains the socket into one buffer per wakeup and sends what it
//! got as one batch. Every task stops reading when shutdown is signalled
//! and sends what it holds.

use std::io::{self, ErrorKind};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tailrace_api::{BuildError, ComponentTask, EarlyBinding, Heartbeat, Record, SourceContext};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UdpSocket, UnixDatagram, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::early::{self, Parked};
use crate::framing::{self, Cuts, StreamFramer};
use crate::limits::{AddressSlot, Addresses, Rate};
use crate::metrics;
use crate::output::{Every, Output, KERNEL_DROPS, OVER_BUDGET, SLOW};
use crate::unix::{self, SocketFile};
use crate::{Plan, Transport};

/// Room for the largest datagram (UDP's is 65,507 bytes); a longer unix
/// datagram is cut by the kernel, and counted as truncated.
const DATAGRAM_SPACE: usize = 64 * 1024;
/// Datagrams are received into regions of this size, sliced into records.
const DATAGRAM_REGION: usize = 1024 * 1024;
/// At most this many datagrams go into one batch.
const DATAGRAMS_PER_BATCH: usize = 4096;
const LISTEN_BACKLOG: i32 = 1024;
/// After shutdown a connection is read until a read waits this long...
const DRAIN_QUIET: Duration = Duration::from_millis(20);
/// ...or this long has passed since shutdown.
const DRAIN_TOTAL: Duration = Duration::from_secs(2);
/// An idle timeout of 0: never.
pub(crate) const NEVER: Duration = Duration::from_secs(365 * 86_400);

/// When a connection stops draining, counted from now (shutdown).
pub(crate) fn drain_deadline() -> Instant {
    Instant::now() + DRAIN_TOTAL
}

/// After shutdown: the next read of what the peer has already sent (the
/// kernel's receive buffer), after `carry`, so it goes into the pipeline
/// rather than being dropped with the socket. `None` once a read would
/// wait (`DRAIN_QUIET`), the peer closed, or `deadline` passed.
pub(crate) async fn drain_read<S: AsyncRead + Unpin>(
    stream: &mut S,
    out: &Output,
    carry: &[u8],
    deadline: Instant,
) -> Option<Bytes> {
    let until = deadline.min(Instant::now() + DRAIN_QUIET);
    let read = out.pool.read(stream, carry, DATAGRAM_SPACE);
    match tokio::time::timeout_at(until, read).await {
        Ok(Ok(chunk)) if chunk.len() > carry.len() => Some(chunk),
        _ => None,
    }
}

/// Binds as `plan` says and returns the task that serves the socket.
pub(crate) fn start(plan: Plan, cx: SourceContext) -> Result<ComponentTask, BuildError> {
    let name = cx.name.clone();
    match plan.transport.clone() {
        Transport::Tcp(addr) => {
            let (listener, listed) = match early::take(&plan.transport) {
                Some(Parked::Tcp(l)) => Ok(l),
                _ => bind_tcp(addr, plan.receive_buffer_bytes),
            }
            .and_then(|l| Ok((l.try_clone()?, l)))
            .and_then(|(l, dup)| Ok((TcpListener::from_std(l)?, Parked::Tcp(dup))))
            .map_err(|e| bind_error(&format!("tcp {addr}"), e))?;
            let tls = plan.tls.as_ref().map(crate::tls::acceptor).transpose()?;
            let out = Arc::new(Output::new(cx, None, &plan));
            let listed = early::listening(&plan.transport, listed);
            let served = serve(Listener::Tcp(listener, tls), Arc::new(plan), out, None);
            Ok(while_listed(listed, served))
        }
        Transport::UnixStream(path) => {
            unix::claim(&path, &name)?;
            let listener = std::os::unix::net::UnixListener::bind(&path)
                .map_err(|e| bind_error(&format!("unix {}", path.display()), e))?;
            let file = SocketFile::bound(&path, plan.socket_mode)?;
            set_receive_buffer(&listener, plan.receive_buffer_bytes)?;
            listener
                .set_nonblocking(true)
                .map_err(|e| BuildError(e.to_string()))?;
            let listener =
                UnixListener::from_std(listener).map_err(|e| BuildError(e.to_string()))?;
            let out = Arc::new(Output::new(cx, Some(Arc::from(path.as_path())), &plan));
            Ok(Box::pin(serve(
                Listener::Unix(listener),
                Arc::new(plan),
                out,
                Some(file),
            )))
        }
        Transport::Udp(addr) => {
            let (socket, listed) = match early::take(&plan.transport) {
                Some(Parked::Udp(s)) => Ok(s),
                _ => bind_udp(addr, plan.receive_buffer_bytes),
            }
            .and_then(|s| Ok((s.try_clone()?, s)))
            .and_then(|(s, dup)| Ok((UdpSocket::from_std(s)?, Parked::Udp(dup))))
            .map_err(|e| bind_error(&format!("udp {addr}"), e))?;
            let out = Arc::new(Output::new(cx, None, &plan));
            let listed = early::listening(&plan.transport, listed);
            let received = receive(Datagrams::Udp(socket), plan, out, None);
            Ok(while_listed(listed, received))
        }
        Transport::UnixDatagram(path) => {
            unix::claim(&path, &name)?;
            let socket = std::os::unix::net::UnixDatagram::bind(&path)
                .map_err(|e| bind_error(&format!("unix {}", path.display()), e))?;
            let file = SocketFile::bound(&path, plan.socket_mode)?;
            set_receive_buffer(&socket, plan.receive_buffer_bytes)?;
            socket
                .set_nonblocking(true)
                .map_err(|e| BuildError(e.to_string()))?;
            let socket = UnixDatagram::from_std(socket).map_err(|e| BuildError(e.to_string()))?;
            let out = Arc::new(Output::new(cx, Some(Arc::from(path.as_path())), &plan));
            Ok(Box::pin(receive(
                Datagrams::Unix(socket),
                plan,
                out,
                Some(file),
            )))
        }
    }
}

/// The source's task, its socket listed (`listed`) until the task ends,
/// so a reload that changes the source can take the socket over.
fn while_listed(
    listed: early::Guard,
    task: impl std::future::Future<Output = Result<(), String>> + Send + 'static,
) -> ComponentTask {
    Box::pin(async move {
        let _listed = listed;
        task.await
    })
}

fn bind_error(what: &str, e: io::Error) -> BuildError {
    let hint = match e.kind() {
        ErrorKind::AddrInUse => " (another program, or another source, is listening there)",
        ErrorKind::PermissionDenied => " (ports below 1024 need root or CAP_NET_BIND_SERVICE; a unix socket needs a writable directory)",
        ErrorKind::NotFound => " (create the socket's directory first)",
        ErrorKind::AddrNotAvailable => " (no interface of this host has that address)",
        _ => "",
    };
    BuildError(format!("cannot listen on {what}: {e}{hint}"))
}

fn set_receive_buffer(socket: &impl AsFd, bytes: Option<usize>) -> Result<(), BuildError> {
    if let Some(n) = bytes {
        set_recv_buffer(SockRef::from(socket), n)
            .map_err(|e| BuildError(format!("cannot set receive_buffer_bytes to {n}: {e}")))?;
    }
    Ok(())
}

/// SO_RCVBUF, logging the effective size when the kernel capped it at
/// net.core.rmem_max (Linux reports twice what it grants, for its own
/// bookkeeping; less than twice the request means capped).
fn set_recv_buffer(socket: SockRef<'_>, bytes: usize) -> io::Result<()> {
    socket.set_recv_buffer_size(bytes)?;
    let effective = socket.recv_buffer_size()?;
    if effective < bytes.saturating_mul(2) {
        warn!(
            requested_bytes = bytes,
            effective_bytes = effective / 2,
            address = ?socket.local_addr().ok().and_then(|a| a.as_socket()),
            "the kernel capped receive_buffer_bytes at net.core.rmem_max; raise it (sysctl -w net.core.rmem_max=BYTES) to get what was asked"
        );
    }
    Ok(())
}

/// Binds a TCP or UDP socket now, for [`tailrace_api::SourceConfig::bind_early`],
/// or, when a running source listens on that address (a reload changed
/// it), takes that source's socket over (`early::duplicate`); `None` for
/// unix sockets, port 0, or when binding fails otherwise.
pub(crate) fn bind_early(plan: &Plan) -> Option<EarlyBinding> {
    let bound = match plan.transport {
        Transport::Tcp(a) if a.port() != 0 => {
            bind_tcp(a, plan.receive_buffer_bytes).map(Parked::Tcp)
        }
        Transport::Udp(a) if a.port() != 0 => {
            bind_udp(a, plan.receive_buffer_bytes).map(Parked::Udp)
        }
        _ => return None,
    };
    match bound {
        Ok(parked) => Some(early::park(&plan.transport, parked, false)),
        Err(e) if e.kind() == ErrorKind::AddrInUse => {
            let socket = early::duplicate(&plan.transport)?;
            if let Some(bytes) = plan.receive_buffer_bytes {
                // The changed source's receive buffer, on the socket it
                // takes (one it no longer sets keeps the old size).
                let _ = match &socket {
                    Parked::Tcp(l) => set_recv_buffer(SockRef::from(l), bytes),
                    Parked::Udp(s) => set_recv_buffer(SockRef::from(s), bytes),
                };
            }
            Some(early::park(&plan.transport, socket, true))
        }
        Err(_) => None,
    }
}

fn bind_tcp(addr: SocketAddr, receive_buffer: Option<usize>) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if let Some(n) = receive_buffer {
        // Inherited by accepted connections.
        set_recv_buffer(SockRef::from(&socket), n)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn bind_udp(addr: SocketAddr, receive_buffer: Option<usize>) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Some(n) = receive_buffer {
        set_recv_buffer(SockRef::from(&socket), n)?;
    }
    // Each datagram then carries the socket's count of datagrams the
    // kernel dropped for want of room (see `recv_into`).
    let on: libc::c_int = 1;
    // SAFETY: a valid descriptor, an int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RXQ_OVFL,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

enum Listener {
    Tcp(TcpListener, Option<TlsAcceptor>),
    Unix(UnixListener),
}

enum Connection {
    Tcp(TcpStream, Option<TlsAcceptor>),
    Unix(UnixStream),
}

impl Listener {
    /// A connection, its peer as text, and its IP address (TCP).
    async fn accept(&self) -> io::Result<(Connection, String, Option<IpAddr>)> {
        match self {
            Listener::Tcp(l, tls) => {
                let (s, peer) = l.accept().await?;
                Ok((
                    Connection::Tcp(s, tls.clone()),
                    peer.to_string(),
                    Some(peer.ip()),
                ))
            }
            Listener::Unix(l) => {
                let (s, _) = l.accept().await?;
                Ok((Connection::Unix(s), "unix".into(), None))
            }
        }
    }

    fn is_tls(&self) -> bool {
        matches!(self, Listener::Tcp(_, Some(_)))
    }
}

/// What a connection holds while it is served: its slot (or, during a TLS
/// handshake, its handshake permit) and its claim on its address.
struct Claims {
    // Fields drop in order: the address is released before the slot, so
    // the connection accepted into the freed slot never finds its address
    // still claimed by the one that left (it was refused as `per_address`).
    _address: Option<AddressSlot>,
    permit: OwnedSemaphorePermit,
}

/// Accepts until shutdown, then accepts what waits in the backlog, lets
/// every connection drain what the kernel holds, says the source sent
/// everything once every connection stopped reading (`cx.sent`), and
/// waits for the connection tasks (a relp connection answers until the
/// sinks are done). `file` (a unix socket file) is removed once the
/// listener is closed.
///
/// A plain connection takes a slot (`max_connections`) before it is
/// accepted; a TLS connection takes a handshake permit instead (as many),
/// and a slot only once its handshake is done, so clients that never
/// finish one hold no slot. A TCP peer address holds at most
/// `max_connections_per_address` connections; more are closed at once.
async fn serve(
    listener: Listener,
    plan: Arc<Plan>,
    out: Arc<Output>,
    file: Option<SocketFile>,
) -> Result<(), String> {
    let slots = Arc::new(Semaphore::new(plan.max_connections));
    let gate = if listener.is_tls() {
        Arc::new(Semaphore::new(plan.max_connections))
    } else {
        slots.clone()
    };
    let addresses = Addresses::new(plan.max_connections_per_address);
    let mut tasks = JoinSet::new();
    let stopped = out.cx.shutdown.wait();
    tokio::pin!(stopped);
    let (log_full, log_error, log_address) = (Every::default(), Every::default(), Every::default());
    let heartbeat = &out.cx.heartbeat;
    // Each connection holds a clone until it reads no more.
    let (reading, mut all_stopped_reading) = tokio::sync::mpsc::channel::<()>(1);
    let admit = |accepted: (Connection, String, Option<IpAddr>), permit| {
        let (conn, peer, ip) = accepted;
        let address = match ip {
            None => None,
            Some(ip) => match addresses.claim(ip) {
                Some(slot) => Some(slot),
                None => {
                    out.refused.add(metrics::PER_ADDRESS, 1);
                    if log_address.due() {
                        warn!(source = %out.name(), peer, max_connections_per_address = plan.max_connections_per_address, "too many connections from one address; closing the new one");
                    }
                    return None;
                }
            },
        };
        debug!(source = %out.name(), peer, "connection accepted");
        let claims = Claims {
            permit,
            _address: address,
        };
        Some(connection(
            conn,
            peer,
            plan.clone(),
            out.clone(),
            slots.clone(),
            claims,
            reading.clone(),
        ))
    };
    loop {
        // Waiting for a free slot or a client is not a hang.
        heartbeat.idle();
        let permit = tokio::select! {
            biased;
            _ = &mut stopped => break,
            p = gate.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        if gate.available_permits() == 0 && log_full.due() {
            warn!(source = %out.name(), max_connections = plan.max_connections, "connection limit reached; further connections wait to be accepted");
        }
        let accepted = tokio::select! {
            biased;
            _ = &mut stopped => break,
            a = listener.accept() => a,
        };
        heartbeat.beat();
        while tasks.try_join_next().is_some() {}
        match accepted {
            Ok(accepted) => {
                if let Some(task) = admit(accepted, permit) {
                    tasks.spawn(task);
                }
            }
            Err(e) => {
                // Out of descriptors, usually: wait a little, keep going.
                if log_error.due() {
                    warn!(source = %out.name(), error = %e, "cannot accept a connection");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // Connections the kernel accepted for us are served too: they see the
    // shutdown and drain what they sent (a TLS one finishes its handshake
    // first, within the drain deadline). One for which no slot is free
    // (or, with TLS, no handshake permit) is closed unread, and counted.
    while let Ok(Ok(accepted)) = tokio::time::timeout(Duration::ZERO, listener.accept()).await {
        match gate.clone().try_acquire_owned() {
            Ok(permit) => {
                if let Some(task) = admit(accepted, permit) {
                    tasks.spawn(task);
                }
            }
            Err(_) => {
                out.refused.add(metrics::MAX_CONNECTIONS, 1);
                if log_full.due() {
                    warn!(source = %out.name(), peer = accepted.1, max_connections = plan.max_connections, "shutdown: a connection in the accept backlog found no free slot; closing it unread");
                }
            }
        }
    }
    drop(listener);
    drop(file);
    drop(reading);
    heartbeat.idle();
    let _ = all_stopped_reading.recv().await;
    out.cx.sent.trigger();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn connection(
    conn: Connection,
    peer: String,
    plan: Arc<Plan>,
    out: Arc<Output>,
    slots: Arc<Semaphore>,
    mut claims: Claims,
    reading: tokio::sync::mpsc::Sender<()>,
) {
    let heartbeat = out.cx.heartbeat.task(&format!("connection {peer}"));
    // The handshake is bounded by its timeout.
    heartbeat.idle();
    let hb = &heartbeat;
    match conn {
        Connection::Tcp(stream, None) => {
            serve_stream(stream, &peer, &plan, &out, hb, reading).await
        }
        Connection::Tcp(stream, Some(tls)) => {
            // Bounded by its timeout and, once shutdown comes, by the drain
            // deadline too: a client that sent its records before the
            // shutdown finishes its handshake and is drained like the others.
            let timeout = Instant::now() + plan.tls_handshake_timeout;
            let handshake = tls.accept(stream);
            tokio::pin!(handshake);
            let r = tokio::select! {
                biased;
                r = tokio::time::timeout_at(timeout, &mut handshake) => r,
                _ = out.cx.shutdown.wait() => {
                    tokio::time::timeout_at(timeout.min(drain_deadline()), &mut handshake).await
                }
            };
            let stream = match r {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    out.refused.add(metrics::TLS_HANDSHAKE_FAILED, 1);
                    if out.log_tls.due() {
                        warn!(source = %out.name(), peer, error = %e, "TLS handshake failed");
                    }
                    return;
                }
                Err(_) => {
                    out.refused.add(metrics::TLS_HANDSHAKE_TIMEOUT, 1);
                    if out.log_tls.due() {
                        warn!(source = %out.name(), peer, timeout_ms = plan.tls_handshake_timeout.as_millis() as u64, shutdown = out.cx.shutdown.is_triggered(), "TLS handshake timed out (or outlasted the shutdown drain); closing the connection");
                    }
                    return;
                }
            };
            // The handshake permit goes back; a connection slot is taken.
            // At shutdown the connection keeps its handshake permit instead
            // and drains at once: waiting for a slot would outlast the drain.
            let slot = tokio::select! {
                biased;
                p = slots.acquire_owned() => Some(p.expect("the semaphore is never closed")),
                _ = out.cx.shutdown.wait() => None,
            };
            if let Some(slot) = slot {
                claims.permit = slot;
            }
            serve_stream(stream, &peer, &plan, &out, hb, reading).await
        }
        Connection::Unix(stream) => serve_stream(stream, &peer, &plan, &out, hb, reading).await,
    }
    drop(claims);
}

async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: &str,
    plan: &Plan,
    out: &Output,
    heartbeat: &Heartbeat,
    reading: tokio::sync::mpsc::Sender<()>,
) {
    if plan.relp {
        crate::relp_conn::serve(stream, peer, plan, out, heartbeat, reading).await
    } else {
        read(stream, peer, plan, out, heartbeat).await
    }
}

/// Reads one connection until it closes, idles out or shutdown comes (then
/// drains what the peer already sent). Reads go into buffers of the
/// source's pool (`crate::pool`); between reads the connection keeps only
/// a copy of its partial frame.
async fn read<S: AsyncRead + Unpin>(
    mut stream: S,
    peer: &str,
    plan: &Plan,
    out: &Output,
    heartbeat: &Heartbeat,
) {
    let mut framer = StreamFramer::new(plan.stream_framing, plan.limit);
    let mut carry: Vec<u8> = Vec::new();
    let stopped = out.cx.shutdown.wait();
    tokio::pin!(stopped);
    let idle_for = plan.idle_timeout.unwrap_or(NEVER);
    let idle = tokio::time::sleep(idle_for);
    tokio::pin!(idle);
    let mut held = out.partial.share();
    let mut rate = plan.min_rate.map(Rate::new);
    let rate_check = tokio::time::sleep_until(
        rate.as_ref()
            .map_or(Instant::now() + NEVER, |r| r.window_end),
    );
    tokio::pin!(rate_check);
    let why = loop {
        heartbeat.idle();
        let read = tokio::select! {
            biased;
            _ = &mut stopped => break "shutdown",
            _ = &mut idle => break "idle timeout",
            _ = &mut rate_check => {
                let r = rate.as_mut().expect("armed only with a rule");
                if r.trickles(!carry.is_empty()) {
                    break out.discard_partial(peer, SLOW, &mut carry);
                }
                rate_check.as_mut().reset(r.window_end);
                continue;
            }
            r = out.pool.read(&mut stream, &carry, plan.read_buffer_bytes) => r,
        };
        heartbeat.beat();
        match read {
            Ok(chunk) if chunk.len() == carry.len() => break "closed by the peer",
            Ok(chunk) => {
                if let Some(r) = rate.as_mut() {
                    r.add(chunk.len() - carry.len());
                }
                if !cut_and_send(&mut framer, &chunk, &mut carry, out, heartbeat).await {
                    return;
                }
                if let Some(r) = rate.as_mut() {
                    // A send that waited on a full channel past the rate
                    // window: the sender could not send meanwhile.
                    r.after_wait(Instant::now());
                    rate_check.as_mut().reset(r.window_end);
                }
                if !held.set(carry.len()) {
                    break out.discard_partial(peer, OVER_BUDGET, &mut carry);
                }
                // Time spent waiting for the channel is not idleness.
                idle.as_mut().reset(Instant::now() + idle_for);
            }
            Err(e) => {
                debug!(source = %out.name(), peer, error = %e, "read failed");
                break "read error";
            }
        }
    };
    if why == "shutdown" {
        let deadline = drain_deadline();
        while let Some(chunk) = drain_read(&mut stream, out, &carry, deadline).await {
            if !cut_and_send(&mut framer, &chunk, &mut carry, out, heartbeat).await {
                return;
            }
        }
    }
    let mut records = Vec::new();
    let mut cuts = Cuts::default();
    framer.cut_chunk(&Bytes::from(carry), true, &mut records, &mut cuts);
    out.send(records, cuts, heartbeat).await;
    debug!(source = %out.name(), peer, reason = why, "connection closed");
}

/// Sends the complete frames of `chunk` (read after `carry`) and keeps
/// the rest in `carry`, a copy, so the chunk's buffer goes back to the
/// pool once its records are delivered. False once the channel is closed.
async fn cut_and_send(
    framer: &mut StreamFramer,
    chunk: &Bytes,
    carry: &mut Vec<u8>,
    out: &Output,
    heartbeat: &Heartbeat,
) -> bool {
    let mut records = Vec::new();
    let mut cuts = Cuts::default();
    let consumed = framer.cut_chunk(chunk, false, &mut records, &mut cuts);
    *carry = chunk[consumed..].to_vec();
    out.send(records, cuts, heartbeat).await
}

enum Datagrams {
    Udp(UdpSocket),
    Unix(UnixDatagram),
}

impl Datagrams {
    async fn readable(&self) -> io::Result<()> {
        match self {
            Datagrams::Udp(s) => s.readable().await,
            Datagrams::Unix(s) => s.readable().await,
        }
    }

    /// Receives one datagram at the end of `buf`: (bytes stored, length
    /// the datagram had), which differ when the kernel cut it, and the
    /// kernel's drop count if it came with it.
    fn try_recv(&self, buf: &mut BytesMut) -> io::Result<(usize, usize, Option<u32>)> {
        match self {
            Datagrams::Udp(s) => s.try_io(tokio::io::Interest::READABLE, || recv_into(s, buf)),
            Datagrams::Unix(s) => s.try_io(tokio::io::Interest::READABLE, || recv_into(s, buf)),
        }
    }
}

/// Receives one datagram at the end of `buf` (recvmsg): (bytes stored,
/// length the datagram had, the socket's count of datagrams the kernel
/// dropped so far when it attached it: SO_RXQ_OVFL, set on UDP sockets).
fn recv_into(socket: &impl AsRawFd, buf: &mut BytesMut) -> io::Result<(usize, usize, Option<u32>)> {
    let space = &mut buf.spare_capacity_mut()[..DATAGRAM_SPACE];
    let mut iov = libc::iovec {
        iov_base: space.as_mut_ptr().cast(),
        iov_len: space.len(),
    };
    // Room for one control message of a u32, aligned as cmsghdr wants.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; zero is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // MSG_TRUNC: the datagram's real length is returned even when longer.
    // SAFETY: the iovec points at DATAGRAM_SPACE writable bytes and the
    // control buffer at `msg_controllen` bytes, both alive for the call.
    let len = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_TRUNC) };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = len as usize;
    let stored = len.min(DATAGRAM_SPACE);
    // SAFETY: recvmsg initialized the first `stored` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + stored) };
    let mut dropped = None;
    // SAFETY: the CMSG macros walk the control buffer recvmsg filled, within
    // the `msg_controllen` it set.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SO_RXQ_OVFL {
                dropped = Some(std::ptr::read_unaligned(
                    libc::CMSG_DATA(cmsg).cast::<u32>(),
                ));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((stored, len, dropped))
}

/// Receives until shutdown. UDP (`file` is None) never waits for the
/// channel: what does not fit is dropped and counted. A unix datagram
/// socket waits, which makes its senders wait.
async fn receive(
    socket: Datagrams,
    plan: Plan,
    out: Arc<Output>,
    file: Option<SocketFile>,
) -> Result<(), String> {
    let wait_for_room = file.is_some();
    let stopped = out.cx.shutdown.wait();
    tokio::pin!(stopped);
    let mut buf = BytesMut::new();
    let mut ranges = Vec::new();
    let log_error = Every::default();
    let heartbeat = &out.cx.heartbeat;
    // The kernel's count of datagrams it dropped, as last seen.
    let mut kernel_dropped: u32 = 0;
    if !wait_for_room {
        out.cx.metrics.dropped.add(KERNEL_DROPS, 0);
    }
    loop {
        heartbeat.idle();
        tokio::select! {
            biased;
            _ = &mut stopped => break,
            r = socket.readable() => r.map_err(|e| format!("cannot wait on the socket: {e}"))?,
        }
        heartbeat.beat();
        let mut cuts = Cuts::default();
        for _ in 0..DATAGRAMS_PER_BATCH {
            if buf.capacity() - buf.len() < DATAGRAM_SPACE {
                buf.reserve(DATAGRAM_REGION);
            }
            let start = buf.len();
            match socket.try_recv(&mut buf) {
                Ok((stored, len, dropped)) => {
                    if let Some(now) = dropped {
                        cuts.kernel_dropped += u64::from(now.wrapping_sub(kernel_dropped));
                        kernel_dropped = now;
                    }
                    let before = cuts.truncated;
                    framing::datagram(
                        &buf,
                        start,
                        start + stored,
                        plan.split_datagrams,
                        plan.limit,
                        &mut ranges,
                        &mut cuts,
                    );
                    if len > stored && cuts.truncated == before {
                        cuts.truncated += 1;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    if log_error.due() {
                        warn!(source = %out.name(), error = %e, "cannot receive a datagram");
                    }
                    break;
                }
            }
        }
        let chunk = buf.split().freeze();
        let records: Vec<Record> = ranges
            .drain(..)
            .map(|(a, b)| Record::new(chunk.slice(a..b), 0))
            .collect();
        if wait_for_room {
            if !out.send(records, cuts, heartbeat).await {
                break;
            }
        } else {
            out.offer(records, cuts);
        }
    }
    drop(file);
    Ok(())
}
