"""Helpers shared by bench/accuracy.py and bench/export.py: the release daemon on a private
Prometheus port, a scrape parser with histogram deltas (as tests/src/scrape.rs), reference tools
read line by line, and writing a benchmark's Markdown + JSON into bench/out/."""
import atexit, json, math, os, re, signal, subprocess, sys, tempfile, threading, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PERISCOPE = os.path.join(ROOT, "target/release/periscope")
OUT = os.path.join(ROOT, "bench/out")
FAMILIES = ("block", "sched", "http", "tcp", "syscall")
SINK = os.path.join(ROOT, "target/release/otlp-sink")


class Sink:
    """The tests' `otlp-sink` (a real OTLP/gRPC receiver from the official protobuf definitions)
    on a free port: `stats()` returns what it decoded so far (spans, data points, bytes)."""

    def __init__(self):
        self.proc = subprocess.Popen([SINK, "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.port = json.loads(self.proc.stdout.readline())["grpc_port"]

    def stats(self):
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stop(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def free_port():
    """A TCP port free on 127.0.0.1 right now (fixed ports may be taken by other daemons on a
    shared machine: then /healthz would answer for someone else's)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def only(family, extra=""):
    """A config enabling `family` alone (plus `extra` YAML under probes.<family>)."""
    body = "probes:\n"
    for f in FAMILIES:
        if f != family:
            body += f"  {f}:\n    enabled: false\n"
    body += f"  {family}:\n    enabled: true\n" + extra
    return body


class Daemon:
    """`periscope run` (release build) with `config`, its Prometheus endpoint on `port`."""

    def __init__(self, config, port=None, env=None):
        self.port = port = port or free_port()
        cfg = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
        cfg.write(config)
        cfg.close()
        full_env = dict(os.environ, PERISCOPE_PROMETHEUS_LISTEN=f"127.0.0.1:{port}", PERISCOPE_LOG="warn")
        full_env.update(env or {})
        self.proc = subprocess.Popen([PERISCOPE, "run", "--config", cfg.name], env=full_env)
        atexit.register(self.kill)  # never leave a daemon attached if the benchmark dies
        for _ in range(400):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                if self.proc.poll() is None:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                sys.exit(f"bench: periscope exited with {self.proc.returncode}")
            time.sleep(0.05)
        sys.exit("bench: periscope did not start")

    def scrape(self):
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10).read().decode()
        return Scrape(text)

    def cpu_s(self):
        fields = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def status_kib(self, field):
        with open(f"/proc/{self.proc.pid}/status") as f:
            return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class Scrape:
    def __init__(self, text):
        self.samples = []
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            m = SAMPLE.match(line)
            if m:
                labels = dict(LABEL.findall(m.group(2) or ""))
                self.samples.append((m.group(1), labels, float(m.group(3).replace("+Inf", "inf"))))

    def select(self, name, **labels):
        return [(l, v) for n, l, v in self.samples
                if n == name and all(l.get(k) == str(x) for k, x in labels.items())]

    def total(self, name, **labels):
        return sum(v for _, v in self.select(name, **labels))

    def histogram(self, name, **labels):
        """Summed over the matching series: {le: cumulative count}."""
        out = {}
        for l, v in self.select(name + "_bucket", **labels):
            le = float(l["le"].replace("+Inf", "inf"))
            out[le] = out.get(le, 0.0) + v
        return out


def since(later, earlier):
    """Histogram delta (cumulative {le: count}); bounds are the union, as in tests/src/scrape.rs."""
    def at(h, x):
        best = 0.0
        for le in sorted(h):
            if le <= x:
                best = h[le]
        return best
    return {le: at(later, le) - at(earlier, le) for le in sorted(set(later) | set(earlier))}


def buckets(h):
    """(lower, upper, count) of each non-empty bucket of a cumulative histogram."""
    out, prev_le, prev_c = [], 0.0, 0.0
    for le in sorted(h):
        n = h[le] - prev_c
        if n > 0:
            out.append((prev_le, le, n))
        prev_le, prev_c = le, h[le]
    return out


def count(h):
    return max(h.values()) if h else 0.0


def log2_usec_slots(h, scale=1e6):
    """Re-binned into bcc's log2 slots (slot k: [2^k, 2^(k+1)) of the unit; slot 0 also holds 0),
    each fine bucket placed by its geometric middle. `scale` converts the histogram's unit."""
    out = {}
    for lower, upper, n in buckets(h):
        middle = (math.sqrt(lower * upper) if lower > 0 else upper) * scale
        whole = int(math.floor(middle)) if math.isfinite(middle) else 1 << 40
        slot = 0 if whole == 0 else whole.bit_length() - 1
        out[slot] = out.get(slot, 0.0) + n
    return out


def parse_log2(text):
    """bcc log2 histograms: {section ('' or the `disk = X` name): {slot: count}}."""
    out, section = {}, ""
    for line in text.splitlines():
        t = line.strip()
        if t.startswith("disk = "):
            section = t[len("disk = "):].strip()
            continue
        m = re.match(r"(\d+)\s*->\s*(\d+)\s*:\s*(\d+)", t)
        if m:
            low = int(m.group(1))
            slot = 0 if low == 0 else low.bit_length() - 1
            out.setdefault(section, {})
            out[section][slot] = out[section].get(slot, 0) + int(m.group(3))
    return out


def median_slot(slots):
    total, seen = sum(slots.values()), 0
    for s in sorted(slots):
        seen += slots[s]
        if seen >= total / 2:
            return s
    return None


class Tool:
    """A reference tool started with `argv`; ready once a line starting with `ready` is printed;
    stopped with SIGINT, returning everything it printed."""

    def __init__(self, argv, ready, settle=0.0):
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.lines, started = [], threading.Event()

        def read():
            for line in self.proc.stdout:
                self.lines.append(line)
                if line.startswith(ready):
                    started.set()
            started.set()
        self.thread = threading.Thread(target=read, daemon=True)
        self.thread.start()
        if not started.wait(60) or self.proc.poll() is not None:
            sys.exit(f"bench: {argv[0]} did not start")
        time.sleep(settle)

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.thread.join(10)
        return "".join(self.lines)


def map_memory_kib(pid):
    """Kernel memory of the eBPF maps process `pid` holds (each map once): the `memlock` the
    kernel charges for each, from /proc/PID/fdinfo. It lives outside the process's RSS."""
    seen, total = set(), 0
    fdinfo = f"/proc/{pid}/fdinfo"
    for fd in os.listdir(fdinfo):
        try:
            text = open(os.path.join(fdinfo, fd)).read()
        except OSError:
            continue
        ids, mem = re.search(r"^map_id:\s+(\d+)", text, re.M), re.search(r"^memlock:\s+(\d+)", text, re.M)
        if ids and mem and ids.group(1) not in seen:
            seen.add(ids.group(1))
            total += int(mem.group(1))
    return total / 1024


BPF_STATS = "/proc/sys/kernel/bpf_stats_enabled"


def bpf_stats_on():
    """Turns `kernel.bpf_stats_enabled` on (run time and run count of every program); returns
    the setting it had, for `bpf_stats_restore`."""
    with open(BPF_STATS) as f:
        before = f.read().strip()
    with open(BPF_STATS, "w") as f:
        f.write("1")
    return before


def bpf_stats_restore(before):
    with open(BPF_STATS, "w") as f:
        f.write(before)


def spread(values, fmt=lambda v: f"{v:,.0f}"):
    """`median (min - max)` of `values` (None left out), or '' when there are none."""
    import statistics
    values = sorted(v for v in values if v is not None)
    if not values:
        return ""
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.median(values))} ({fmt(values[0])} - {fmt(values[-1])})"


def write(name, markdown, data):
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, f"{name}.md"), "w") as f:
        f.write(markdown)
    with open(os.path.join(OUT, f"{name}.json"), "w") as f:
        json.dump(data, f, indent=1)
    print(markdown)
