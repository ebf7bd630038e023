/* Benchmark load: N pairs, then prints the ns per pair.
 *   bench N          malloc(64)/free
 *   bench N fds      open("/dev/null")/close
 *   bench N rw       read 1 byte of /dev/zero, write it to /dev/null (dd bs=1)
 *   bench N deep D   malloc(64)/free from D nested calls below main */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int fds, rw, zero, null;

/* Calls itself `depth` times, then runs the load: its stack is that deep. */
__attribute__((noinline)) static double load(long n, int depth);

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 200000;
    fds = argc > 2 && strcmp(argv[2], "fds") == 0;
    rw = argc > 2 && strcmp(argv[2], "rw") == 0;
    zero = open("/dev/zero", O_RDONLY);
    null = open("/dev/null", O_WRONLY);
    int depth = argc > 3 && strcmp(argv[2], "deep") == 0 ? atoi(argv[3]) : 0;
    printf("ns_per_pair %.1f\n", load(n, depth));
    return 0;
}

__attribute__((noinline)) static double load(long n, int depth) {
    if (depth > 0) {
        /* Not a tail call: the frame stays on the stack. */
        volatile double ns = load(n, depth - 1);
        return ns;
    }
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        if (fds) {
            close(open("/dev/null", O_RDONLY));
        } else if (rw) {
            char c;
            if (read(zero, &c, 1) != 1 || write(null, &c, 1) != 1)
                abort();
        } else {
            volatile char *p = malloc(64);
            p[0] = (char)i;
            free((void *)p);
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
    return ns / n;
}
