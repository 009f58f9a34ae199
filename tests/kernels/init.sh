#!/bin/sh
# /init of the kernel-matrix VM (busybox sh). Runs `periscope check`, then the daemon and a
# smoke set with exact counts, and prints one `MATRIX family mechanism ok|FAIL detail` line
# per family for tests/kernels/run.sh. Counts, never times: under software emulation
# everything is several times slower than on hardware.
export PATH=/bin:/sbin

HTTP_PORT=8080     # kernel-workload serve/get
H2_PORT=8082       # kernel-workload serve2/get2 (HTTP/2, the kernel's frame walk)
TCP_PORT=9090      # kernel-workload tcp
RETRANSMIT_PORT=9091  # kernel-workload retransmit
REQUESTS=20
CONNECTIONS=15
READS=32
DISK=/dev/vda
METRICS=http://127.0.0.1:9464/metrics

mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /tmp /sys/fs/cgroup && mount -t tmpfs tmp /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
ip link set lo up
# Run time and run count per program (periscope_bpf_program_*): the TCP mechanisms' cost.
echo 1 > /proc/sys/kernel/bpf_stats_enabled
for module in $(cat /modules/order 2>/dev/null); do insmod "/modules/$module" || echo "insmod $module failed"; done

result() { echo "MATRIX $*"; }
finish() { echo "MATRIX-END"; poweroff -f; }

# The sum of the samples of metric $1 whose labels include every `key="value"` given after it.
metric() {
  name=$1; shift
  awk -v name="$name" -v want="$*" '
    BEGIN { n = split(want, w, " ") }
    {
      split($0, parts, /[{ ]/)
      if (parts[1] != name) next
      for (i = 1; i <= n; i++) if (index($0, w[i]) == 0) next
      sum += $NF; found = 1
    }
    END { if (found) print sum + 0; else print "none" }
  ' /tmp/metrics
}

mechanism() {
  awk -v probe="probe=\"$1\"" '
    /^periscope_probe_attached\{/ && index($0, probe) && $NF == 1 {
      match($0, /mechanism="[^"]*"/); print substr($0, RSTART + 11, RLENGTH - 12); found = 1; exit
    }
    END { if (!found) print "-" }
  ' /tmp/metrics
}

# expect FAMILY WHAT GOT WANTED: one result line (WANTED ">0" means any positive count).
expect() {
  family=$1; what=$2; got=$3; wanted=$4; mech=$(mechanism "$family")
  if [ "$wanted" = ">0" ]; then
    case $got in none|0) ok=FAIL ;; *) ok=ok ;; esac
  elif [ "$got" = "$wanted" ]; then ok=ok; else ok=FAIL; fi
  result "$family $mech $ok $what: $got (expected $wanted)"
}

echo "MATRIX-KERNEL $(uname -r)"
echo "===== periscope check"
periscope check > /tmp/check.txt 2>&1
check_rc=$?
cat /tmp/check.txt
echo "===== check exit $check_rc"
result "check - $([ $check_rc = 0 ] && echo ok || echo FAIL) exit status $check_rc"
# The HTTPS uprobe programs (OpenSSL's and Go's crypto/tls) load with the HTTP family, whether
# or not a process uses them: the verifier of this kernel accepted them when check lists them.
if grep -q 'http_ssl_return' /tmp/check.txt && grep -q 'http_go_tls_return' /tmp/check.txt; then
  result "http - ok TLS uprobe programs loaded (OpenSSL, Go crypto/tls)"
else
  result "http - FAIL TLS uprobe programs not loaded: $(grep -E 'Go crypto/tls|OpenSSL probes' /tmp/check.txt | head -3)"
fi

# Starts the daemon with config $1 (empty: the embedded default) and waits for its endpoint.
start_daemon() {
  echo "===== periscope run ${1:-(default configuration)}"
  PERISCOPE_LOG=info periscope run ${1:+--config "$1"} --duration 900s > /tmp/run.log 2>&1 &
  daemon=$!
  tries=0
  until wget -q -O /tmp/metrics "$METRICS" 2>/dev/null; do
    tries=$((tries + 1))
    if [ $tries -gt 240 ] || ! kill -0 $daemon 2>/dev/null; then
      cat /tmp/run.log; result "run - FAIL no metrics endpoint after $tries s"; finish
    fi
    sleep 1
  done
  echo "daemon up after ${tries}s"
}

stop_daemon() {
  kill $daemon
  wait $daemon
  echo "===== daemon log"
  cat /tmp/run.log
}

