//! Every metric Periscope exports, by its OpenTelemetry name (the Prometheus name derives from
//! it: dots to underscores, plus the unit and `_total` suffixes). `docs/metrics.md` lists the
//! same set, one row per metric: a test holds the two together.

// HTTP (OpenTelemetry semantic conventions, stable HTTP)
pub const HTTP_SERVER_REQUEST_DURATION: &str = "http.server.request.duration";
pub const HTTP_CLIENT_REQUEST_DURATION: &str = "http.client.request.duration";

// gRPC (OpenTelemetry semantic conventions for RPC: the current names, in seconds like HTTP;
// docs/http.md says why not the older `rpc.server.duration` in milliseconds)
pub const RPC_SERVER_CALL_DURATION: &str = "rpc.server.call.duration";
pub const RPC_CLIENT_CALL_DURATION: &str = "rpc.client.call.duration";

// Kernel (Periscope's own namespace: no semantic convention exists)
pub const KERNEL_BLOCK_IO_DURATION: &str = "kernel.block.io.duration";
pub const KERNEL_BLOCK_IO_SIZE: &str = "kernel.block.io.size";
pub const KERNEL_SCHED_RUNQUEUE_LATENCY: &str = "kernel.sched.runqueue.latency";
pub const KERNEL_TCP_CONNECTIONS: &str = "kernel.tcp.connections";
pub const KERNEL_TCP_CONNECTION_DURATION: &str = "kernel.tcp.connection.duration";
pub const KERNEL_TCP_CONNECTION_SENT: &str = "kernel.tcp.connection.sent";
pub const KERNEL_TCP_CONNECTION_RECEIVED: &str = "kernel.tcp.connection.received";
pub const KERNEL_TCP_CONNECT_FAILURES: &str = "kernel.tcp.connect.failures";
pub const KERNEL_TCP_RETRANSMITS: &str = "kernel.tcp.retransmits";
pub const KERNEL_TCP_RESETS: &str = "kernel.tcp.resets";
pub const KERNEL_SYSCALL_DURATION: &str = "kernel.syscall.duration";
pub const KERNEL_SYSCALL_ERRORS: &str = "kernel.syscall.errors";

// User functions (uprobes)
pub const PROCESS_FUNCTION_DURATION: &str = "process.function.duration";

// USDT probes
pub const PROCESS_USDT_CALLS: &str = "process.usdt.calls";
pub const PROCESS_USDT_ARGUMENT: &str = "process.usdt.argument";
pub const PROCESS_USDT_DURATION: &str = "process.usdt.duration";

// Periscope's own telemetry
pub const PERISCOPE_UPROBE_ATTACHED: &str = "periscope.uprobe.attached";
pub const PERISCOPE_USDT_ATTACHED: &str = "periscope.usdt.attached";
pub const PERISCOPE_HTTP_MESSAGES: &str = "periscope.http.messages";
pub const PERISCOPE_HTTP_TLS_FILES: &str = "periscope.http.tls.files";
pub const PERISCOPE_HTTP_CONNECTIONS: &str = "periscope.http.connections";
pub const PERISCOPE_HTTP_CONNECTIONS_FOLLOWED: &str = "periscope.http.connections.followed";
pub const PERISCOPE_HTTP_SERIES: &str = "periscope.http.series";
pub const PERISCOPE_HTTP_PROCESSES: &str = "periscope.http.processes";
pub const PERISCOPE_TCP_SERIES: &str = "periscope.tcp.series";
pub const PERISCOPE_EXPORT_SPANS: &str = "periscope.export.spans";
pub const PERISCOPE_PROBE_ATTACHED: &str = "periscope.probe.attached";
pub const PERISCOPE_PROBE_ERRORS: &str = "periscope.probe.errors";
pub const PERISCOPE_BPF_PROGRAM_RECURSION_MISSES: &str = "periscope.bpf.program.recursion_misses";
pub const PERISCOPE_BPF_PROGRAM_RUN_TIME: &str = "periscope.bpf.program.run_time";
pub const PERISCOPE_BPF_PROGRAM_RUN_COUNT: &str = "periscope.bpf.program.run_count";
pub const PERISCOPE_EXPORT_REQUESTS: &str = "periscope.export.requests";
pub const PERISCOPE_EXPORT_PROFILES: &str = "periscope.export.profiles";
pub const PERISCOPE_PROFILE_MAPS_EMPTIED: &str = "periscope.profile.maps_emptied";
pub const PERISCOPE_PROFILE_STACKS_ADDRESSED: &str = "periscope.profile.stacks_addressed";
pub const PERISCOPE_KUBERNETES_PODS: &str = "periscope.kubernetes.pods";
pub const PERISCOPE_KUBERNETES_WATCH_ERRORS: &str = "periscope.kubernetes.watch.errors";

/// All of the above.
pub const ALL: &[&str] = &[
    KERNEL_BLOCK_IO_DURATION,
    KERNEL_BLOCK_IO_SIZE,
    KERNEL_SCHED_RUNQUEUE_LATENCY,
    HTTP_SERVER_REQUEST_DURATION,
    HTTP_CLIENT_REQUEST_DURATION,
    RPC_SERVER_CALL_DURATION,
    RPC_CLIENT_CALL_DURATION,
    KERNEL_TCP_CONNECTIONS,
    KERNEL_TCP_CONNECTION_DURATION,
    KERNEL_TCP_CONNECTION_SENT,
    KERNEL_TCP_CONNECTION_RECEIVED,
    KERNEL_TCP_CONNECT_FAILURES,
    KERNEL_TCP_RETRANSMITS,
    KERNEL_TCP_RESETS,
    PROCESS_FUNCTION_DURATION,
    PERISCOPE_UPROBE_ATTACHED,
    PROCESS_USDT_CALLS,
    PROCESS_USDT_ARGUMENT,
    PROCESS_USDT_DURATION,
    PERISCOPE_USDT_ATTACHED,
    KERNEL_SYSCALL_DURATION,
    KERNEL_SYSCALL_ERRORS,
    PERISCOPE_HTTP_MESSAGES,
    PERISCOPE_HTTP_TLS_FILES,
    PERISCOPE_HTTP_CONNECTIONS,
    PERISCOPE_HTTP_CONNECTIONS_FOLLOWED,
    PERISCOPE_HTTP_SERIES,
    PERISCOPE_HTTP_PROCESSES,
    PERISCOPE_TCP_SERIES,
    PERISCOPE_EXPORT_SPANS,
    PERISCOPE_PROBE_ATTACHED,
    PERISCOPE_PROBE_ERRORS,
    PERISCOPE_BPF_PROGRAM_RECURSION_MISSES,
    PERISCOPE_BPF_PROGRAM_RUN_TIME,
    PERISCOPE_BPF_PROGRAM_RUN_COUNT,
    PERISCOPE_EXPORT_REQUESTS,
    PERISCOPE_EXPORT_PROFILES,
    PERISCOPE_PROFILE_MAPS_EMPTIED,
    PERISCOPE_PROFILE_STACKS_ADDRESSED,
    PERISCOPE_KUBERNETES_PODS,
    PERISCOPE_KUBERNETES_WATCH_ERRORS,
];
