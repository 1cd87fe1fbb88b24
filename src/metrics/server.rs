//! The metrics endpoint: `GET /metrics` (Prometheus text format 0.0.4) and `GET /healthz`, nothing else,
//! read-only. tiny_http reads requests; a fixed pool of `WORKERS` threads answers them, so a scrape storm
//! queues up instead of spawning renders without bound, and rendering holds the registry's read lock
//! only while gathering.
//!
//! Started explicitly (never at import: PySpark forks its workers), stopped by `stop()` or on drop.
//! If tiny_http's accept loop dies (it stops on the first accept error and panics on some, e.g. when
//! the process is out of file descriptors), the workers bind the same address again, so the endpoint
//! comes back once the cause is gone.
//!
//! Known limit: tiny_http sets no read timeout, so each open idle connection holds a thread and a
//! descriptor until its client closes it; a flood of idle connections can exhaust them (the endpoint
//! then comes back when they close). Put it behind the cluster network, not on the open internet.
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tiny_http::{Header, Method, Request, Response, Server, StatusCode};

use super::registry::MetricsRegistry;
use crate::{Error, Result};

/// Threads answering requests. Rendering takes well under a millisecond, so a few keep up with
/// thousands of scrapes per second while leaving the cores to scoring.
pub const WORKERS: usize = 3;
/// How often an idle worker checks whether it should stop (stop() also wakes them at once).
const POLL: Duration = Duration::from_millis(500);
/// How often the workers check that tiny_http's listener is still alive (see `revive_if_dead`).
const LIVENESS_EVERY: Duration = Duration::from_secs(1);
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

struct Shared {
    registry: Arc<MetricsRegistry>,
    addr: SocketAddr,
    host: String,
    stop: AtomicBool,
    /// The tiny_http server in use; replaced when its accept loop dies, taken (closing it) by stop().
    server: Mutex<Option<Arc<Server>>>,
    listener_restarts: AtomicU64,
    next_liveness_check: Mutex<Instant>,
    requests: AtomicU64,
}

pub struct MetricsServer {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer").field("addr", &self.shared.addr).finish_non_exhaustive()
    }
}

fn bind(host: &str, port: u16) -> Result<Server> {
    let listener = listen((host, port)).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => Error::Config(format!("metrics port {port} on {host} is already in use")),
        _ => Error::Config(format!("cannot serve metrics on {host}:{port}: {e}")),
    })?;
    Server::from_listener(listener, None)
        .map_err(|e| Error::Config(format!("cannot serve metrics on {host}:{port}: {e}")))
}

/// A listener whose accepted connections have Nagle's algorithm off. tiny_http writes the response
/// head and body separately; with Nagle on, a keep-alive client (Prometheus) waits for its own delayed
/// ACK before the last segment arrives: about 40 ms per scrape instead of a fraction of one.
/// Linux copies TCP_NODELAY from the listening socket to the sockets it accepts.
fn listen(addr: impl std::net::ToSocketAddrs) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)?;
    set_nodelay(&listener);
    Ok(listener)
}

