/* Short-lived processes for the profile test: after "go" on stdin, runs argv[1] children one
 * after another, each a fresh exec of this program that burns about argv[2] ms of CPU in
 * short_burn() and exits; then prints the children run and waits for stdin to close.
 * Built by the test: cc -O1 -g -fno-omit-frame-pointer. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile uint64_t sink;

static uint64_t cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

__attribute__((noinline)) static void step(uint64_t i) { sink += i * 2654435761u; }

__attribute__((noinline)) static void short_burn(uint64_t ms) {
    uint64_t end = cpu_ns() + ms * 1000000u;
    for (uint64_t i = 0; cpu_ns() < end; i++)
        for (int j = 0; j < 1000; j++) step(i + j);
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "child") == 0) {
        short_burn(strtoull(argv[2], 0, 10));
        return 0;
    }
    if (argc != 3) return 2;
    int children = atoi(argv[1]);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 1;
    int ran = 0;
    for (int c = 0; c < children; c++) {
        pid_t pid = fork();
        if (pid == 0) {
            execl(argv[0], argv[0], "child", argv[2], (char *)0);
            _exit(127);
        }
        int status;
        if (pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
            WEXITSTATUS(status) == 0)
            ran++;
    }
    printf("%d\n", ran);
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {}
    return 0;
}
