//! Every Prometheus metric: names and labels live in [`names`]; handles are registered
//! when a snapshot is built (so the hot path only increments), and the few global ones
//! are emitted through the helpers here. To add a metric: a constant in `names`, a
//! `describe_*` line in [`describe`], and the emission site. A leaf: imports nothing of
//! the crate. The gauges rendered from the snapshot at scrape time live with the admin
//! listener (`admin::scrape`).

use ::metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

pub mod names {
    pub const TLS_HANDSHAKES: &str = "portcullis_tls_handshakes_total";
    pub const TLS_HANDSHAKE_DURATION: &str = "portcullis_tls_handshake_duration_seconds";
    pub const SNI_SELECTIONS: &str = "portcullis_sni_selections_total";
    pub const CONNECTIONS_ACTIVE: &str = "portcullis_connections_active";
    pub const CONNECTIONS: &str = "portcullis_connections_total";
    pub const CONNECTIONS_REFUSED: &str = "portcullis_connections_refused_total";
    pub const BYTES: &str = "portcullis_bytes_total";
    pub const HTTP_REQUESTS: &str = "portcullis_http_requests_total";
    pub const UPSTREAM_ERRORS: &str = "portcullis_upstream_errors_total";
    pub const UPSTREAM_QUEUE_TIMEOUTS: &str = "portcullis_upstream_queue_timeouts_total";
    pub const CLIENT_ERRORS: &str = "portcullis_client_errors_total";
    pub const CERTIFICATE_EXPIRY: &str = "portcullis_certificate_expiry_seconds";
    pub const CERTIFICATES_BY_EXPIRY: &str = "portcullis_certificates_by_expiry_seconds";
    pub const RELOADS: &str = "portcullis_reloads_total";
    pub const LAST_RELOAD_SUCCESS: &str = "portcullis_last_reload_success_timestamp_seconds";
    pub const ACME_ORDERS: &str = "portcullis_acme_orders_total";
    pub const ACME_ON_DEMAND: &str = "portcullis_acme_on_demand_total";
    pub const JOBS: &str = "portcullis_jobs_total";
    pub const ACME_RENEWAL_FAILING: &str = "portcullis_acme_renewal_failing";
    pub const CLUSTER_CONNECTED: &str = "portcullis_cluster_connected";
    pub const CLUSTER_APPLIED_REVISION: &str = "portcullis_cluster_applied_revision";
    pub const CLUSTER_LAG: &str = "portcullis_cluster_revision_lag";
    pub const CLUSTER_IS_RENEWER: &str = "portcullis_cluster_is_renewer";
    pub const CLUSTER_SYNC_ERRORS: &str = "portcullis_cluster_sync_errors_total";

    pub const LISTENER: &str = "listener";
    pub const RESULT: &str = "result";
    pub const DIRECTION: &str = "direction";
    pub const ROUTE: &str = "route";
    pub const STATUS: &str = "status";
    pub const OUTCOME: &str = "outcome";
}

/// Upper bounds (seconds) of the handshake duration histogram.
pub const HANDSHAKE_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Help texts, once at start.
pub fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram};
    use names::*;
    describe_counter!(TLS_HANDSHAKES, "TLS handshakes by listener and result (ok, error, timeout)");
    describe_histogram!(TLS_HANDSHAKE_DURATION, "Time from accept to a finished TLS handshake");
    describe_counter!(
        SNI_SELECTIONS,
        "Certificate selections by outcome: matched, no_sni_default, no_sni_rejected, unknown_sni_default, unknown_sni_rejected"
    );
    describe_gauge!(CONNECTIONS_ACTIVE, "Client connections open now");
    describe_counter!(
        ACME_ON_DEMAND,
        "On-demand certificate decisions by result: issued, refused, failed, held, busy, asks_busy, rate_limited, max_certificates, other_node"
    );
    describe_gauge!(CLUSTER_CONNECTED, "1 while the cluster sync is watching etcd");
    describe_gauge!(CLUSTER_APPLIED_REVISION, "The etcd revision this node's store copy reflects");
    describe_gauge!(CLUSTER_LAG, "Newest etcd revision seen minus the applied one");
    describe_gauge!(CLUSTER_IS_RENEWER, "1 while this node is the cluster's elected renewer");
    describe_counter!(CLUSTER_SYNC_ERRORS, "Cluster sync failures (etcd unreachable, no quorum, unreadable values)");
    describe_counter!(CONNECTIONS, "Client connections accepted");
    describe_counter!(CONNECTIONS_REFUSED, "Connections closed at accept because the listener was at max_connections");
    describe_counter!(BYTES, "Bytes from (in) and to (out) clients");
    describe_counter!(HTTP_REQUESTS, "HTTP requests by route and status class");
    describe_counter!(UPSTREAM_ERRORS, "Failed upstream connections and requests");
    describe_counter!(
        UPSTREAM_QUEUE_TIMEOUTS,
        "Requests refused (503) because their upstream stayed at max_connections"
    );
    describe_counter!(
        CLIENT_ERRORS,
        "Requests that failed by the client's doing, by reason (bad_body, bad_host, body_timeout)"
    );
    describe_counter!(RELOADS, "Snapshot builds by result (ok, error)");
    describe_gauge!(LAST_RELOAD_SUCCESS, "Unix time of the last snapshot that was built and published");
    describe_counter!(JOBS, "Admin jobs by action and result (done, failed)");
    describe_counter!(ACME_ORDERS, "ACME orders (issuance and renewal) by result (ok, error)");
}

