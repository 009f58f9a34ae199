"""The floor: the cheapest eBPF programs that any syscall-based HTTP capture must run.

Each program is `r0 = 0; exit` (two instructions, no map, no helper), loaded and attached with
the raw bpf(2) and perf_event_open(2) calls, so nothing of Periscope's is involved:
- `raw`: one program on `raw_syscalls:sys_enter` and one on `sys_exit` as raw tracepoints (what
  Periscope's `raw_tracepoint` HTTP mechanism, the first fallback, attaches to: they run on every
  syscall of the node);
- `tracepoint`: one program on the entry and one on the exit tracepoint of each syscall
  Periscope's `tracepoint` mechanism (the last fallback) watches (the same list as
  `exporter/src/families/http/attach.rs`);
- `sock`: one program on each of the raw tracepoints `sock_send_length` and `sock_recv_length`
  (Linux 6.3+: the end of every socket send and receive, and nothing else), the hooks of
  Periscope's default HTTP mechanism (`socket_tracepoint`).

Measured beside Periscope in the same run, they say what part of Periscope's cost is the
machine's price for seeing syscalls at all (the syscall slow path the tracepoints switch on,
the program dispatch, `kernel.bpf_stats_enabled`'s own clock reads) and what part is Periscope's
work. x86_64 only (syscall and ioctl numbers).
"""
import ctypes, json, os, subprocess

SYS_BPF = 321
SYS_PERF_EVENT_OPEN = 298
BPF_PROG_LOAD = 5
BPF_RAW_TRACEPOINT_OPEN = 17
BPF_PROG_TYPE_TRACEPOINT = 5
BPF_PROG_TYPE_RAW_TRACEPOINT = 17
PERF_TYPE_TRACEPOINT = 2
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_SET_BPF = 0x40042408
PERF_FLAG_FD_CLOEXEC = 8

# `mov64 r0, 0; exit`
RETURN_ZERO = bytes([0xB7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0])

# The syscalls Periscope's tracepoint mechanism attaches to (exporter/src/families/http/attach.rs).
HTTP_SYSCALLS = {
    "enter_exit": ["read", "recvfrom", "readv", "recvmsg", "write", "sendto", "writev", "sendmsg",
                   "sendfile64", "accept", "accept4", "connect", "dup", "dup2", "dup3", "fcntl"],
    "enter_only": ["close"],
}

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def _check(rc, what):
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


def _load(prog_type, name):
    """Loads `r0 = 0; exit` as a program of `prog_type`; returns its fd."""
    insns = ctypes.create_string_buffer(RETURN_ZERO, len(RETURN_ZERO))
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(128)
    ctypes.c_uint32.from_buffer(attr, 0).value = prog_type
    ctypes.c_uint32.from_buffer(attr, 4).value = len(RETURN_ZERO) // 8
    ctypes.c_uint64.from_buffer(attr, 8).value = ctypes.addressof(insns)
    ctypes.c_uint64.from_buffer(attr, 16).value = ctypes.addressof(license_)
    ctypes.memmove(ctypes.addressof(attr) + 48, name.encode()[:15], min(len(name), 15))
    return _check(libc.syscall(SYS_BPF, BPF_PROG_LOAD, attr, 128), f"BPF_PROG_LOAD {name}")


def _attach_raw(prog_fd, tracepoint):
    name = ctypes.create_string_buffer(tracepoint.encode())
    attr = ctypes.create_string_buffer(128)
    ctypes.c_uint64.from_buffer(attr, 0).value = ctypes.addressof(name)
    ctypes.c_uint32.from_buffer(attr, 8).value = prog_fd
    return _check(libc.syscall(SYS_BPF, BPF_RAW_TRACEPOINT_OPEN, attr, 128),
                  f"BPF_RAW_TRACEPOINT_OPEN {tracepoint}")


