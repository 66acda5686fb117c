//! The accept loop and each connection's life: what `axum::serve` does, plus the bounds it
//! lacks. A client that opens a connection and sends half a head, nothing at all, or nothing
//! after its last request holds a socket, a task and a buffer; without bounds, 1,100 of them
//! exhausted 1,024 open files and `/healthz` stopped answering.
//!
//! * A request head must arrive within `HEADER_READ_TIMEOUT_SECS` of the connection's opening
//!   or of the head's first byte; a kept-alive connection may wait `IDLE_TIMEOUT_SECS` between
//!   requests. Past either, the connection is closed (no answer: there is no request to answer).
//! * The body's time (`BODY_READ_TIMEOUT_SECS`, answered 408) is [`crate::body_deadline`]'s.
//! * At most `MAX_CONNECTIONS` are served at once. The next ones are not accepted until one
//!   closes: they wait in the kernel's listen queue, which costs this process nothing.
//! * A head is buffered up to `MAX_HEADER_BYTES` (hyper's default buffer grew to 400 KiB per
//!   connection: 2,000 unfinished large heads held 795 MiB).
//! * hyper's own refusals of a head (400, 414, 431) are answered in our JSON error shape
//!   ([`crate::own_answers`]).
//! * On shutdown the listener closes, idle connections close, requests in flight get
//!   `SHUTDOWN_GRACE_SECS` to finish, and whatever is left is then closed.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::own_answers::Replacement;
use crate::settings::ConnectionSettings;

/// File descriptors kept apart from client connections: the database pool, the health
/// probe's connection, the listener, log files, SQLite's files and journals.
const RESERVED_FILES: u64 = 64;

/// The connection bounds in force, after [`connection_cap`] fitted the cap to the process.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub shutdown_grace: Duration,
}

impl ConnectionLimits {
    /// From the settings, with the connection cap fitted to the open-file limit (raised as far
    /// as the hard limit allows) and the database pool's size.
    pub fn fitted(settings: &ConnectionSettings, db_connections: u32) -> Self {
        Self {
            header_read_timeout: settings.header_read_timeout(),
            idle_timeout: settings.idle_timeout(),
            max_connections: connection_cap(settings.max_connections, db_connections),
            max_header_bytes: usize::try_from(settings.max_header_bytes).unwrap_or(usize::MAX),
            shutdown_grace: settings.shutdown_grace(),
        }
    }
}

/// `MAX_CONNECTIONS`, lowered (with a warning) to what the open-file limit leaves once the
/// pool and [`RESERVED_FILES`] are counted. The soft limit is first raised to the hard one:
/// the soft default of 1,024 is a leftover of `select(2)`, which tokio does not use.
fn connection_cap(wanted: u32, db_connections: u32) -> usize {
    let wanted = u64::from(wanted);
    let Some(files) = raise_open_file_limit() else {
        return usize::try_from(wanted).unwrap_or(usize::MAX);
    };
    let room = files
        .saturating_sub(RESERVED_FILES)
        .saturating_sub(u64::from(db_connections))
        .max(1);
    if wanted > room {
        tracing::warn!(
            max_connections = wanted,
            open_file_limit = files,
            serving = room,
            "MAX_CONNECTIONS is more than the open-file limit (ulimit -n) leaves room for; \
             serving fewer connections at once"
        );
    }
    usize::try_from(wanted.min(room)).unwrap_or(usize::MAX)
}

/// Raises the soft open-file limit to the hard one; returns the soft limit in force.
#[cfg(unix)]
fn raise_open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    // RLIM_INFINITY is u64::MAX: no limit to fit.
    Some(limit.rlim_cur)
}

#[cfg(not(unix))]
fn raise_open_file_limit() -> Option<u64> {
    None
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains as the module says.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut accept_errors = AcceptErrors::default();
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                // Never closed; a closed semaphore would mean no more connections anyway.
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    accept_errors.pause_after(&err).await;
                    continue;
                }
            },
        };
        // Finished connections' results, so the set holds only live ones.
        while connections.try_join_next().is_some() {}
        connections.spawn(serve_connection(
            stream,
            peer,
            router.clone(),
            limits.clone(),
            stopping.clone(),
            slot,
        ));
    }
    drop(listener);
    let _ = stop.send(true);
    let grace = limits.shutdown_grace;
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            ?grace,
            "shutdown grace (SHUTDOWN_GRACE_SECS) is over; closing the remaining connections"
        );
        connections.shutdown().await;
    }
}

