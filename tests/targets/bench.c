/* Benchmark load: N pairs, then prints the ns per pair.
 *   bench N          malloc(64)/free
 *   bench N fds      open("/dev/null")/close */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 200000;
    int fds = argc > 2 && strcmp(argv[2], "fds") == 0;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        if (fds) {
            close(open("/dev/null", O_RDONLY));
        } else {
            volatile char *p = malloc(64);
            p[0] = (char)i;
            free((void *)p);
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
    printf("ns_per_pair %.1f\n", ns / n);
    return 0;
}