def _attach_tracepoint(prog_fd, category, event):
    """A perf event on the tracepoint that runs the program. One event is enough: a tracepoint's
    programs run on every CPU (and one program can be attached to it only once)."""
    with open(f"/sys/kernel/tracing/events/{category}/{event}/id") as f:
        tp_id = int(f.read())
    attr = ctypes.create_string_buffer(128)
    ctypes.c_uint32.from_buffer(attr, 0).value = PERF_TYPE_TRACEPOINT
    ctypes.c_uint32.from_buffer(attr, 4).value = 128
    ctypes.c_uint64.from_buffer(attr, 8).value = tp_id
    ctypes.c_uint64.from_buffer(attr, 16).value = 1  # sample_period
    ctypes.c_uint32.from_buffer(attr, 48).value = 1  # wakeup_events
    fd = _check(libc.syscall(SYS_PERF_EVENT_OPEN, attr, -1, 0, -1, PERF_FLAG_FD_CLOEXEC),
                f"perf_event_open {category}/{event}")
    try:
        _check(libc.ioctl(fd, PERF_EVENT_IOC_SET_BPF, prog_fd), f"PERF_EVENT_IOC_SET_BPF {event}")
        _check(libc.ioctl(fd, PERF_EVENT_IOC_ENABLE, 0), f"PERF_EVENT_IOC_ENABLE {event}")
    except OSError:
        os.close(fd)
        raise
    return fd


def _prog_id(prog_fd):
    with open(f"/proc/self/fdinfo/{prog_fd}") as f:
        for line in f:
            if line.startswith("prog_id:"):
                return int(line.split()[1])
    raise RuntimeError("no prog_id in fdinfo")


class Floor:
    """The floor programs of `mechanism` ('raw' or 'tracepoint'), attached while in the `with`."""

    def __init__(self, mechanism):
        assert mechanism in ("raw", "tracepoint", "sock")
        self.mechanism, self.fds, self.prog_ids = mechanism, [], []

    def __enter__(self):
        try:
            if self.mechanism in ("raw", "sock"):
                hooks = ("sys_enter", "sys_exit") if self.mechanism == "raw" else \
                    ("sock_send_length", "sock_recv_length")
                for tp in hooks:
                    prog = self._prog(BPF_PROG_TYPE_RAW_TRACEPOINT, f"floor_{tp}")
                    self.fds.append(_attach_raw(prog, tp))
            else:
                prog = self._prog(BPF_PROG_TYPE_TRACEPOINT, "floor_syscall")
                for name in HTTP_SYSCALLS["enter_exit"]:
                    for side in ("enter", "exit"):
                        self.fds.append(_attach_tracepoint(prog, "syscalls", f"sys_{side}_{name}"))
                for name in HTTP_SYSCALLS["enter_only"]:
                    self.fds.append(_attach_tracepoint(prog, "syscalls", f"sys_enter_{name}"))
        except BaseException:
            self.__exit__()
            raise
        return self

    def _prog(self, prog_type, name):
        fd = _load(prog_type, name)
        self.fds.append(fd)
        self.prog_ids.append(_prog_id(fd))
        return fd

    def run_time_ns(self):
        """Run time and run count of the floor programs so far (kernel.bpf_stats_enabled=1)."""
        total_ns = runs = 0
        for prog_id in self.prog_ids:
            info = json.loads(subprocess.run(["bpftool", "prog", "show", "id", str(prog_id), "-j"],
                                             capture_output=True, text=True, check=True).stdout)
            total_ns += info.get("run_time_ns", 0)
            runs += info.get("run_cnt", 0)
        return total_ns, runs

    def __exit__(self, *exc):
        for fd in reversed(self.fds):
            os.close(fd)
        self.fds = []


if __name__ == "__main__":
    import time
    for mechanism in ("raw", "tracepoint", "sock"):
        with Floor(mechanism) as floor:
            time.sleep(1)
            ns, runs = floor.run_time_ns()
            print(f"{mechanism}: {len(floor.prog_ids)} program(s) attached, {runs} runs, "
                  f"{ns / runs if runs else 0:.0f} ns per run (bpf_stats)")