#[cfg(target_os = "linux")]
fn set_nodelay(listener: &TcpListener) {
    use std::os::fd::AsRawFd;
    use std::os::raw::{c_int, c_void};
    const IPPROTO_TCP: c_int = 6;
    const TCP_NODELAY: c_int = 1;
    unsafe extern "C" {
        fn setsockopt(fd: c_int, level: c_int, name: c_int, value: *const c_void, len: u32) -> c_int;
    }
    let on: c_int = 1;
    // SAFETY: a valid socket descriptor owned by `listener`, and a c_int option value that outlives the call.
    // A failure only costs latency, so its result is not checked.
    unsafe {
        setsockopt(
            listener.as_raw_fd(),
            IPPROTO_TCP,
            TCP_NODELAY,
            (&on as *const c_int).cast(),
            std::mem::size_of::<c_int>() as u32,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn set_nodelay(_listener: &TcpListener) {}

impl MetricsServer {
    /// Binds `host:port` (port 0: any free port, see `port()`) and starts answering on `WORKERS` threads.
    pub fn start(registry: Arc<MetricsRegistry>, host: &str, port: u16) -> Result<MetricsServer> {
        let server = bind(host, port)?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| Error::Config(format!("metrics server on {host}:{port} is not bound to an IP address")))?;
        let shared = Arc::new(Shared {
            registry,
            addr,
            host: host.to_string(),
            stop: AtomicBool::new(false),
            server: Mutex::new(Some(Arc::new(server))),
            listener_restarts: AtomicU64::new(0),
            next_liveness_check: Mutex::new(Instant::now() + LIVENESS_EVERY),
            requests: AtomicU64::new(0),
        });
        let mut workers = Vec::with_capacity(WORKERS);
        for i in 0..WORKERS {
            let for_worker = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("tidewatch-metrics-{i}"))
                .spawn(move || worker(&for_worker));
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(e) => {
                    let mut partial = MetricsServer { shared, workers };
                    partial.stop();
                    return Err(Error::Config(format!("cannot start metrics server threads: {e}")));
                }
            }
        }
        Ok(MetricsServer { shared, workers })
    }

    /// The bound address (the actual port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }
    pub fn port(&self) -> u16 {
        self.shared.addr.port()
    }
    pub fn host(&self) -> &str {
        &self.shared.host
    }
    /// `http://host:port/metrics`, a wildcard host written as loopback (where a local client reaches it).
    pub fn url(&self) -> String {
        let host = match self.shared.host.as_str() {
            "0.0.0.0" | "" => "127.0.0.1".to_string(),
            "::" | "[::]" => "[::1]".to_string(),
            h if h.contains(':') && !h.starts_with('[') => format!("[{h}]"),
            h => h.to_string(),
        };
        format!("http://{host}:{}/metrics", self.port())
    }
    /// Requests answered so far (any path).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }
    /// Times the listener had to be bound again after tiny_http's accept loop died.
    pub fn listener_restarts(&self) -> u64 {
        self.shared.listener_restarts.load(Ordering::Relaxed)
    }
    pub fn is_running(&self) -> bool {
        !self.workers.is_empty()
    }

    /// Stops answering, closes the listening socket and joins the threads. Idempotent.
    pub fn stop(&mut self) {
        if self.workers.is_empty() {
            return;
        }
        self.shared.stop.store(true, Ordering::Release);
        if let Some(server) = lock(&self.shared.server).as_ref() {
            for _ in 0..self.workers.len() {
                server.unblock();
            }
        }
        for handle in self.workers.drain(..) {
            let _ = handle.join(); // a worker that panicked has nothing left to clean up
        }
        // The workers are gone, so this is the last reference. Dropping it tells tiny_http's accept thread
        // to end, which closes the listener a moment later: wait for that (the address binds again only
        // then), so that the port is free when stop() returns.
        drop(lock(&self.shared.server).take());
        let deadline = Instant::now() + Duration::from_secs(2);
        while TcpListener::bind(self.shared.addr).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn worker(shared: &Shared) {
    while !shared.stop.load(Ordering::Acquire) {
        let Some(server) = lock(&shared.server).clone() else { return };
        match server.recv_timeout(POLL) {
            Ok(Some(request)) => {
                shared.requests.fetch_add(1, Ordering::Relaxed);
                answer(&shared.registry, request);
            }
            Ok(None) => {}
            Err(e) => eprintln!("tidewatch metrics: accepting a connection on {} failed: {e}", shared.addr),
        }
        drop(server);
        revive_if_dead(shared);
    }
}

/// tiny_http's accept thread ends for good on an accept error and panics when it cannot clone an
/// accepted socket (both happen when the process runs out of file descriptors); either way its
/// listening socket is closed. Binding the address succeeds only then (a live listener holds it), so
/// a bind attempt every `LIVENESS_EVERY` is the liveness check, and its listener the replacement.
fn revive_if_dead(shared: &Shared) {
    {
        let mut next = lock(&shared.next_liveness_check);
        let now = Instant::now();
        if now < *next {
            return;
        }
        *next = now + LIVENESS_EVERY;
    }
    let mut current = lock(&shared.server);
    if current.is_none() || shared.stop.load(Ordering::Acquire) {
        return;
    }
    let Ok(listener) = listen(shared.addr) else {
        return; // in use: the listener is alive (or descriptors are still short; try again later)
    };
    if let Ok(server) = Server::from_listener(listener, None) {
        *current = Some(Arc::new(server));
        shared.listener_restarts.fetch_add(1, Ordering::Relaxed);
        eprintln!("tidewatch metrics: the listener on {} had stopped; listening again", shared.addr);
    }
}

fn answer(registry: &MetricsRegistry, request: Request) {
    let path = request.url().split('?').next().unwrap_or_default();
    let readonly = matches!(request.method(), Method::Get | Method::Head);
    let response = if !readonly {
        text(405, "method not allowed: this endpoint is read-only (GET)\n").with_header(header("Allow", "GET, HEAD"))
    } else {
        match path {
            "/metrics" => text(200, registry.render()).with_header(header("Content-Type", CONTENT_TYPE)),
            "/healthz" => text(200, "ok"),
            _ => text(404, "not found: this server serves /metrics and /healthz\n"),
        }
    };
    let _ = request.respond(response); // the client may have gone; nothing to do about it
}

fn text(status: u16, body: impl Into<String>) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_string(body.into())
        .with_status_code(StatusCode(status))
        .with_header(header("Content-Type", "text/plain; charset=utf-8"))
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("static ASCII header")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use super::*;
    use crate::metrics::BatchAggregate;
    use crate::sensors::SensorSet;

    /// One HTTP/1.0 exchange: (status, headers lower-cased, body).
    fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(stream, "{method} {path} HTTP/1.0\r\nHost: test\r\nContent-Length: 0\r\n\r\n").unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, head.to_lowercase(), body.to_string())
    }

    fn registry() -> Arc<MetricsRegistry> {
        let s = SensorSet::swat();
        let reg = MetricsRegistry::new(&s).unwrap();
        let mut agg = BatchAggregate::new(&s);
        agg.record_warmup(1.0);
        reg.apply_batch(&agg, 0.1).unwrap();
        Arc::new(reg)
    }

    #[test]
    fn serves_metrics_and_health_only() {
        let mut server = MetricsServer::start(registry(), "127.0.0.1", 0).unwrap();
        let addr = server.addr();
        assert_ne!(addr.port(), 0);
        assert_eq!(server.url(), format!("http://127.0.0.1:{}/metrics", addr.port()));

        let (status, head, body) = http(addr, "GET", "/metrics");
        assert_eq!(status, 200);
        assert!(head.contains("content-type: text/plain; version=0.0.4; charset=utf-8"), "{head}");
        assert!(body.contains("# TYPE ae_reconstruction_error histogram"));
        assert!(body.contains("ae_rows_processed_total 1\n"));
        let (status, _, body) = http(addr, "GET", "/metrics?x=1");
        assert_eq!((status, body.contains("ae_rows_processed_total")), (200, true));
        let (status, _, body) = http(addr, "HEAD", "/metrics");
        assert_eq!((status, body.as_str()), (200, ""));
        let (status, _, body) = http(addr, "GET", "/healthz");
        assert_eq!((status, body.as_str()), (200, "ok"));
        for path in ["/", "/metrics/", "/favicon.ico", "/../etc/passwd", "/healthz/x"] {
            assert_eq!(http(addr, "GET", path).0, 404, "{path}");
        }
        for method in ["POST", "PUT", "DELETE"] {
            let (status, head, _) = http(addr, method, "/metrics");
            assert_eq!(status, 405, "{method}");
            assert!(head.contains("allow: get, head"), "{head}");
        }
        assert!(server.requests() >= 12);

        server.stop();
        assert!(!server.is_running());
        assert!(TcpStream::connect(addr).is_err(), "the port is closed after stop()");
        // and free again: a new server takes the same port
        let again = MetricsServer::start(registry(), "127.0.0.1", addr.port()).unwrap();
        assert_eq!(again.port(), addr.port());
    }

    #[test]
    fn a_port_in_use_is_a_clear_error() {
        let first = MetricsServer::start(registry(), "127.0.0.1", 0).unwrap();
        let err = MetricsServer::start(registry(), "127.0.0.1", first.port()).unwrap_err().to_string();
        assert_eq!(err, format!("metrics port {} on 127.0.0.1 is already in use", first.port()));
        let err = MetricsServer::start(registry(), "no-such-host.invalid", 0).unwrap_err().to_string();
        assert!(err.contains("no-such-host.invalid:0"), "{err}");
    }

    #[test]
    fn answers_concurrent_scrapes_while_batches_apply() {
        let s = SensorSet::swat();
        let reg = Arc::new(MetricsRegistry::new(&s).unwrap());
        let server = MetricsServer::start(reg.clone(), "127.0.0.1", 0).unwrap();
        let addr = server.addr();
        let scrapers: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(move || {
                    for _ in 0..25 {
                        let (status, _, body) = http(addr, "GET", "/metrics");
                        assert_eq!(status, 200);
                        // a scrape never sees half a batch: rows and batches move together
                        let value = |name: &str| -> f64 {
                            let line = body.lines().find(|l| l.starts_with(name)).unwrap();
                            line.rsplit_once(' ').unwrap().1.parse().unwrap()
                        };
                        assert_eq!(value("ae_rows_processed_total "), 2.0 * value("ae_batches_processed_total "));
                    }
                })
            })
            .collect();
        for i in 0..200 {
            let mut agg = BatchAggregate::new(&s);
            agg.record_warmup(i as f64);
            agg.record_quarantined("nan:FIT101");
            reg.apply_batch(&agg, 0.01).unwrap();
        }
        for t in scrapers {
            t.join().unwrap();
        }
        assert!(server.requests() >= 200);
    }
}
