/* libusdtlib.so: a shared library shipping one USDT probe, periscope_lib:hit(i). */
#include <sys/sdt.h>

void lib_fire(int n) {
    for (int i = 1; i <= n; i++) {
        STAP_PROBE1(periscope_lib, hit, i);
    }
}
