/* Many distinct stacks: N leaked blocks, each from its own path through a
 * binary tree of calls DEPTH deep (two call sites per level), then holds them
 * for SECS seconds.  many_stacks DEPTH SECS [N]  (N defaults to 2^DEPTH)
 * Built with -fno-optimize-sibling-calls so every level keeps its frame. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

void *kept[1 << 20];
static int nkept;
volatile int ones, zeros;

__attribute__((noinline)) void grow(unsigned path, int depth) {
    if (depth == 0) {
        kept[nkept++] = malloc(64);
        return;
    }
    if (path & 1) {
        grow(path >> 1, depth - 1);
        ones++;
    } else {
        grow(path >> 1, depth - 1);
        zeros++;
    }
}

int main(int argc, char **argv) {
    int depth = argc > 1 ? atoi(argv[1]) : 17;
    if (depth < 0 || depth > 20) depth = 20;
    unsigned n = argc > 3 ? (unsigned)atoi(argv[3]) : (1u << depth);
    if (n > (1u << depth)) n = 1u << depth;
    for (unsigned p = 0; p < n; p++) grow(p, depth);
    printf("%d blocks\n", nkept);
    fflush(stdout);
    sleep(argc > 2 ? atoi(argv[2]) : 2);
    return 0;
}
