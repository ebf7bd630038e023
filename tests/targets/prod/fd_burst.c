/* Opens and closes /dev/null flat out (or at RATE pairs a second) for SECS
 * seconds: a burst of descriptor events.  fd_burst [SECS [RATE]] */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    double secs = argc > 1 ? atof(argv[1]) : 3;
    long rate = argc > 2 ? atol(argv[2]) : 0; /* pairs per second, 0: flat out */
    struct timespec t0, t; clock_gettime(CLOCK_MONOTONIC, &t0);
    long n = 0;
    for (;;) {
        for (int i = 0; i < 100; i++) { int fd = open("/dev/null", O_RDONLY); close(fd); }
        n += 100;
        clock_gettime(CLOCK_MONOTONIC, &t);
        double el = (t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9;
        if (el >= secs) break;
        if (rate) { double ahead = n / (double)rate - el; if (ahead > 0) usleep(ahead * 1e6); }
    }
    printf("%ld pairs in %.1f s: %.0f/s\n", n, secs, n / secs);
    return 0;
}