# Every default family at once: HTTP, TCP and run-queue counts.
start_daemon ""
kernel-workload serve $HTTP_PORT &
server=$!
kernel-workload serve2 $H2_PORT &
server2=$!
kernel-workload get $HTTP_PORT $REQUESTS
kernel-workload get2 $H2_PORT $REQUESTS
kernel-workload tcp $TCP_PORT $CONNECTIONS
kernel-workload spin 3 300
kill $server $server2
# The HTTP and TCP loops drain their ring buffers every 25 ms and on wakeups; give them
# (slowly emulated) time to.
sleep 3
wget -q -O /tmp/metrics "$METRICS"
port="server_port=\"$HTTP_PORT\""
expect http "server requests" "$(metric http_server_request_duration_seconds_count "$port")" $REQUESTS
expect http "client requests" "$(metric http_client_request_duration_seconds_count "$port")" $REQUESTS
port="server_port=\"$H2_PORT\" network_protocol_version=\"2\""
expect http "HTTP/2 server streams (one write of $REQUESTS requests)" "$(metric http_server_request_duration_seconds_count "$port")" $REQUESTS
expect http "HTTP/2 client streams" "$(metric http_client_request_duration_seconds_count "$port")" $REQUESTS
port="server_port=\"$TCP_PORT\""
expect tcp "outbound connections" "$(metric kernel_tcp_connections_total 'direction="outbound"' "$port")" $CONNECTIONS
expect tcp "inbound connections" "$(metric kernel_tcp_connections_total 'direction="inbound"' "$port")" $CONNECTIONS
expect sched "run-queue waits" "$(metric kernel_sched_runqueue_latency_seconds_count)" ">0"
echo "===== metrics"
grep -E '^(periscope_|http_|kernel_tcp_connections|kernel_sched_runqueue_latency_seconds_count)' /tmp/metrics
stop_daemon