/// One listener's handles.
#[derive(Clone)]
pub struct ListenerMetrics {
    pub handshake_ok: Counter,
    pub handshake_error: Counter,
    pub handshake_timeout: Counter,
    pub handshake_duration: Histogram,
    pub connections: Counter,
    pub active: Gauge,
    pub refused: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
}

impl ListenerMetrics {
    pub fn new(listener: &str) -> Self {
        use names::*;
        let l = listener.to_owned();
        let hs = |result: &'static str| counter!(TLS_HANDSHAKES, LISTENER => l.clone(), RESULT => result);
        Self {
            handshake_ok: hs("ok"),
            handshake_error: hs("error"),
            handshake_timeout: hs("timeout"),
            handshake_duration: histogram!(TLS_HANDSHAKE_DURATION, LISTENER => l.clone()),
            connections: counter!(CONNECTIONS, LISTENER => l.clone()),
            active: gauge!(CONNECTIONS_ACTIVE, LISTENER => l.clone()),
            refused: counter!(CONNECTIONS_REFUSED, LISTENER => l.clone()),
            bytes_in: counter!(BYTES, LISTENER => l.clone(), DIRECTION => "in"),
            bytes_out: counter!(BYTES, LISTENER => l, DIRECTION => "out"),
        }
    }
}

/// SNI outcome counters of one listener.
#[derive(Clone)]
pub struct SniCounters {
    pub matched: Counter,
    pub no_sni_default: Counter,
    pub no_sni_rejected: Counter,
    pub unknown_default: Counter,
    pub unknown_rejected: Counter,
}

impl SniCounters {
    pub fn new(listener: &str) -> Self {
        use names::*;
        let c = |outcome: &'static str| counter!(SNI_SELECTIONS, LISTENER => listener.to_owned(), OUTCOME => outcome);
        Self {
            matched: c("matched"),
            no_sni_default: c("no_sni_default"),
            no_sni_rejected: c("no_sni_rejected"),
            unknown_default: c("unknown_sni_default"),
            unknown_rejected: c("unknown_sni_rejected"),
        }
    }
}

/// Per-route request counters by status class (1xx..5xx): registered once, so counting a
/// request allocates nothing.
#[derive(Clone)]
pub struct RouteMetrics([Counter; 5]);

impl RouteMetrics {
    pub fn new(route: &str) -> Self {
        use names::*;
        let c = |class: &'static str| counter!(HTTP_REQUESTS, ROUTE => route.to_owned(), STATUS => class);
        Self([c("1xx"), c("2xx"), c("3xx"), c("4xx"), c("5xx")])
    }

    pub fn count(&self, status: u16) {
        let i = usize::from(status / 100).clamp(1, 5) - 1;
        self.0[i].increment(1);
    }
}

pub fn upstream_error() {
    counter!(names::UPSTREAM_ERRORS).increment(1);
}

/// A request refused because its upstream stayed at `max_connections`.
pub fn upstream_queue_timeout() {
    counter!(names::UPSTREAM_QUEUE_TIMEOUTS).increment(1);
}

/// A request that failed by the client's doing (`reason`: `bad_body`, `body_timeout`).
pub fn client_error(reason: &'static str) {
    counter!(names::CLIENT_ERRORS, "reason" => reason).increment(1);
}

pub fn reload(ok: bool) {
    counter!(names::RELOADS, names::RESULT => if ok { "ok" } else { "error" }).increment(1);
    if ok {
        gauge!(names::LAST_RELOAD_SUCCESS).set(time::OffsetDateTime::now_utc().unix_timestamp() as f64);
    }
}