/// Accept errors: running out of file descriptors (EMFILE, ENFILE) or memory is retried after
/// a pause, since retrying at once spins on the same error; other errors concern only the
/// connection that failed. Logged at most once a second, not once per attempt.
#[derive(Default)]
struct AcceptErrors {
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl AcceptErrors {
    async fn pause_after(&mut self, err: &io::Error) {
        let exhausted = matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
            || err.kind() == io::ErrorKind::OutOfMemory;
        let now = Instant::now();
        if self
            .last_logged
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
        {
            tracing::warn!(error = %err, suppressed = self.suppressed, "accept failed");
            self.last_logged = Some(now);
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
        if exhausted {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: ConnectionLimits,
    mut stopping: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    // Small answers go out at once rather than waiting for Nagle's timer.
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: Arc::clone(&activity),
        replacement: Replacement::default(),
    });
    let service_activity = Arc::clone(&activity);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        let in_flight = InFlight::begin(&service_activity);
        request.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        async move {
            let response = router.oneshot(request.map(axum::body::Body::new)).await;
            drop(in_flight);
            response
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .max_buf_size(limits.max_header_bytes)
        // Ours, below, also covers a silent connection and the gap between requests.
        .header_read_timeout(None);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut shutting_down = *stopping.borrow();
    if shutting_down {
        connection.as_mut().graceful_shutdown();
    }
    loop {
        let deadline = activity.deadline(&limits);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, %peer, "connection ended with an error");
                }
                return;
            }
            changed = stopping.changed(), if !shutting_down => {
                shutting_down = true;
                if changed.is_ok() {
                    // Closes it now if idle, else after the response in flight.
                    connection.as_mut().graceful_shutdown();
                }
            }
            () = activity.changed.notified() => {}
            () = sleep_until(deadline) => {
                if activity.deadline(&limits).is_some_and(|at| at <= Instant::now()) {
                    tracing::debug!(%peer, "closing a connection that sent no complete request in time");
                    return;
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Where a connection is between requests, for its deadline.
struct Activity {
    state: Mutex<Phase>,
    /// Woken when the deadline may have moved.
    changed: Notify,
}

#[derive(Clone, Copy)]
struct Phase {
    /// Requests being handled (one, with HTTP/1.1 without pipelining).
    in_flight: u32,
    /// When the last response was handed over, or the connection opened.
    idle_since: Instant,
    /// Whether it has sent a whole request yet: a new connection waits the header timeout,
    /// a kept-alive one the idle timeout.
    served: bool,
    /// When the first byte of the next head came, if it has.
    head_started: Option<Instant>,
}

impl Activity {
    fn new() -> Self {
        Self {
            state: Mutex::new(Phase {
                in_flight: 0,
                idle_since: Instant::now(),
                served: false,
                head_started: None,
            }),
            changed: Notify::new(),
        }
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        // A panic while holding this lock cannot leave the plain values inconsistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn deadline(&self, limits: &ConnectionLimits) -> Option<Instant> {
        let phase = *self.phase();
        if phase.in_flight > 0 {
            // The body deadline and REQUEST_TIMEOUT_SECS bound it.
            return None;
        }
        Some(match phase.head_started {
            Some(at) => at + limits.header_read_timeout,
            None if phase.served => phase.idle_since + limits.idle_timeout,
            None => phase.idle_since + limits.header_read_timeout,
        })
    }

    /// Bytes arrived: between requests, they start a head.
    fn read_some(&self) {
        let mut phase = self.phase();
        if phase.in_flight == 0 && phase.head_started.is_none() {
            phase.head_started = Some(Instant::now());
            drop(phase);
            self.changed.notify_one();
        }
    }
}

/// A request being handled, from its complete head to its response.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: &Arc<Activity>) -> Self {
        {
            let mut phase = activity.phase();
            phase.in_flight += 1;
            phase.head_started = None;
        }
        activity.changed.notify_one();
        Self(Arc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        {
            let mut phase = self.0.phase();
            phase.in_flight = phase.in_flight.saturating_sub(1);
            phase.idle_since = Instant::now();
            phase.served = true;
        }
        self.0.changed.notify_one();
    }
}

/// The socket, telling [`Activity`] when bytes arrive, and writing our answer in place of
/// hyper's own refusals ([`crate::own_answers`]).
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
    /// Written before anything else hyper writes, flushes or shuts down.
    replacement: Replacement,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read_some();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.replacement.poll_write_to(&mut this.inner, cx))?;
        if this.replacement.take(buf) {
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.replacement.poll_write_to(&mut this.inner, cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.replacement.poll_write_to(&mut this.inner, cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.replacement.poll_write_to(&mut this.inner, cx))?;
        // hyper hands its own head over as one slice.
        let mut filled = bufs.iter().filter(|buf| !buf.is_empty());
        if let (Some(only), None) = (filled.next(), filled.next())
            && this.replacement.take(only)
        {
            return Poll::Ready(Ok(only.len()));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