# HTTP on the `fentry` mechanism, forced (`auto` prefers the socket tracepoints where a kernel
# has them, 6.5+): fexit programs on tcp_sendmsg/tcp_recvmsg, on every kernel that has
# bpf_task_pt_regs (5.15+). The same exact counts as above.
release=$(uname -r)
major=${release%%.*}
minor=${release#*.}
minor=${minor%%.*}
if [ "$major" -gt 5 ] || { [ "$major" -eq 5 ] && [ "$minor" -ge 15 ]; }; then
  printf 'probes:\n  http:\n    mechanism: fentry\n  sched:\n    enabled: false\n  tcp:\n    enabled: false\n  block:\n    enabled: false\n' > /tmp/fentry.yaml
  start_daemon /tmp/fentry.yaml
  kernel-workload serve $HTTP_PORT &
  server=$!
  kernel-workload serve2 $H2_PORT &
  server2=$!
  kernel-workload get $HTTP_PORT $REQUESTS
  kernel-workload get2 $H2_PORT $REQUESTS
  kill $server $server2
  sleep 3
  wget -q -O /tmp/metrics "$METRICS"
  port="server_port=\"$HTTP_PORT\""
  expect http "server requests (fentry forced)" "$(metric http_server_request_duration_seconds_count "$port")" $REQUESTS
  expect http "client requests (fentry forced)" "$(metric http_client_request_duration_seconds_count "$port")" $REQUESTS
  port="server_port=\"$H2_PORT\" network_protocol_version=\"2\""
  expect http "HTTP/2 server streams (fentry forced)" "$(metric http_server_request_duration_seconds_count "$port")" $REQUESTS
  expect http "HTTP/2 client streams (fentry forced)" "$(metric http_client_request_duration_seconds_count "$port")" $REQUESTS
  echo "===== metrics"
  grep -E '^(periscope_probe|http_)' /tmp/metrics
  stop_daemon
else
  result "http - ok fentry not tried: kernel $release has no bpf_task_pt_regs (5.15+)"
fi

# TCP alone, once per mechanism, each forced: the same workload must give the same exact counts
# (connections, closes, bytes sent, and retransmits against the kernel's own count), and
# each program's run time per run is printed (bpf_stats, under emulation: compare, don't
# quote as hardware figures). Every kernel of the matrix has BPF trampolines (fentry).
tcp_smoke() {
  mech=$1
  printf 'probes:\n  tcp:\n    mechanism: %s\n  http:\n    enabled: false\n  sched:\n    enabled: false\n  block:\n    enabled: false\n' "$mech" > /tmp/tcp.yaml
  start_daemon /tmp/tcp.yaml
  kernel-workload tcp $TCP_PORT $CONNECTIONS
  kernel-workload retransmit $RETRANSMIT_PORT > /tmp/retransmit.txt
  cat /tmp/retransmit.txt
  retransmits=$(sed -n 's/^retransmits: //p' /tmp/retransmit.txt)
  sleep 3
  wget -q -O /tmp/metrics "$METRICS"
  port="server_port=\"$TCP_PORT\""
  out='direction="outbound"'
  in='direction="inbound"'
  expect tcp "outbound connections ($mech forced)" "$(metric kernel_tcp_connections_total "$out" "$port")" $CONNECTIONS
  expect tcp "inbound connections ($mech forced)" "$(metric kernel_tcp_connections_total "$in" "$port")" $CONNECTIONS
  expect tcp "outbound closes ($mech forced)" "$(metric kernel_tcp_connection_duration_seconds_count "$out" "$port")" $CONNECTIONS
  expect tcp "inbound closes ($mech forced)" "$(metric kernel_tcp_connection_duration_seconds_count "$in" "$port")" $CONNECTIONS
  # Not the bytes received inbound: the server closes first, and its orphaned socket can leave
  # FIN_WAIT2 for a timewait socket before the client's FIN (docs/tcp.md, Limits).
  expect tcp "bytes sent outbound ($mech forced)" "$(metric kernel_tcp_connection_sent_bytes_sum "$out" "$port")" $CONNECTIONS
  expect tcp "retransmits ($mech forced)" "$(metric kernel_tcp_retransmits_total)" "${retransmits:-none}"
  program_costs tcp_
  echo "===== metrics"
  grep -E '^(periscope_probe|periscope_bpf|kernel_tcp_)' /tmp/metrics
  stop_daemon
}

# One info line per program named $1*: run time per run and runs, from bpf_stats.
program_costs() {
  awk -v prefix="program=\"$1" -v mech="$(mechanism tcp)" '
    index($0, prefix) == 0 { next }
    { match($0, /program="[^"]*"/); p = substr($0, RSTART + 9, RLENGTH - 10) }
    /^periscope_bpf_program_run_time_seconds_total\{/ { t[p] = $NF }
    /^periscope_bpf_program_run_count_total\{/ { n[p] = $NF }
    END {
      for (p in n) if (n[p] > 0)
        printf "MATRIX tcp %s info cost of %s: %d ns per run over %d runs (bpf_stats, emulated)\n", mech, p, t[p] * 1e9 / n[p], n[p]
    }
  ' /tmp/metrics
}

# The cost per connection of each TCP mechanism: the run time of all its programs (bpf_stats)
# over COST_CONNECTIONS connections, the two mechanisms alternating twice (the emulation's speed
# drifts with the host's load).
tcp_cost() {
  mech=$1
  printf 'probes:\n  tcp:\n    mechanism: %s\n  http:\n    enabled: false\n  sched:\n    enabled: false\n  block:\n    enabled: false\n' "$mech" > /tmp/tcp.yaml
  start_daemon /tmp/tcp.yaml
  kernel-workload tcp $COST_PORT $COST_CONNECTIONS
  sleep 2
  wget -q -O /tmp/metrics "$METRICS"
  awk -v mech="$(mechanism tcp)" -v conns=$COST_CONNECTIONS '
    !/program="tcp_/ { next }
    /^periscope_bpf_program_run_time_seconds_total\{/ { t += $NF }
    /^periscope_bpf_program_run_count_total\{/ { n += $NF }
    END {
      printf "MATRIX tcp %s info cost: %d ns of program run time per connection, %.1f runs per connection, %d ns per run (%d connections, bpf_stats, emulated)\n", mech, t * 1e9 / conns, n / conns, n ? t * 1e9 / n : 0, conns
    }
  ' /tmp/metrics
  stop_daemon > /dev/null
}

tcp_smoke tracepoint
tcp_smoke fentry
COST_PORT=9092
COST_CONNECTIONS=100
for round in 1 2; do
  tcp_cost tracepoint
  tcp_cost fentry
done

# Profiles: the on-CPU program (a perf event on the CPU clock of each CPU) and the off-CPU
# ones load and count; a spinning thread is sampled, in user mode and in kernel mode.
kernel-workload spin 1 60000 &
spinner=$!
periscope profile --duration 3s --format folded -o /tmp/oncpu.folded > /tmp/profile.log 2>&1
kill $spinner 2>/dev/null
(while :; do sleep 0.1; done) &
sleeper=$!
periscope profile --off-cpu --duration 3s --format folded -o /tmp/offcpu.folded >> /tmp/profile.log 2>&1
kill $sleeper 2>/dev/null
echo "===== profile"
cat /tmp/profile.log
result "profile perf_event $([ -s /tmp/oncpu.folded ] && echo ok || echo FAIL) on-CPU stacks: $(wc -l < /tmp/oncpu.folded) (expected >0)"
result "profile tracepoint $([ -s /tmp/offcpu.folded ] && echo ok || echo FAIL) off-CPU stacks: $(wc -l < /tmp/offcpu.folded) (expected >0)"

# Block alone: the kernel skips a tracepoint program that fires while another one runs on the
# CPU (a completion interrupt during a sched_switch program, on the one emulated CPU), so the
# exact count runs without the other families (as tests/tests/block.rs does).
printf 'probes:\n  sched:\n    enabled: false\n  http:\n    enabled: false\n  tcp:\n    enabled: false\n' > /tmp/block.yaml
start_daemon /tmp/block.yaml
kernel-workload read $DISK $READS
wget -q -O /tmp/metrics "$METRICS"
disk="block_device_major_minor=\"$(cat /sys/block/vda/dev)\""
expect block "reads on vda" "$(metric kernel_block_io_duration_seconds_count "$disk" 'block_io_operation="read"')" $READS
echo "===== metrics"
grep -E '^(periscope_|kernel_block_io_duration_seconds_count)' /tmp/metrics
stop_daemon
finish
