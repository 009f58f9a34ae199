/* Off-CPU profile workload: one thread sleeps 200 ms at a time in nanosleep, another waits on
 * a pipe that the main thread writes to every 250 ms. Each thread measures the time it spent
 * in its blocking call (CLOCK_MONOTONIC around it), so the test compares the profile with the
 * program's own figures. The syscalls are made directly (inline `syscall` instruction) from
 * the named functions, so the frame-pointer walk starts in code built with frame pointers
 * (glibc's wrappers are not, and would hide their callers). Protocol: waits for a line on
 * stdin, runs argv[1] rounds, prints "sleep_ns pipe_ns", then waits for stdin to close.
 * Built by the test: cc -O1 -g -fno-omit-frame-pointer -pthread. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int pipe_fds[2];
static long rounds;
static uint64_t slept_ns, piped_ns;

static inline __attribute__((always_inline)) long raw_syscall3(long n, long a, long b, long c) {
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return ret;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

__attribute__((noinline)) uint64_t sleep_200ms(void) {
    struct timespec ts = {0, 200000000};
    uint64_t t0 = now_ns();
    raw_syscall3(SYS_nanosleep, (long)&ts, 0, 0);
    return now_ns() - t0;
}

__attribute__((noinline)) uint64_t wait_on_pipe(void) {
    char byte;
    uint64_t t0 = now_ns();
    raw_syscall3(SYS_read, pipe_fds[0], (long)&byte, 1);
    return now_ns() - t0;
}

__attribute__((noinline)) void pace_writer(void) {
    struct timespec ts = {0, 250000000};
    raw_syscall3(SYS_nanosleep, (long)&ts, 0, 0);
    raw_syscall3(SYS_write, pipe_fds[1], (long)"x", 1);
}

static void *sleeper(void *arg) {
    (void)arg;
    for (long i = 0; i < rounds; i++) slept_ns += sleep_200ms();
    return NULL;
}

static void *reader(void *arg) {
    (void)arg;
    for (long i = 0; i < rounds; i++) piped_ns += wait_on_pipe();
    return NULL;
}

int main(int argc, char **argv) {
    rounds = argc > 1 ? atol(argv[1]) : 10;
    char line[64];
    if (pipe(pipe_fds) != 0 || !fgets(line, sizeof line, stdin)) return 1;
    pthread_t s, r;
    pthread_create(&s, NULL, sleeper, NULL);
    pthread_create(&r, NULL, reader, NULL);
    for (long i = 0; i < rounds; i++) pace_writer();
    pthread_join(s, NULL);
    pthread_join(r, NULL);
    printf("%llu %llu\n", (unsigned long long)slept_ns, (unsigned long long)piped_ns);
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
    }
    return 0;
}
