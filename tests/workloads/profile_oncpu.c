/* On-CPU profile workload: two busy functions with identical loop bodies, called 7:3 by
 * iterations, so that they burn CPU 70/30. It measures the thread CPU time each one really
 * took (CLOCK_THREAD_CPUTIME_ID), so the test compares the profile with the program's own
 * figures. Protocol: waits for a line on stdin ("go"), burns for argv[1] seconds, prints
 * "a_ns b_ns", then waits for stdin to close before exiting (so that its symbols stay
 * readable while the profiler names the stacks).
 * Built by the test: cc -O1 -g -fno-omit-frame-pointer. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static volatile uint64_t sink;
/* Read once per call: the compiler cannot turn one multiply into shifts and not the other. */
static volatile uint64_t mul_a = 31, mul_b = 37;

static uint64_t cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t wall_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Called now and then so that the busy functions are not leaves: gcc 12 at -O1 sets up no
 * frame pointer in a leaf function even with -fno-omit-frame-pointer, and a frame-pointer walk
 * from such a leaf skips its caller (samples in burn_a would name no main). */
__attribute__((noinline)) void checkpoint(void) { __asm__ volatile(""); }

__attribute__((noinline)) void burn_a(long n) {
    uint64_t x = sink, m = mul_a;
    for (long i = 0; i < n; i++) {
        x = x * m + 7;
        if ((i & 0xfffff) == 0) checkpoint();
    }
    sink = x;
}

__attribute__((noinline)) void burn_b(long n) {
    uint64_t x = sink, m = mul_b;
    for (long i = 0; i < n; i++) {
        x = x * m + 11;
        if ((i & 0xfffff) == 0) checkpoint();
    }
    sink = x;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 5.0;
    char line[64];
    if (!fgets(line, sizeof line, stdin)) return 1;
    const long step = 200000;
    uint64_t a = 0, b = 0, end = wall_ns() + (uint64_t)(seconds * 1e9);
    while (wall_ns() < end) {
        uint64_t t0 = cpu_ns();
        burn_a(7 * step);
        uint64_t t1 = cpu_ns();
        burn_b(3 * step);
        uint64_t t2 = cpu_ns();
        a += t1 - t0;
        b += t2 - t1;
    }
    printf("%llu %llu\n", (unsigned long long)a, (unsigned long long)b);
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
    }
    return 0;
}
