/* USDT test target: fires probes a known number of times and reports what it did.
 *
 *   usdt_target TICKS PAIRS SLEEP_MS
 * prints "pid N", waits for a line on stdin, then fires
 *   periscope_test:tick(i, i * 10)       TICKS times (i = 1..TICKS)
 *   periscope_test:guarded(i)            when its semaphore is set (TICKS tries), printing
 *                                        "guarded K" (how many fired)
 *   periscope_test:req_start / req_done  PAIRS times around a SLEEP_MS sleep, printing
 *                                        "pair NS" (the duration it measured) each
 *   periscope_lib:hit (in libusdtlib.so) TICKS times
 * and prints "done"; it exits when stdin closes. */
#define _SDT_HAS_SEMAPHORES 1
#include <stdio.h>
#include <stdlib.h>
#include <sys/sdt.h>
#include <time.h>
#include <unistd.h>

/* With _SDT_HAS_SEMAPHORES every probe of this file has a semaphore; only `guarded` is
 * guarded by it (the others fire whether or not a tracer set theirs). */
#define SEMAPHORE(name)                                                  \
    __extension__ unsigned short periscope_test_##name##_semaphore     \
        __attribute__((unused)) __attribute__((section(".probes")))
SEMAPHORE(tick);
SEMAPHORE(guarded);
SEMAPHORE(req_start);
SEMAPHORE(req_done);

void lib_fire(int n);

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s TICKS PAIRS SLEEP_MS\n", argv[0]);
        return 2;
    }
    int ticks = atoi(argv[1]), pairs = atoi(argv[2]), sleep_ms = atoi(argv[3]);
    char line[64];
    printf("pid %d\n", (int)getpid());
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) return 1;
    for (int i = 1; i <= ticks; i++) {
        long value = (long)i * 10;
        STAP_PROBE2(periscope_test, tick, i, value);
    }
    int guarded = 0;
    for (int i = 1; i <= ticks; i++) {
        if (periscope_test_guarded_semaphore) {
            STAP_PROBE1(periscope_test, guarded, i);
            guarded++;
        }
    }
    printf("guarded %d\n", guarded);
    struct timespec pause = {sleep_ms / 1000, (long)(sleep_ms % 1000) * 1000000L};
    for (int i = 0; i < pairs; i++) {
        long long start = now_ns();
        STAP_PROBE1(periscope_test, req_start, i);
        nanosleep(&pause, NULL);
        STAP_PROBE1(periscope_test, req_done, i);
        printf("pair %lld\n", now_ns() - start);
    }
    lib_fire(ticks);
    printf("done\n");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
    }
    return 0;
}
